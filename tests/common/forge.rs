//! Forgery for the adversarial tests: a raw socket writes the IP header itself, so a datagram can
//! claim any source address on loopback. Needs CAP_NET_RAW; without it the tests say so and skip.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};

/// A raw IPv4 socket that sends UDP datagrams with any source address.
pub struct Forger {
    fd: i32,
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
        Some(Forger { fd, sent: 0 })
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

    /// Sends a JSON message from `from` to `to`.
    pub fn json(&mut self, from: SocketAddr, to: SocketAddr, v: &serde_json::Value) {
        self.send(from, to, v.to_string().as_bytes());
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns.
        unsafe { libc::close(self.fd) };
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
    while let Ok(len) = s.recv(&mut buf) {
        bytes += len;
        n += 1;
    }
    s.set_nonblocking(false).unwrap();
    (bytes, n)
}
