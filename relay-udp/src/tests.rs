//! The backends, the sender and the control messages over real loopback sockets (and network
//! namespaces of a test's own, where it runs as root).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use socket2::{Domain, Socket, Type};

use crate::control::{Source, has_ipv4_pktinfo, queue_drops, source, to_sockaddr};
use crate::socket::{bind_worker_socket, set_int_option};
use crate::{Backend, Counters, Datagrams, Decide, Destinations, Sender, Worker, uring};

/// Destinations: every one.
fn open() -> Box<dyn Destinations> {
    Box::new(|_| true)
}

/// A control message of `level` and `kind` with `data`, as the kernel lays it out, at
/// offset `skew` of the returned buffer.
fn cmsg(skew: usize, level: i32, kind: i32, data: usize) -> Vec<u8> {
    let hdr = size_of::<libc::cmsghdr>();
    // SAFETY: all-zero is a valid cmsghdr.
    let mut c: libc::cmsghdr = unsafe { zeroed() };
    c.cmsg_len = (hdr + data) as _;
    c.cmsg_level = level;
    c.cmsg_type = kind;
    let mut b = vec![0u8; skew];
    // SAFETY: reads the bytes of a plain C struct.
    b.extend_from_slice(unsafe {
        std::slice::from_raw_parts((&c as *const libc::cmsghdr).cast::<u8>(), hdr)
    });
    b.resize(skew + (hdr + data).div_ceil(8) * 8, 0);
    b
}

fn mapped() -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s = unsafe { zeroed() };
    let a: SocketAddr = "[::ffff:192.0.2.1]:9".parse().unwrap();
    to_sockaddr(a, true, &mut s);
    s
}

#[test]
fn the_queue_drop_count_is_read_beside_other_messages() {
    let hdr = size_of::<libc::cmsghdr>();
    let mut ovfl = cmsg(0, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 4);
    ovfl[hdr..hdr + 4].copy_from_slice(&77u32.to_ne_bytes());
    assert_eq!(queue_drops(&ovfl), Some(77));
    let mut two = cmsg(0, libc::IPPROTO_IP, libc::IP_PKTINFO, 12);
    two.extend(&ovfl);
    assert_eq!(queue_drops(&two), Some(77));
    assert!(has_ipv4_pktinfo(&two));
    assert_eq!(queue_drops(&two[..8]), None);
    // Cut inside its data: not read.
    assert_eq!(queue_drops(&ovfl[..hdr + 2]), None);
}

/// Sets loopback's MTU to `mtu` and brings it up, in the calling thread's network namespace.
fn loopback_mtu(mtu: i32) -> io::Result<()> {
    // Any AF_INET datagram socket serves the interface ioctls.
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; the ioctls read and write only it.
    unsafe {
        let mut req: libc::ifreq = zeroed();
        for (d, c) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *c as libc::c_char;
        }
        req.ifr_ifru.ifru_mtu = mtu;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFMTU, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn a_path_mtu_below_the_segment_size_loses_no_datagram() {
    // In a network namespace of this thread's own, loopback at MTU 1,400: segments of
    // 1,452 bytes are refused (EMSGSIZE), and the run must go again datagram by datagram.
    let got = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which owns everything it makes here.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        loopback_mtu(1400).expect("loopback in the new namespace");
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = Datagrams::default();
        let to = rx.local_addr().unwrap();
        for i in 0..10u8 {
            out.push(to, &[i; 1452]);
        }
        let c = Counters::default();
        let mut sender = Sender::new(&tx, true, open()).unwrap();
        // Twice: the second batch already knows the limit.
        let mut got = Vec::new();
        for _ in 0..2 {
            sender.send(&tx, &out, |_| &[], &c);
            let mut buf = [0u8; 2000];
            for _ in 0..10 {
                let n = rx.recv(&mut buf).expect("every datagram arrives");
                got.push((n, buf[0]));
            }
        }
        let sent = c.sent.load(std::sync::atomic::Ordering::Relaxed);
        Some((got, sent, sender.gso.max_segment(to), sender.gso.on()))
    })
    .join()
    .unwrap();
    let Some((got, sent, max_segment, gso)) = got else {
        println!("SKIPPED a_path_mtu_below_the_segment_size_loses_no_datagram: needs root");
        return;
    };
    let want: Vec<(usize, u8)> = (0..2).flat_map(|_| (0..10).map(|i| (1452, i))).collect();
    assert_eq!(got, want, "each datagram, whole and in order");
    assert_eq!(sent, 20);
    assert!(
        gso && max_segment < 1452,
        "the limit lowered, segmentation kept"
    );
}

