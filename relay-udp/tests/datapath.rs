//! Both backends driven through the `Decide` boundary with scripted protocol logic: segmentation
//! limits and counters agree for a mixed plan of sends, and a coalesced receive (GRO) is split
//! into datagrams each decided alone, over IPv4, dual-stack and IPv6 sockets.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_udp::{
    Backend, Counters, Datagrams, Decide, Destinations, Worker, bind_worker_socket, set_gro,
    uring_available,
};

type Out = Datagrams;
type Plan = fn(&mut Out, &[SocketAddr]);

/// Records every datagram it is given; on `go` appends `plan`'s sends.
struct Script {
    to: Vec<SocketAddr>,
    plan: Plan,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Decide for Script {
    type Out = Datagrams;
    fn turn(&mut self) {}
    fn datagram(&mut self, d: &mut [u8], _: SocketAddr, out: &mut Out) {
        if d == b"go" {
            (self.plan)(out, &self.to);
        }
        self.seen
            .lock()
            .unwrap()
            .push(format!("D{}:{}", d.len(), d.first().copied().unwrap_or(0)));
    }
    fn truncated(&mut self, len: usize, _: SocketAddr, _: &mut Out) {
        self.seen.lock().unwrap().push(format!("T{len}"));
    }
    fn mapped_source(&mut self, len: usize) {
        self.seen.lock().unwrap().push(format!("M{len}"));
    }
    fn destinations(&self) -> Box<dyn Destinations> {
        // Every destination but those that are never one (port 0, unspecified).
        Box::new(|to: SocketAddr| to.port() != 0 && !to.ip().is_unspecified())
    }
}

fn reply(out: &mut Out, to: SocketAddr, byte: u8, len: usize) {
    out.push(to, &vec![byte; len]);
}

fn set_int(fd: &impl AsRawFd, level: i32, name: i32, v: i32) {
    // SAFETY: a plain setsockopt with a pointer to an int of the size given.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&v as *const i32).cast(), 4) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Mmsg];
    if uring_available().is_ok() {
        v.push(Backend::Uring);
    } else {
        println!("SKIPPED the io_uring backend: unavailable here");
    }
    v
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Runs `backend` on a worker socket with `plan`, calls `body(relay address, decided so far)`,
/// stops it.
#[allow(clippy::too_many_arguments)]
fn with_worker<R>(
    backend: Backend,
    host: &str,
    to: Vec<SocketAddr>,
    plan: Plan,
    gso: bool,
    gro: bool,
    max_datagram: usize,
    prep: impl FnOnce(&UdpSocket),
    body: impl FnOnce(SocketAddr, &Mutex<Vec<String>>) -> R,
) -> (R, Arc<Counters>, Vec<String>) {
    let socket = bind_worker_socket(format!("{host}:0").parse().unwrap()).unwrap();
    let gro = set_gro(&socket, gro);
    prep(&socket);
    let relay = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let w = Worker {
        index: 0,
        socket,
        decide: Script {
            to,
            plan,
            seen: seen.clone(),
        },
        stop: stop.clone(),
        counters: counters.clone(),
        max_datagram,
        inbox: None,
        cpu: None,
        gso,
        gro,
    };
    let r = std::thread::scope(|s| {
        let t = s.spawn(|| backend.run(w));
        let r = body(relay, &seen);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap().unwrap();
        r
    });
    let seen = seen.lock().unwrap().clone();
    (r, counters, seen)
}

/// The first `n` datagrams `rx` receives as (length, first byte, 255 if empty); fewer if none
/// comes for 2 s.
fn drain(rx: &UdpSocket, n: usize) -> Vec<(usize, u8)> {
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while got.len() < n {
        match rx.recv(&mut buf) {
            Ok(n) => got.push((n, if n > 0 { buf[0] } else { 255 })),
            Err(_) => break,
        }
    }
    got
}

fn mixed_plan(out: &mut Out, to: &[SocketAddr]) {
    let (x, y) = (to[0], to[1]);
    let mut k = 0u8;
    let mut r = |out: &mut Out, to, len| {
        reply(out, to, k, len);
        k = k.wrapping_add(1);
    };
    for _ in 0..10 {
        r(out, x, 100);
    }
    r(out, x, 50); // short last: ends the run of 11
    r(out, x, 0); // zero-length
    for _ in 0..5 {
        r(out, x, 1453); // over the segment limit: one by one
    }
    for _ in 0..65 {
        r(out, y, 10); // 64 + 1
    }
    for _ in 0..2 {
        r(out, y, 1452);
    }
    for _ in 0..7 {
        r(out, x, 10_000);
    }
    for _ in 0..46 {
        r(out, x, 1452); // 45 fit 65,507 bytes
    }
}

#[test]
fn counters_agree_on_both_backends_for_a_mixed_plan() {
    for b in backends() {
        let x = UdpSocket::bind("127.0.0.1:0").unwrap();
        let y = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&x, &y] {
            set_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20);
        }
        let to = vec![x.local_addr().unwrap(), y.local_addr().unwrap()];
        let ((gx, gy), c, _) = with_worker(
            b,
            "127.0.0.1",
            to,
            mixed_plan,
            true,
            false,
            65507,
            |_| {},
            |relay, _| {
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                tx.send_to(b"go", relay).unwrap();
                (drain(&x, 70), drain(&y, 67))
            },
        );
        let bytes: usize = gx.iter().chain(&gy).map(|g| g.0).sum();
        println!(
            "{}: x got {} y got {} bytes {bytes}; sent {} sent_bytes {} segmented {} errors {} refused {}",
            b.name(),
            gx.len(),
            gy.len(),
            load(&c.sent),
            load(&c.sent_bytes),
            load(&c.segmented_sends),
            load(&c.send_errors),
            load(&c.gso_refused)
        );
        assert_eq!(gx.len() + gy.len(), 137, "{}", b.name());
        // Each destination gets its datagrams in the order decided.
        for g in [&gx, &gy] {
            let tags: Vec<u8> = g.iter().map(|g| g.1).filter(|&t| t != 255).collect();
            assert!(
                tags.windows(2).all(|w| w[0] < w[1]),
                "{}: {tags:?}",
                b.name()
            );
        }
        assert_eq!(load(&c.sent), 137, "{}", b.name());
        assert_eq!(load(&c.sent_bytes) as usize, bytes, "{}", b.name());
        assert_eq!(load(&c.segmented_sends), 4, "{}", b.name());
        assert_eq!(load(&c.send_errors), 0, "{}", b.name());
    }
}

