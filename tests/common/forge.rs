//! Forgery for the adversarial tests: a raw socket writes the IP header itself, so a datagram can
//! claim any source address on loopback. Needs CAP_NET_RAW; without it the tests say so and skip.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Instant;

use super::{Peer, Relay, TIMEOUT};

/// Raw IPv4 and IPv6 sockets that send UDP datagrams with any source address.
pub struct Forger {
    fd: i32,
    fd6: i32,
    /// Bytes of UDP payload forged so far.
    pub sent: usize,
}

impl Forger {
    /// A forger, or `None` (with a line saying which test is skipped and why) without
    /// CAP_NET_RAW.
    pub fn new(test: &str) -> Option<Forger> {
        // SAFETY: a plain socket call; the descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            println!("SKIPPED {test}: forging source addresses needs CAP_NET_RAW ({e})");
            eprintln!("SKIPPED {test}: forging source addresses needs CAP_NET_RAW ({e})");
            return None;
        }
        // SAFETY: as above.
        let fd6 = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(
            fd6 >= 0,
            "raw IPv6 socket: {}",
            std::io::Error::last_os_error()
        );
        Some(Forger { fd, fd6, sent: 0 })
    }

    /// Sends `payload` as a UDP datagram from `from` to `to`.
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let (from, to) = (v4(from), v4(to));
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut p = Vec::with_capacity(total);
        // IPv4 header: version/IHL, TOS, total length, id, flags/fragment, TTL, protocol UDP,
        // checksum (the kernel fills it in), source, destination.
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        // UDP header; a zero checksum means "none" over IPv4.
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        // SAFETY: all-zero is a valid sockaddr_in; the pointers cover the buffers' lengths.
        let r = unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from(*to.ip()).to_be();
            libc::sendto(
                self.fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(r, p.len() as isize, "{}", std::io::Error::last_os_error());
        self.sent += payload.len();
    }

    /// Sends `payload` as a native IPv6 UDP datagram from `from` to `to` (any IPv6 source, an
    /// IPv4-mapped one included).
    pub fn send6(
        &mut self,
        from: std::net::SocketAddrV6,
        to: std::net::SocketAddrV6,
        payload: &[u8],
    ) {
        let udp_len = 8 + payload.len();
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&from.port().to_be_bytes());
        udp.extend_from_slice(&to.port().to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        // The checksum is mandatory over IPv6: one's complement sum over the pseudo-header
        // (source, destination, length, next header) and the datagram.
        let mut sum: u32 = 0;
        let mut add = |b: &[u8]| {
            for c in b.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        };
        add(&from.ip().octets());
        add(&to.ip().octets());
        add(&(udp_len as u32).to_be_bytes());
        add(&[0, 0, 0, 17]);
        add(&udp);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let check = match !(sum as u16) {
            0 => 0xffff,
            c => c,
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        // IPv6 header: version, traffic class and flow label, payload length, next header UDP,
        // hop limit, source, destination.
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(&udp);
        // SAFETY: all-zero is a valid sockaddr_in6; the pointers cover the buffers' lengths.
        let r = unsafe {
            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = to.ip().octets();
            libc::sendto(
                self.fd6,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&sa as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as u32,
            )
        };
        assert_eq!(r, p.len() as isize, "{}", std::io::Error::last_os_error());
        self.sent += payload.len();
    }

    /// Sends a JSON message from `from` to `to`.
    pub fn json(&mut self, from: SocketAddr, to: SocketAddr, v: &serde_json::Value) {
        self.send(from, to, v.to_string().as_bytes());
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        // SAFETY: closes the descriptors this value owns.
        unsafe {
            libc::close(self.fd);
            libc::close(self.fd6);
        }
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// Bytes and datagrams waiting on `s`, read without blocking.
pub fn received(s: &UdpSocket) -> (usize, usize) {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65536];
    let (mut bytes, mut n) = (0, 0);
    while let Ok(len) = super::recv(s, &mut buf) {
        bytes += len;
        n += 1;
    }
    s.set_nonblocking(false).unwrap();
    (bytes, n)
}

/// A socket on `ip` (any free port) whose reads time out after [`TIMEOUT`].
pub fn sock(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Datagrams the kernel dropped at the relay's sockets for full receive queues.
pub fn queue_drops(r: &Relay) -> u64 {
    r.metrics_text()
        .lines()
        .filter(|l| l.starts_with("udp_relay_receive_queue_drops_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the relay has received `n` datagrams in all (or the kernel dropped the rest for
/// a full receive queue), then lets `barrier`'s ping and pong pass, so that what the flood
/// caused has been sent.
pub fn quiesce(r: &Relay, n: u64, barrier: &Peer) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = r.metric("udp_relay_datagrams_received_total") + queue_drops(r);
        if seen >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay saw {seen} datagrams, never {n}"
        );
        std::thread::yield_now();
    }
    barrier.drain();
}

/// A registered, authenticated peer on its own /24, for barriers (in signed mode, where it
/// could only register by signing, an unregistered one: its few pongs fit its credit).
pub fn barrier(r: &Relay, signed: bool) -> Peer {
    // Over IPv4 whatever the relay's host (a dual-stack socket serves it too).
    let relay = SocketAddr::new("127.0.0.1".parse().unwrap(), r.addr.port());
    let b = Peer::bind(relay, "127.0.1.1:0");
    if !signed {
        b.register("barrier");
    }
    b
}