/// A log sink for one test.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl io::Write for Log {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_refused_segmentation_is_logged_and_loses_no_datagram() {
    // Without UDP checksums (SO_NO_CHECK) the kernel refuses every segmented send with
    // EINVAL, as it does where a device cannot segment: the sender must send each run again
    // datagram by datagram, say so once, count it, and segment no more.
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    set_int_option(&tx, libc::SOL_SOCKET, libc::SO_NO_CHECK).unwrap();
    let mut out = Datagrams::default();
    let to = rx.local_addr().unwrap();
    for i in 0..12u8 {
        out.push(to, &vec![i; if i == 11 { 40 } else { 100 }]);
    }
    let c = Counters::default();
    let log = Log::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let mut sender = Sender::new(&tx, true, open()).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        // Another test's thread may have hit the warning first, with no subscriber, and
        // cached that nobody listens there: ask again, now that this one does.
        tracing::callsite::rebuild_interest_cache();
        for _ in 0..2 {
            sender.send(&tx, &out, |_| &[], &c);
        }
    });
    let mut buf = [0u8; 200];
    for round in 0..2 {
        for i in 0..12u8 {
            let n = rx.recv(&mut buf).expect("every datagram arrives");
            assert_eq!((n, buf[0]), (if i == 11 { 40 } else { 100 }, i), "{round}");
        }
    }
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&c.sent), 24);
    assert_eq!(load(&c.gso_refused), 1, "counted once");
    assert_eq!(load(&c.segmented_sends), 0);
    assert!(!sender.gso.on());
    // Never more than once. (Another test's thread may cache, between the rebuild above and
    // the event, that nobody listens to this callsite: the count above is what is sure.)
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.matches("UDP segmentation refused").count() <= 1,
        "logged more than once: {text}"
    );
}

/// A worker on a loopback socket from which the kernel refuses every segmented send
/// (`SO_NO_CHECK`: EINVAL, as where a device cannot segment) but no single one, deciding
/// with `decide`; its address, stop flag and counters.
fn refusing_worker<D: Decide>(
    decide: D,
) -> (Worker<D>, SocketAddr, Arc<AtomicBool>, Arc<Counters>) {
    let socket = bind_worker_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_NO_CHECK).unwrap();
    let relay = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let w = Worker {
        index: 0,
        socket,
        decide,
        stop: stop.clone(),
        counters: counters.clone(),
        max_datagram: 1500,
        inbox: None,
        cpu: None,
        gso: true,
        gro: false,
    };
    (w, relay, stop, counters)
}

/// Protocol logic for backend tests: every datagram goes on, three times, to `to`.
struct Thrice {
    to: SocketAddr,
}

impl Decide for Thrice {
    type Out = Datagrams;
    fn turn(&mut self) {}
    fn datagram(&mut self, d: &mut [u8], _: SocketAddr, out: &mut Datagrams) {
        for _ in 0..3 {
            out.echo(self.to, 0..d.len());
        }
    }
    fn truncated(&mut self, _: usize, _: SocketAddr, _: &mut Datagrams) {}
    fn mapped_source(&mut self, _: usize) {}
    fn destinations(&self) -> Box<dyn Destinations> {
        open()
    }
}

