//! The I/O shells: sockets in, [`Router`] decisions out.
//!
//! A backend runs one worker's receive loop on its own `SO_REUSEPORT` socket and sends what the
//! router decides; nothing protocol-specific lives here. [`mmsg`] (recvmmsg/sendmmsg) is the
//! portable backend, and with `UDP_SEGMENT` the faster; [`uring`] (io_uring) is the other, chosen at
//! start-up by [`select`].

pub mod mmsg;
pub mod uring;

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::clock::Clock;
use crate::config::IoChoice;
use crate::metrics::Counters;
use crate::out::Out;
use crate::router::Router;

/// Everything a worker needs: its socket, its router, the clock and the stop flag.
pub struct Worker {
    /// Index of the worker (0-based).
    pub index: usize,
    /// The worker's own socket on the relay address.
    pub socket: UdpSocket,
    /// The protocol logic.
    pub router: Router,
    /// The relay's clock.
    pub clock: Clock,
    /// Set when the relay is shutting down; workers check it at least every [`POLL_MS`].
    pub stop: Arc<AtomicBool>,
    /// The worker's counters.
    pub counters: Arc<Counters>,
    /// Largest datagram accepted.
    pub max_datagram: usize,
    /// Sends decided by other threads (the reaper), for backends that take them on the worker.
    pub inbox: Option<Inbox>,
    /// The CPU to pin the worker's thread to.
    pub cpu: Option<usize>,
    /// Whether sends may be segmented (`UDP_SEGMENT`), where the backend does it.
    pub gso: bool,
}

/// Sends decided elsewhere, handed to a worker: batches on a channel, and an eventfd the
/// worker's event loop watches so that it looks at the channel only when something is there.
pub struct Inbox {
    /// The batches.
    pub batches: mpsc::Receiver<Out>,
    /// Readable when batches are waiting (an eventfd).
    pub wake: Arc<std::os::fd::OwnedFd>,
}

/// Sends what threads other than the workers decide (the reaper's `peer_left` and
/// `server_keepalive`), from the relay's own port.
pub trait Egress: Send {
    /// Sends every datagram of `out` (which holds no `Seg::Input`) and leaves `out` empty.
    fn send(&mut self, out: &mut Out);
}

/// How long a worker may block before it looks at the stop flag.
pub const POLL_MS: u64 = 100;

/// An I/O backend: runs a worker until its stop flag is set.
pub trait Backend: Send + Sync {
    /// The backend's name, for logs.
    fn name(&self) -> &'static str;
    /// Runs the worker's loop on the calling thread.
    fn run(&self, worker: Worker) -> io::Result<()>;
    /// Where the reaper's sends go, set up before the workers start (it may give a worker an
    /// [`Inbox`]).
    fn egress(&self, workers: &mut [Worker]) -> io::Result<Box<dyn Egress>>;
}

/// The backend `choice` asks for, and why when `auto` chose: with UDP segmentation (`gso`, and
/// the kernel takes `UDP_SEGMENT`) the mmsg backend, which segments its sends and measured
/// faster than io_uring here (README); else io_uring if the kernel allows it here, else mmsg,
/// saying why not. `uring` fails if it cannot run.
pub fn select(choice: IoChoice, gso: bool) -> io::Result<(Arc<dyn Backend>, Option<String>)> {
    match choice {
        IoChoice::Mmsg => Ok((Arc::new(mmsg::Mmsg), None)),
        IoChoice::Uring => match uring::probe() {
            Ok(()) => Ok((Arc::new(uring::Uring), None)),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("--io uring: io_uring is not available here: {e}"),
            )),
        },
        IoChoice::Auto if gso && udp_segment_supported() => Ok((
            Arc::new(mmsg::Mmsg),
            Some(
                "the kernel takes UDP_SEGMENT: the mmsg backend segments its sends, which the \
                 io_uring backend does not yet"
                    .into(),
            ),
        )),
        IoChoice::Auto => match uring::probe() {
            Ok(()) => Ok((Arc::new(uring::Uring), None)),
            Err(e) => Ok((
                Arc::new(mmsg::Mmsg),
                Some(format!("io_uring unavailable: {e}")),
            )),
        },
    }
}

/// Whether this kernel takes `UDP_SEGMENT` on a UDP socket (Linux 4.18 and later).
fn udp_segment_supported() -> bool {
    let Ok(sock) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) else {
        return false;
    };
    let size: libc::c_int = 1200;
    // SAFETY: a plain setsockopt with a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Pins the calling thread to `cpu`, modulo the CPUs this process may run on.
