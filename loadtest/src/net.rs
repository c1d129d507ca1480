//! The virtual peers' sockets, on `relay-udp`: connected, non-blocking, batched.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

pub use relay_udp::{BATCH, RecvBatch};

/// A peer's socket, talking only to `remote`, with a 1 MiB receive buffer asked for.
pub fn peer_socket(remote: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if remote.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    relay_udp::peer_socket(any, remote, Some(1 << 20))
}

/// Sends the datagrams concatenated in `buf`, each `len` bytes, on `sock` with one `sendmmsg`;
/// how many went.
pub fn send_batch(sock: &UdpSocket, buf: &[u8], len: usize) -> io::Result<usize> {
    relay_udp::send_batch(sock, buf.chunks_exact(len))
}
