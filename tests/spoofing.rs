//! Spoofing over loopback: datagrams forged with a victim's source address (a raw socket writes
//! the IP header itself) must not turn the relay into an amplifier aimed at the victim. Needs
//! CAP_NET_RAW (CI runs as root).

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};

use common::*;
use serde_json::json;

/// A raw IPv4 socket that sends UDP datagrams with any source address.
struct Forger(i32);

impl Forger {
    fn new() -> Forger {
        // SAFETY: a plain socket call; the descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(
            fd >= 0,
            "raw socket: {} (this test needs CAP_NET_RAW)",
            std::io::Error::last_os_error()
        );
        Forger(fd)
    }

    /// Sends `payload` as a UDP datagram from `from` to `to`.
    fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
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
                self.0,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(r, p.len() as isize, "{}", std::io::Error::last_os_error());
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// Everything waiting on `s`, in bytes and datagrams.
fn received(s: &UdpSocket) -> (usize, usize) {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65536];
    let (mut bytes, mut n) = (0, 0);
    while let Ok(len) = s.recv(&mut buf) {
        bytes += len;
        n += 1;
    }
    s.set_nonblocking(false).unwrap();
    (bytes, n)
}

#[test]
fn a_flood_forged_in_a_victims_name_gets_it_no_more_than_was_sent() {
    // One worker serves datagrams in arrival order, so a legitimate peer's pong is a barrier.
    let r = Relay::start(&["--workers", "1", "--registration-rate", "0"]);
    let relay = v4(r.addr);
    let victim = UdpSocket::bind("127.0.0.2:0").unwrap();
    let victim_addr = v4(victim.local_addr().unwrap());
    let forger = Forger::new();
    let mut sent = 0;
    let mut forge = |d: serde_json::Value| {
        let d = d.to_string();
        sent += d.len();
        forger.send(victim_addr, relay, d.as_bytes());
    };
    for i in 0..200 {
        forge(json!({"type": "register", "name": format!("forged-{i}")}));
        forge(json!({"type": "ping"}));
        forge(json!({"type": "lookup", "name": "forged-0"}));
        forge(json!({"type": "watch", "names": ["forged-1", "forged-2"]}));
        forge(json!({"type": "keepalive", "name": format!("forged-{i}")}));
    }
    // From another /24: the victim's network has spent its prefix's credit.
    let barrier = Peer::bind(r.addr, "127.0.1.1:0");
    barrier.send(json!({"type": "ping"}));
    barrier.expect("pong");
    let (got, datagrams) = received(&victim);
    assert!(
        datagrams > 0,
        "the victim gets its credit's worth, not nothing"
    );
    assert!(
        got <= sent,
        "the victim got {got} bytes for {sent} forged in its name"
    );
    // The credit, plus its refill (64 B/s) over the test's fraction of a second.
    assert!(got <= 1_600 + 64, "beyond the credit: {got} bytes");
    assert!(r.metric("udp_relay_unproven_withheld_total") > 0);
}

#[test]
fn relaying_to_a_name_forged_for_a_victim_is_bounded_by_the_sender() {
    let r = Relay::start(&["--workers", "1", "--source-rate", "100"]);
    let relay = v4(r.addr);
    let victim = UdpSocket::bind("127.0.0.2:0").unwrap();
    let forger = Forger::new();
    let name = "victim-name-long";
    let register = json!({"type": "register", "name": name}).to_string();
    forger.send(v4(victim.local_addr().unwrap()), relay, register.as_bytes());
    // An accomplice, properly registered elsewhere, relays to that name as fast as it can.
    let accomplice = Peer::bind(r.addr, "127.0.0.3:0");
    accomplice.register("acc");
    let mut sent = 0;
    let n = 1_000;
    for i in 0..n {
        let d =
            json!({"type": "relay", "source": "acc", "target": name, "payload": format!("{i:08}")});
        let d = d.to_string();
        sent += d.len();
        accomplice.send_raw(d.as_bytes());
    }
    // The accomplice is over its limit now; a third peer's pong is the barrier (one worker, one
    // socket: datagrams are served in arrival order).
    let barrier = Peer::bind(r.addr, "127.0.1.1:0");
    barrier.send(json!({"type": "ping"}));
    barrier.expect("pong");
    // Open mode forwards to unproven addresses, but never more bytes than were sent, and no
    // faster than the sender's own limit (a burst of 200 at 100/s, here within a second or so).
    let (got, forwarded) = received(&victim);
    let limited = r.refused("rate_limited_source");
    assert!(got <= sent, "{got} bytes forwarded for {sent} sent");
    assert!(forwarded <= n, "{forwarded}");
    assert!(
        limited >= (n as u64).saturating_sub(200 + 200),
        "only {limited} of {n} refused at 100/s"
    );
}