pub fn pin_to_cpu(cpu: usize) -> io::Result<usize> {
    // SAFETY: cpu_set_t is plain data; the calls only read and write the local set.
    unsafe {
        let mut allowed: libc::cpu_set_t = zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return Err(io::Error::last_os_error());
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        let Some(&target) = cpus.get(cpu % cpus.len().max(1)) else {
            return Err(io::Error::other("no CPU allowed"));
        };
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(target, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(target)
    }
}

/// Binds one worker socket on `addr` with `SO_REUSEPORT`; `::` also takes IPv4.
pub fn bind_worker_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
        // An IPv4 datagram then carries IP_PKTINFO, which tells it from a native IPv6 one whose
        // source is an IPv4-mapped address (see `source`).
        set_ip_pktinfo(&sock)?;
    }
    sock.set_reuse_port(true)?;
    // Every received datagram then carries how many the kernel dropped for a full queue.
    set_int_option(&sock, libc::SOL_SOCKET, libc::SO_RXQ_OVFL)?;
    // Best effort: a larger buffer absorbs bursts; the kernel caps it at its own maximum.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(POLL_MS)))?;
    Ok(sock.into())
}

fn set_ip_pktinfo(sock: &Socket) -> io::Result<()> {
    set_int_option(sock, libc::IPPROTO_IP, libc::IP_PKTINFO)
}

