//! What the kernel writes beside a received datagram and reads beside a sent one: socket
//! addresses both ways, and the control messages (the source's `IP_PKTINFO`, `SO_RXQ_OVFL`'s drop
//! count, `UDP_GRO`'s segment size), read at any alignment.

use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Room for the control messages a worker socket receives, each padded to 8 bytes: an IPv4
/// datagram's IP_PKTINFO on a dual-stack socket (32), SO_RXQ_OVFL's drop count (24) and a
/// coalesced receive's UDP_GRO segment size (24).
pub const CONTROL_LEN: usize = 96;

/// Where a received datagram says it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A peer, by its canonical address.
    Peer(SocketAddr),
    /// A native IPv6 datagram whose source is an IPv4-mapped address: it names an IPv4 host it
    /// did not come from, so nothing may be sent there on its account.
    Mapped,
}

/// The source of a datagram, from the address and control data the kernel wrote for it.
pub fn source(name: &libc::sockaddr_storage, control: &[u8]) -> Option<Source> {
    let from = from_sockaddr(name)?;
    match from {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            if has_ipv4_pktinfo(control) {
                Some(Source::Peer(canonical(from)))
            } else {
                Some(Source::Mapped)
            }
        }
        a => Some(Source::Peer(a)),
    }
}

/// Whether `control` (as the kernel wrote it, at any alignment) holds an IP_PKTINFO message.
pub(crate) fn has_ipv4_pktinfo(control: &[u8]) -> bool {
    control_messages(control)
        .any(|(level, kind, _)| level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO)
}

/// `UDP_GRO` (linux/udp.h): on a socket, allows coalesced receives; on a receive, the control
/// message giving the size of the datagrams it holds.
pub(crate) const UDP_GRO: libc::c_int = 104;

/// `UDP_SEGMENT` (linux/udp.h): the segment size of a send the kernel splits into datagrams.
pub const UDP_SEGMENT: libc::c_int = 103;

/// The size of the datagrams a coalesced receive holds (the last may be shorter), if `control`
/// says it is one.
pub(crate) fn gro_segment(control: &[u8]) -> Option<usize> {
    control_messages(control).find_map(|(level, kind, data)| {
        (level == libc::IPPROTO_UDP && kind == UDP_GRO)
            .then(|| Some(i32::from_ne_bytes(data.get(..4)?.try_into().ok()?)))
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
    })
}

/// How many datagrams the kernel has dropped at this socket for a full receive queue, since the
/// socket was made, if `control` says (SO_RXQ_OVFL).
pub fn queue_drops(control: &[u8]) -> Option<u32> {
    control_messages(control).find_map(|(level, kind, data)| {
        (level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL)
            .then(|| Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?)))
            .flatten()
    })
}

/// The control messages in `control` as (level, type, data), read at any alignment.
fn control_messages(control: &[u8]) -> impl Iterator<Item = (i32, i32, &[u8])> {
    let hdr = size_of::<libc::cmsghdr>();
    let align = size_of::<usize>();
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + hdr > control.len() {
            return None;
        }
        // SAFETY: `hdr` bytes at `off` are inside `control`; read without assuming alignment.
        let c: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control[off..].as_ptr().cast()) };
        let len = c.cmsg_len as usize;
        if len < hdr {
            return None;
        }
        let data = control.get(off + hdr..(off + len).min(control.len()))?;
        off += len.div_ceil(align) * align;
        Some((c.cmsg_level, c.cmsg_type, data))
    })
}

/// The address a peer is known by: IPv4 peers seen through a dual-stack socket are written
/// `a.b.c.d:port`, as the old relay wrote them.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Reads a socket address the kernel wrote.
fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` for a socket of the given family (IPv4 peers are mapped on IPv6 sockets).
pub fn to_sockaddr(addr: SocketAddr, v6_socket: bool, s: &mut libc::sockaddr_storage) -> u32 {
    let addr = match addr {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        a => a,
    };
    // SAFETY: sockaddr_storage is large and aligned enough for either structure.
    unsafe {
        match addr {
            SocketAddr::V4(v4) => {
                let a = &mut *(s as *mut _ as *mut libc::sockaddr_in);
                *a = zeroed();
                a.sin_family = libc::AF_INET as libc::sa_family_t;
                a.sin_port = v4.port().to_be();
                a.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                size_of::<libc::sockaddr_in>() as u32
            }
            SocketAddr::V6(v6) => {
                let a = &mut *(s as *mut _ as *mut libc::sockaddr_in6);
                *a = zeroed();
                a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                a.sin6_port = v6.port().to_be();
                a.sin6_addr.s6_addr = v6.ip().octets();
                a.sin6_flowinfo = v6.flowinfo();
                a.sin6_scope_id = v6.scope_id();
                size_of::<libc::sockaddr_in6>() as u32
            }
        }
    }
}
