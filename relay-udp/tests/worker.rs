//! A worker's loop and its receive batch over real loopback sockets: an idle worker still
//! turns its loop (readiness), and what the kernel says of each receive is told per datagram.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use relay_udp::{
    Backend, Counters, Datagrams, Decide, Destinations, RecvBatch, Worker, bind_worker_socket,
};

/// Counts its loop turns; decides nothing.
struct Turns(Arc<AtomicU64>);

impl Decide for Turns {
    type Out = Datagrams;
    fn turn(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
    fn datagram(&mut self, _: &mut [u8], _: SocketAddr, _: &mut Datagrams) {}
    fn truncated(&mut self, _: usize, _: SocketAddr, _: &mut Datagrams) {}
    fn mapped_source(&mut self, _: usize) {}
    fn destinations(&self) -> Box<dyn Destinations> {
        Box::new(|_| true)
    }
}

/// An idle worker (no datagram at all) still turns its loop every POLL_MS, on both
/// backends, so that readiness (`turned`) stays fresh.
#[test]
fn idle_workers_turn_on_both_backends() {
    let mut backends = vec![Backend::Mmsg];
    if relay_udp::uring_available().is_ok() {
        backends.push(Backend::Uring);
    } else {
        println!("SKIPPED the io_uring backend: unavailable here");
    }
    for b in backends {
        let socket = bind_worker_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let turns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = [Worker {
            index: 0,
            socket,
            decide: Turns(turns.clone()),
            stop: stop.clone(),
            counters: Arc::new(Counters::default()),
            max_datagram: 1500,
            inbox: None,
            cpu: None,
            gso: false,
            gro: false,
        }];
        let _egress = b.egress(&mut w, Arc::default()).unwrap();
        let [w] = w;
        let h = std::thread::spawn(move || b.run(w));
        std::thread::sleep(Duration::from_millis(550));
        stop.store(true, Relaxed);
        h.join().unwrap().unwrap();
        let n = turns.load(Relaxed);
        println!("{}: {n} idle turns in 550 ms", b.name());
        assert!(n >= 4, "{}: only {n} idle turns in 550 ms", b.name());
    }
}

/// MSG_TRUNC is told per datagram and reset between calls; the length is clamped to
/// the stride; slots do not overlap.
#[test]
fn recv_batch_truncation_is_per_datagram_and_reset() {
    let rx = bind_worker_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut batch = RecvBatch::new(101);
    tx.send_to(&[1u8; 500], to).unwrap();
    tx.send_to(&[2u8; 100], to).unwrap();
    tx.send_to(&[3u8; 101], to).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let n = batch.recv_wait(&rx).unwrap();
    assert_eq!(n, 3);
    let mut seen = Vec::new();
    for i in 0..n {
        let (slot, r) = batch.received(i);
        assert_eq!(slot.len(), 101);
        assert!(r.control.len() <= relay_udp::CONTROL_LEN);
        seen.push((r.payload.len(), r.truncated, slot[0]));
    }
    assert_eq!(seen, vec![(101, true, 1), (100, false, 2), (101, false, 3)]);
    // The next call: the flag of slot 0 must not linger.
    tx.send_to(&[4u8; 10], to).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(batch.recv_wait(&rx).unwrap(), 1);
    let (_, r) = batch.received(0);
    assert_eq!((r.payload.len(), r.truncated), (10, false));
    assert_eq!(batch.get(0), &[4u8; 10]);
}
