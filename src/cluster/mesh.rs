//! The mesh socket: mesh datagrams from the cluster's other relays, received in batches on a
//! thread of their own, decided by the core (a known node, its MAC, a new number) and
//! delivered to the peers homed here through the egress, from the relay's own port: the only
//! address those peers' NATs let in.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use relay_core::mesh::Sender;
use relay_core::router::Router;
use relay_core::settings::MAX_UDP_PAYLOAD;
use relay_core::shared::Shared;
use relay_udp::{RecvBatch, Source};

use super::link::SharedEgress;
use crate::clock::Clock;
use crate::shell::Decided;

/// How often the receiver looks at its stop flag while nothing comes.
const POLL: Duration = Duration::from_millis(100);

/// The running receiver.
pub struct Receiver {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Receiver {
    /// Receives on `socket` until stopped.
    pub fn start(
        socket: UdpSocket,
        shared: Arc<Shared>,
        clock: Clock,
        egress: SharedEgress,
    ) -> std::io::Result<Receiver> {
        socket.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("mesh".into())
            .spawn(move || receive(&socket, shared, clock, &egress, &flag))?;
        Ok(Receiver { stop, thread })
    }

    /// Stops the receiver and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn receive(
    socket: &UdpSocket,
    shared: Arc<Shared>,
    clock: Clock,
    egress: &SharedEgress,
    stop: &AtomicBool,
) {
    let mut rx = RecvBatch::new(MAX_UDP_PAYLOAD);
    let mut router = Router::new(shared.clone(), Sender::Receiver.index(shared.workers));
    let counters = shared.metrics.background();
    let mut out = Decided::default();
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv_wait(socket) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "mesh receive");
                continue;
            }
        };
        let now = clock.now();
        for i in 0..n {
            out.input = i;
            let (slot, got) = rx.received(i);
            let Some(Source::Peer(from)) = got.source else {
                continue;
            };
            if got.truncated {
                counters.refuse(relay_core::refusal::Reason::MeshMalformed);
                continue;
            }
            let end = got.payload.end;
            router.mesh(&slot[..end], from, now, &mut out);
        }
        if out.sends.is_empty() {
            continue;
        }
        out.own_inputs(|i| rx.get(i));
        let mut egress = egress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        egress.send(&mut out);
    }
}