fn nothing(_: &mut Out, _: &[SocketAddr]) {}

fn send_seg(tx: &UdpSocket, to: SocketAddr, size: usize, data: &[u8]) -> isize {
    let to = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    #[repr(C, align(8))]
    struct C([u8; 32]);
    let mut c = C([0; 32]);
    // SAFETY: the header points at live locals for the call; CMSG_SPACE of a u16 (24) fits the
    // aligned 32-byte control buffer.
    unsafe {
        let mut h: libc::msghdr = std::mem::zeroed();
        h.msg_name = to.as_ptr() as *mut _;
        h.msg_namelen = to.len();
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = c.0.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as usize;
        let cm = libc::CMSG_FIRSTHDR(&h);
        (*cm).cmsg_level = libc::IPPROTO_UDP;
        (*cm).cmsg_type = 103;
        (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), size as u16);
        libc::sendmsg(tx.as_raw_fd(), &h, 0)
    }
}

#[test]
fn gro_splits_every_datagram_alone_on_both_backends() {
    for host in ["127.0.0.1", "[::]", "[::1]"] {
        for b in backends() {
            let (_, c, seen) = with_worker(
                b,
                host,
                vec![],
                nothing,
                true,
                true,
                100,
                |_| {},
                |relay, seen| {
                    let (tx, to) = if host == "[::1]" {
                        (UdpSocket::bind("[::1]:0").unwrap(), relay)
                    } else {
                        (
                            UdpSocket::bind("127.0.0.1:0").unwrap(),
                            SocketAddr::new("127.0.0.1".parse().unwrap(), relay.port()),
                        )
                    };
                    let mut d: Vec<u8> = (0..64u8).collect();
                    assert!(send_seg(&tx, to, 1, &d) > 0);
                    d = (0..64 * 7 - 4).map(|i| (i / 7) as u8).collect();
                    assert!(send_seg(&tx, to, 7, &d) > 0);
                    d = vec![9; 10 * 200];
                    assert!(send_seg(&tx, to, 200, &d) > 0);
                    d = vec![8; 9 * 101 + 50];
                    assert!(send_seg(&tx, to, 101, &d) > 0);
                    // Every datagram decided, or give up after 5 s.
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while seen.lock().unwrap().len() < 148 && std::time::Instant::now() < deadline {
                        std::thread::yield_now();
                    }
                },
            );
            let name = b.name();
            let want: Vec<String> = (0..64)
                .map(|i| format!("D1:{i}"))
                .chain((0..64).map(|i| format!("D{}:{i}", if i == 63 { 3 } else { 7 })))
                .chain((0..10).map(|_| "T200".to_string()))
                .chain((0..10).map(|i| {
                    if i == 9 {
                        "D50:8".into()
                    } else {
                        "T101".into()
                    }
                }))
                .collect();
            println!(
                "{host} {name}: {} decided, coalesced {}",
                seen.len(),
                load(&c.coalesced_receives)
            );
            assert_eq!(seen, want, "{host} {name}");
            assert_eq!(load(&c.coalesced_receives), 4, "{host} {name}");
        }
    }
}

fn a_failing_destination_then_a_working_one(out: &mut Out, to: &[SocketAddr]) {
    for &t in to {
        for _ in 0..3 {
            reply(out, t, 7, 100);
        }
    }
}

/// A destination the kernel refuses segmented and unsegmented alike (here: a public address
/// from a socket bound to loopback, EINVAL) is its own fault: sends there go one by one, and
/// segmentation stays on for everyone else. (It was turned off for the worker for good.)
#[test]
fn a_destination_that_fails_alone_too_does_not_turn_segmentation_off() {
    for b in backends() {
        let good = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bad: SocketAddr = "203.0.113.7:9".parse().unwrap();
        let to = vec![bad, good.local_addr().unwrap()];
        // Once the worker has stopped, every send it took has completed and been counted.
        let ((), c, _) = with_worker(
            b,
            "127.0.0.1",
            to,
            a_failing_destination_then_a_working_one,
            true,
            false,
            1500,
            |_| {},
            |relay, _| {
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                for _ in 0..2 {
                    tx.send_to(b"go", relay).unwrap();
                    assert_eq!(drain(&good, 3), [(100, 7); 3]);
                }
            },
        );
        let name = b.name();
        println!(
            "{name}: errors {} segmented {} refused {}",
            load(&c.send_errors),
            load(&c.segmented_sends),
            load(&c.gso_refused)
        );
        assert_eq!(load(&c.gso_refused), 0, "{name}: segmentation stays on");
        assert_eq!(load(&c.send_errors), 6, "{name}: each datagram to it once");
        assert_eq!(load(&c.sent), 6, "{name}");
        assert!(
            load(&c.segmented_sends) >= 1,
            "{name}: the working destination's second run left segmented"
        );
    }
}