/// Turns on the integer socket option `name` of `level`.
fn set_int_option(sock: &Socket, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt with a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for the control messages a worker socket receives: an IPv4 datagram's IP_PKTINFO on a
/// dual-stack socket (28 bytes) and SO_RXQ_OVFL's drop count (20).
pub const CONTROL_LEN: usize = 64;

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
fn has_ipv4_pktinfo(control: &[u8]) -> bool {
    control_messages(control)
        .any(|(level, kind, _)| level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO)
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

/// Fails with `AddrInUse` if another socket holds `addr`, even one with `SO_REUSEPORT`, so two
/// relays never silently split one port's traffic.
pub fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.bind(&addr.into())
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

/// `UDP_SEGMENT` (linux/udp.h): the segment size of a send the kernel splits into datagrams.
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS` is 64).
const MAX_SEGMENTS: usize = 64;
/// Most bytes one segmented send carries: a UDP datagram's largest payload.
const MAX_SEGMENTED_BYTES: usize = 65_507;
/// Largest datagram a run is segmented for at first: one that fits a 1,500-byte MTU over IPv6.
/// The kernel refuses (`EMSGSIZE`) segments larger than the path's MTU, where unsegmented
/// datagrams would be fragmented instead; a sender that meets the refusal lowers its limit below
/// that size and sends the run again one datagram at a time.
const MAX_SEGMENT_SIZE: usize = 1452;
/// Room for one control message holding a `u16`, aligned as a `cmsghdr` must be.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 32]);

/// Sends a batch's datagrams with `sendmmsg`. Consecutive datagrams to one destination of one
/// size (the last of a run may be shorter) leave as one `UDP_SEGMENT` send, which the kernel
/// splits: one trip down the stack instead of one per datagram. A kernel or device that refuses
/// segmentation turns it off for this sender, with the reason logged and counted.
pub struct Sender {
    v6_socket: bool,
    gso: bool,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    /// Largest datagram this sender segments (lowered where the path refuses larger ones).
    max_segment: usize,
    /// Per header: the first send of `out` it carries, and how many.
    runs: Vec<(usize, usize)>,
}

// SAFETY: the raw pointers in the header arrays are only meaningful during `send` and are
// rewritten before every use.
unsafe impl Send for Sender {}

impl Sender {
    /// A sender for `sock`, whose family decides how IPv4 destinations are written; `gso`
    /// allows segmented sends.
    pub fn new(sock: &UdpSocket, gso: bool) -> io::Result<Sender> {
        Ok(Sender {
            v6_socket: sock.local_addr()?.is_ipv6(),
            gso,
            hdrs: Vec::new(),
            iovs: Vec::new(),
            names: Vec::new(),
            controls: Vec::new(),
            max_segment: MAX_SEGMENT_SIZE,
            runs: Vec::new(),
        })
    }

    /// Builds the headers for `out.sends[from..]`, segmenting runs if `segment`.
    fn build<'a>(
        &mut self,
        out: &'a Out,
        from: usize,
        input: &impl Fn(usize) -> &'a [u8],
        segment: bool,
    ) {
        self.iovs.clear();
        self.names.clear();
        self.hdrs.clear();
        self.controls.clear();
        self.runs.clear();
        // The open run: its destination, segment size, bytes so far, and whether a shorter
        // datagram already ended it.
        let mut open: Option<(SocketAddr, usize, usize, bool)> = None;
        for (i, s) in out.sends.iter().enumerate().skip(from) {
            let len = s.wire_len();
            let max_segment = self.max_segment;
            let joins = segment
                && self.gso
                && len > 0
                && open.is_some_and(|(to, size, bytes, ended)| {
                    size <= max_segment
                        && to == s.to
                        && !ended
                        && len <= size
                        && bytes + len <= MAX_SEGMENTED_BYTES
                        && self.runs.last().is_some_and(|r| r.1 < MAX_SEGMENTS)
                });
            if joins {
                let run = self.runs.last_mut().expect("an open run");
                run.1 += 1;
                if let Some((_, size, bytes, ended)) = &mut open {
                    *bytes += len;
                    *ended = len < *size;
                }
            } else {
                // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
                self.names.push(unsafe { zeroed() });
                let namelen = to_sockaddr(s.to, self.v6_socket, self.names.last_mut().unwrap());
                // SAFETY: see above.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_namelen = namelen;
                self.hdrs.push(h);
                self.runs.push((i, 1));
                self.controls.push(Control([0; 32]));
                open = Some((s.to, len, len, len == 0));
            }
            for seg in out.segments(s, input(s.input)) {
                if !seg.is_empty() {
                    self.iovs.push(libc::iovec {
                        iov_base: seg.as_ptr() as *mut _,
                        iov_len: seg.len(),
                    });
                }
            }
            // The iovecs' end index for now; turned into a count below.
            let h = self.hdrs.last_mut().expect("a header");
            h.msg_hdr.msg_iovlen = self.iovs.len();
        }
        // Now that no vector will grow, point the headers at their names, iovecs and controls.
        let mut iov_start = 0;
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            let iov_end = h.msg_hdr.msg_iovlen;
            h.msg_hdr.msg_name = &mut self.names[i] as *mut _ as *mut _;
            h.msg_hdr.msg_iov = self.iovs[iov_start..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = iov_end - iov_start;
            iov_start = iov_end;
            let (first, n) = self.runs[i];
            if n > 1 {
                let size = out.sends[first].wire_len() as u16;
                let c = &mut self.controls[i];
                h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 (24) fits the 32-byte buffer, which is aligned for
                // a cmsghdr; the macros compute offsets within the header we point them at.
                unsafe {
                    h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*cm).cmsg_level = libc::IPPROTO_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), size);
                }
            }
        }
    }

    /// Sends every datagram of `out` on `sock`; `input(i)` is received datagram `i` of the batch.
    pub fn send<'a>(
        &mut self,
        sock: &UdpSocket,
        out: &'a Out,
        input: impl Fn(usize) -> &'a [u8],
        counters: &Counters,
    ) {
        if out.sends.is_empty() {
            return;
        }
        self.build(out, 0, &input, true);
        let fd = sock.as_raw_fd();
        let mut done = 0;
        while done < self.hdrs.len() {
            let rest = &mut self.hdrs[done..];
            // SAFETY: every header points into live buffers (`out`, inputs, our vectors).
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                let (first, n) = self.runs[done];
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    // A segmented send is never dropped whole: its datagrams go again one by
                    // one (with the rest of the batch), each failing or not on its own. A kernel
                    // or device without segmentation turns it off for good; a path whose MTU
                    // the segment size exceeds lowers this sender's limit below it.
                    _ if n > 1 => {
                        let size = out.sends[first].wire_len();
                        match e.raw_os_error() {
                            Some(libc::EIO | libc::EINVAL) => {
                                tracing::warn!(error = %e, "UDP segmentation refused; sending datagrams one by one from now on");
                                Counters::add(&counters.gso_refused, 1);
                                self.gso = false;
                            }
                            Some(libc::EMSGSIZE) => {
                                tracing::debug!(size, "segments too large for the path");
                                self.max_segment = self.max_segment.min(size - 1);
                            }
                            _ => {}
                        }
                        self.build(out, first, &input, false);
                        done = 0;
                    }
                    _ => {
                        // The first datagram failed (unreachable, too large…): skip it only.
                        tracing::debug!(error = %e, to = %out.sends[first].to, "send failed");
                        Counters::add(&counters.send_errors, n as u64);
                        done += 1;
                    }
                }
            } else {
                let sent = r as usize;
                let hdrs = &self.hdrs[done..done + sent];
                let bytes: u64 = hdrs.iter().map(|h| u64::from(h.msg_len)).sum();
                let datagrams: usize = self.runs[done..done + sent].iter().map(|r| r.1).sum();
                Counters::add(&counters.sent, datagrams as u64);
                Counters::add(&counters.sent_bytes, bytes);
                Counters::add(
                    &counters.segmented_sends,
                    hdrs.iter()
                        .zip(&self.runs[done..])
                        .filter(|(_, r)| r.1 > 1)
                        .count() as u64,
                );
                done += sent;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut out = Out::default();
            let to = rx.local_addr().unwrap();
            for i in 0..10u8 {
                let start = out.buf.len();
                out.buf.extend(std::iter::repeat_n(i, 1452));
                out.reply(to, start, crate::out::Kind::Reply, true);
            }
            let c = Counters::default();
            let mut sender = Sender::new(&tx, true).unwrap();
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
            Some((got, sent, sender.max_segment, sender.gso))
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
}