#[test]
fn both_backends_send_a_refused_run_again_datagram_by_datagram() {
    for backend in [Backend::Mmsg, Backend::Uring] {
        if backend == Backend::Uring && uring::probe().is_err() {
            println!("SKIPPED the uring half: io_uring unavailable here");
            continue;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let (w, relay, stop, counters) = refusing_worker(Thrice { to });
        let name = backend.name();
        let run = std::thread::scope(|s| {
            let t = s.spawn(|| backend.run(w));
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 100];
            for i in 0..4u8 {
                tx.send_to(&[i; 60], relay).unwrap();
                for _ in 0..3 {
                    let n = rx.recv(&mut buf).expect("every copy arrives");
                    got.push((n, buf[0]));
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (t.join().unwrap(), got)
        });
        run.0.unwrap();
        let want: Vec<(usize, u8)> = (0..4).flat_map(|i| [(60, i); 3]).collect();
        assert_eq!(run.1, want, "{name}");
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(load(&counters.sent), 12, "{name}");
        assert_eq!(load(&counters.gso_refused), 1, "{name}");
        assert_eq!(load(&counters.send_errors), 0, "{name}");
    }
}

/// Protocol logic for backend tests: for every datagram, three copies to `to`, one to
/// `other`, then one more to `to`, each tagged with its place.
struct Interleaved {
    to: SocketAddr,
    other: SocketAddr,
}

impl Decide for Interleaved {
    type Out = Datagrams;
    fn turn(&mut self) {}
    fn datagram(&mut self, d: &mut [u8], _: SocketAddr, out: &mut Datagrams) {
        let to = [self.to, self.to, self.to, self.other, self.to];
        for (tag, to) in to.into_iter().enumerate() {
            let mut bytes = vec![tag as u8];
            bytes.extend_from_slice(d);
            out.push(to, &bytes);
        }
    }
    fn truncated(&mut self, _: usize, _: SocketAddr, _: &mut Datagrams) {}
    fn mapped_source(&mut self, _: usize) {}
    fn destinations(&self) -> Box<dyn Destinations> {
        open()
    }
}

#[test]
fn a_refused_run_is_sent_again_and_with_mmsg_in_its_place() {
    for backend in [Backend::Mmsg, Backend::Uring] {
        if backend == Backend::Uring && uring::probe().is_err() {
            println!("SKIPPED the uring half: io_uring unavailable here");
            continue;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (w, relay, stop, _) = refusing_worker(Interleaved {
            to: rx.local_addr().unwrap(),
            other: other.local_addr().unwrap(),
        });
        let name = backend.name();
        let (run, tags) = std::thread::scope(|s| {
            let t = s.spawn(|| backend.run(w));
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(&[7; 59], relay).unwrap();
            let mut buf = [0u8; 100];
            let tags: Vec<u8> = (0..4)
                .map(|_| {
                    rx.recv(&mut buf).expect("every datagram arrives");
                    buf[0]
                })
                .collect();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (t.join().unwrap(), tags)
        });
        run.unwrap();
        // io_uring sends a refused run again after the rest of its round (see
        // `uring::Batch::completed`): once per destination, every datagram still arrives.
        if name == "mmsg" {
            assert_eq!(tags, [0, 1, 2, 4], "{name}: in the order decided");
        } else {
            let mut sorted = tags.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 4], "{name}: {tags:?}");
        }
    }
}

#[test]
fn one_small_path_mtu_does_not_stop_segmentation_to_every_destination() {
    let got = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which owns everything it makes here.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        loopback_mtu(65536).expect("loopback in the new namespace");
        // ip(8) acts in the namespace of the thread that starts it.
        let route = std::process::Command::new("ip")
            .args(["route", "add", "local", "127.0.0.2/32", "dev", "lo"])
            .args(["mtu", "lock", "1000", "table", "local"])
            .status();
        if !route.is_ok_and(|s| s.success()) {
            return None;
        }
        let small = UdpSocket::bind("127.0.0.2:0").unwrap();
        let normal = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let run = |to: SocketAddr| {
            let mut out = Datagrams::default();
            for i in 0..10u8 {
                out.push(to, &[i; 1200]);
            }
            out
        };
        let c = Counters::default();
        let mut sender = Sender::new(&tx, true, open()).unwrap();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        sender.send(&tx, &run(small.local_addr().unwrap()), |_| &[], &c);
        let before = load(&c.segmented_sends);
        sender.send(&tx, &run(normal.local_addr().unwrap()), |_| &[], &c);
        let mut buf = [0u8; 1300];
        for s in [&small, &normal] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            for i in 0..10u8 {
                let n = s.recv(&mut buf).expect("every datagram arrives");
                assert_eq!((n, buf[0]), (1200, i));
            }
        }
        Some((load(&c.sent), load(&c.segmented_sends) - before))
    })
    .join()
    .unwrap();
    let Some((sent, segmented)) = got else {
        println!(
            "SKIPPED one_small_path_mtu_does_not_stop_segmentation_to_every_destination: \
             needs root and ip(8)"
        );
        return;
    };
    assert_eq!(sent, 20);
    assert_eq!(
        segmented, 1,
        "the run to the normal path still leaves segmented"
    );
}

#[test]
fn a_mapped_source_is_ipv4_only_with_ip_pktinfo() {
    let pktinfo = cmsg(0, libc::IPPROTO_IP, libc::IP_PKTINFO, 12);
    let v4: SocketAddr = "192.0.2.1:9".parse().unwrap();
    assert_eq!(source(&mapped(), &pktinfo), Some(Source::Peer(v4)));
    assert_eq!(source(&mapped(), &[]), Some(Source::Mapped));
    // Another message first, then IP_PKTINFO; and a buffer at an odd offset.
    let mut two = cmsg(0, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, 20);
    two.extend(pktinfo);
    assert_eq!(source(&mapped(), &two), Some(Source::Peer(v4)));
    let skewed = cmsg(3, libc::IPPROTO_IP, libc::IP_PKTINFO, 12);
    assert_eq!(source(&mapped(), &skewed[3..]), Some(Source::Peer(v4)));
    // A truncated or zero-length header ends the walk.
    assert_eq!(source(&mapped(), &two[..8]), Some(Source::Mapped));
    let zero = cmsg(0, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, 0);
    let mut stuck = zero.clone();
    stuck[..size_of::<usize>()].fill(0);
    assert_eq!(source(&mapped(), &stuck), Some(Source::Mapped));
    // A native IPv6 source is itself.
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s = unsafe { zeroed() };
    let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    to_sockaddr(v6, true, &mut s);
    assert_eq!(source(&s, &[]), Some(Source::Peer(v6)));
}
