//! The I/O shells: sockets in, [`Router`] decisions out.
//!
//! A backend runs one worker's receive loop on its own `SO_REUSEPORT` socket and sends what the
//! router decides; nothing protocol-specific lives here. [`mmsg`] (recvmmsg/sendmmsg) is the
//! portable backend, and with `UDP_SEGMENT` the faster; [`uring`] (io_uring) is the other, chosen at
//! start-up by [`select`].

mod headers;
pub mod mmsg;
pub mod uring;

pub use headers::{Gso, Headers};

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::clock::Clock;
use crate::clock::Now;
use crate::config::IoChoice;
use crate::destination::Boundary;
use crate::metrics::Counters;
use crate::out::Out;

/// The protocol logic as a backend sees it: one datagram in, its sends appended to an [`Out`].
/// The backends know nothing else of it, and it nothing of them.
pub trait Decide: Send {
    /// Decides datagram `d` from `from`; it may rewrite `d` in place and send from it.
    fn datagram(&mut self, d: &mut [u8], from: SocketAddr, now: Now, out: &mut Out);
    /// A datagram from `from` of which only `len` bytes fit the receive buffer.
    fn truncated(&mut self, len: usize, from: SocketAddr, now: Now, out: &mut Out);
    /// A datagram of `len` bytes with a source nothing may be sent to (see [`Source::Mapped`]).
    fn mapped_source(&mut self, len: usize);
}

/// Everything a worker needs: its socket, its protocol logic, the clock and the stop flag.
pub struct Worker {
    /// Index of the worker (0-based).
    pub index: usize,
    /// The worker's own socket on the relay address.
    pub socket: UdpSocket,
    /// The protocol logic.
    pub router: Box<dyn Decide>,
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
    /// Whether sends may be segmented (`UDP_SEGMENT`).
    pub gso: bool,
    /// The peer addresses served: nothing is sent to any other.
    pub boundary: Arc<Boundary>,
    /// Whether the socket may coalesce receives (`UDP_GRO` is on): receive buffers then hold
    /// the largest coalesced receive, whatever `max_datagram` is.
    pub gro: bool,
}

/// Bytes a receive buffer must hold: the largest datagram accepted and one more (to tell a
/// datagram of exactly the limit from a longer one), or with GRO the largest coalesced receive.
pub fn receive_len(max_datagram: usize, gro: bool) -> usize {
    if gro { 65_536 } else { max_datagram + 1 }
}

/// What the kernel said of one receive.
pub struct Received<'a> {
    /// Where its bytes are in the buffer.
    pub payload: Range<usize>,
    /// Where it came from, if the address was readable.
    pub source: Option<Source>,
    /// Its control messages.
    pub control: &'a [u8],
    /// Whether the kernel cut it to fit the buffer.
    pub truncated: bool,
}

impl Worker {
    /// Decides one receive, whose bytes are `buf[rx.payload]`: records the kernel's queue drops
    /// it reports, splits a coalesced (GRO) receive at its segment size, and decides each
    /// datagram as if it had arrived alone. Each decided datagram's range of `buf` is pushed on
    /// `inputs` beside `id`, so that `Out::input` indexes `inputs`.
    pub fn receive<B: Copy>(
        &mut self,
        buf: &mut [u8],
        rx: Received,
        id: B,
        now: Now,
        out: &mut Out,
        inputs: &mut Vec<(B, Range<usize>)>,
    ) {
        let payload = rx.payload;
        if let Some(n) = queue_drops(rx.control) {
            self.counters
                .queue_drops
                .store(u64::from(n), std::sync::atomic::Ordering::Relaxed);
        }
        // The kernel coalesces at most 64 datagrams (UDP_GRO_CNT_MAX) into one receive, so the
        // datagrams of a batch, and `inputs`, stay bounded.
        let size = gro_segment(rx.control).unwrap_or(payload.len()).max(1);
        if size < payload.len() {
            Counters::add(&self.counters.coalesced_receives, 1);
        }
        let from = match rx.source {
            Some(Source::Peer(a)) => a,
            Some(Source::Mapped) => {
                for start in payload.clone().step_by(size) {
                    self.router.mapped_source((payload.end - start).min(size));
                }
                if payload.is_empty() {
                    self.router.mapped_source(0);
                }
                return;
            }
            None => return,
        };
        if rx.truncated {
            // Only a datagram longer than the buffer is cut: a coalesced receive is never
            // larger than the 64 KiB buffers GRO runs with.
            out.input = inputs.len();
            inputs.push((id, payload.clone()));
            self.router.truncated(payload.len(), from, now, out);
            return;
        }
        let mut start = payload.start;
        while start < payload.end || (start == payload.start && payload.is_empty()) {
            let end = (start + size).min(payload.end);
            out.input = inputs.len();
            inputs.push((id, start..end));
            if end - start > self.max_datagram {
                self.router.truncated(end - start, from, now, out);
            } else {
                self.router.datagram(&mut buf[start..end], from, now, out);
            }
            if end == start {
                break;
            }
            start = end;
        }
    }
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

/// The backend `choice` asks for, and why when `auto` chose. `auto` is the mmsg backend: both
/// segment their sends (`gso`) and take coalesced receives, and mmsg measured faster than
/// io_uring in CPU per datagram on every shape of the README's performance section (by 4–12%:
/// io_uring's per-request issue path costs more than sendmmsg's loop over a batch). `uring`
/// fails if the kernel refuses io_uring here.
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
        IoChoice::Auto => {
            let segmentation = if !gso {
                "off (--gso off)"
            } else if udp_segment_supported() {
                "on"
            } else {
                "refused by this kernel"
            };
            Ok((
                Arc::new(mmsg::Mmsg),
                Some(format!(
                    "recvmmsg/sendmmsg measured faster than io_uring on every load shape \
                     (README, Performance); send segmentation {segmentation}"
                )),
            ))
        }
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
            headers::UDP_SEGMENT,
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

/// The signal that interrupts a worker's wait for datagrams, so that a pause (a takeover) need
/// not wait out [`POLL_MS`]: its handler does nothing, and a receive on a socket with
/// `SO_RCVTIMEO` (or `io_uring_enter`) returns `EINTR` whatever `SA_RESTART` says.
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn ignore(_: libc::c_int) {}

/// Installs the handler of [`wake_signal`] (once per process).
pub fn install_wake() -> io::Result<()> {
    static INSTALLED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    let r = *INSTALLED.get_or_init(|| {
        // SAFETY: all-zero is a valid sigaction; the handler only returns.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installs a handler that touches nothing, for a signal only the relay sends.
        unsafe { libc::sigaction(wake_signal(), &sa, std::ptr::null_mut()) }
    });
    if r != 0 {
        return Err(io::Error::other(
            "cannot install the workers' wake-up signal",
        ));
    }
    Ok(())
}

/// Interrupts `thread`'s wait (after [`install_wake`]).
pub fn wake(thread: &std::thread::JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the thread is alive while its handle is unjoined; its handler is installed.
    unsafe { libc::pthread_kill(thread.as_pthread_t(), wake_signal()) };
}

/// The receive and send buffer each worker socket asks for.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The buffers of `sock` that the kernel capped below [`SOCKET_BUFFER`]: the sysctl that caps
/// each and the size in force. Linux reports twice the size it grants (the other half is its
/// bookkeeping), so what it reports is halved before comparing.
pub fn capped_buffers(sock: &UdpSocket) -> Vec<(&'static str, usize)> {
    let sock = socket2::SockRef::from(sock);
    [
        ("net.core.rmem_max", sock.recv_buffer_size()),
        ("net.core.wmem_max", sock.send_buffer_size()),
    ]
    .into_iter()
    .filter_map(|(sysctl, got)| {
        let granted = got.ok()? / 2;
        (granted < SOCKET_BUFFER).then_some((sysctl, granted))
    })
    .collect()
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
    // Best effort: a larger buffer absorbs bursts (and what arrives while a takeover pauses the
    // relay). With CAP_NET_ADMIN the relay forces it past the kernel's maximum; without, the
    // kernel caps it, which `capped_buffers` reports.
    let size = SOCKET_BUFFER as libc::c_int;
    if set_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if set_int(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size).is_err() {
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    }
    sock.bind(&addr.into())?;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(POLL_MS)))?;
    Ok(sock.into())
}

fn set_ip_pktinfo(sock: &Socket) -> io::Result<()> {
    set_int_option(sock, libc::IPPROTO_IP, libc::IP_PKTINFO)
}

/// Turns on the integer socket option `name` of `level`.
fn set_int_option(sock: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    set_int(sock, level, name, 1)
}

fn set_int(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    on: libc::c_int,
) -> io::Result<()> {
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
fn has_ipv4_pktinfo(control: &[u8]) -> bool {
    control_messages(control)
        .any(|(level, kind, _)| level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO)
}

/// `UDP_GRO` (linux/udp.h): on a socket, allows coalesced receives; on a receive, the control
/// message giving the size of the datagrams it holds.
const UDP_GRO: libc::c_int = 104;

/// The size of the datagrams a coalesced receive holds (the last may be shorter), if `control`
/// says it is one.
fn gro_segment(control: &[u8]) -> Option<usize> {
    control_messages(control).find_map(|(level, kind, data)| {
        (level == libc::IPPROTO_UDP && kind == UDP_GRO)
            .then(|| Some(i32::from_ne_bytes(data.get(..4)?.try_into().ok()?)))
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
    })
}

/// Turns coalesced receives (`UDP_GRO`) on or off on `sock`, whatever it had: a socket handed
/// over keeps the option of the relay that set it, and coalesced receives would not fit the
/// receive buffers of one that runs without it. Whether it is on: false, with a logged reason,
/// where the kernel refuses it.
pub fn set_gro(sock: &UdpSocket, on: bool) -> bool {
    match set_int(sock, libc::IPPROTO_UDP, UDP_GRO, libc::c_int::from(on)) {
        Ok(()) => on,
        Err(e) if on => {
            tracing::warn!(error = %e, "UDP_GRO refused; receiving datagrams one by one");
            false
        }
        // A kernel without it has it off.
        Err(e) => {
            tracing::debug!(error = %e, "cannot turn UDP_GRO off");
            false
        }
    }
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

/// Sends a batch's datagrams with `sendmmsg`, through the [`Headers`] builder: a run to one
/// destination leaves as one `UDP_SEGMENT` send, which the kernel splits, one trip down the stack
/// instead of one per datagram. A refused segmented send is sent again one datagram at a time.
pub struct Sender {
    headers: Headers,
    gso: Gso,
}

impl Sender {
    /// A sender for `sock`, whose family decides how IPv4 destinations are written; `gso`
    /// allows segmented sends; nothing is sent outside `boundary`.
    pub fn new(sock: &UdpSocket, gso: bool, boundary: &Arc<Boundary>) -> io::Result<Sender> {
        Ok(Sender {
            headers: Headers::new(sock.local_addr()?.is_ipv6(), boundary.view()),
            gso: Gso::new(gso),
        })
    }

    /// Builds the headers for `out.sends[from..]`, segmenting runs if `segment`; how many
    /// sends were dropped for their destination.
    fn build<'a>(
        &mut self,
        out: &'a Out,
        from: usize,
        input: &impl Fn(usize) -> &'a [u8],
        segment: bool,
    ) -> usize {
        self.headers.clear();
        let dropped = self.headers.add(
            out,
            from..out.sends.len(),
            input,
            segment.then_some(&self.gso),
        );
        self.headers.fix();
        dropped
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
        // Counted once: sending the rest again (below) drops the same ones again.
        let dropped = self.build(out, 0, &input, true);
        Counters::add(&counters.bad_destination, dropped as u64);
        let fd = sock.as_raw_fd();
        let mut done = 0;
        while done < self.headers.len() {
            let rest = self.headers.mmsg_from(done);
            // SAFETY: every header points into live buffers (`out`, inputs, the headers' own).
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                let (first, n) = self.headers.run(done);
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    // A segmented send is never dropped whole: its datagrams go again one by
                    // one (with the rest of the batch), each failing or not on its own.
                    _ if n > 1 => {
                        let s = &out.sends[first];
                        self.gso.refused(&e, s.to, s.wire_len());
                        self.build(out, first, &input, false);
                        done = 0;
                    }
                    _ => {
                        // The first datagram failed (unreachable, too large…): skip it only.
                        let to = out.sends[first].to;
                        tracing::debug!(error = %e, %to, "send failed");
                        Counters::add(&counters.send_errors, n as u64);
                        self.gso.resent(to, false, counters);
                        done += 1;
                    }
                }
            } else {
                let sent = r as usize;
                for i in done..done + sent {
                    let bytes = self.headers.mmsg_from(i)[0].msg_len;
                    let (first, n) = self.headers.run(i);
                    sent_run(counters, n, bytes as usize);
                    if n == 1 {
                        self.gso.resent(out.sends[first].to, true, counters);
                    }
                }
                done += sent;
            }
        }
    }
}

/// Counts a send the kernel took: `datagrams` datagrams (more than one if segmented), `bytes`.
fn sent_run(counters: &Counters, datagrams: usize, bytes: usize) {
    Counters::add(&counters.sent, datagrams as u64);
    Counters::add(&counters.sent_bytes, bytes as u64);
    if datagrams > 1 {
        Counters::add(&counters.segmented_sends, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boundary that serves every address but those that are never one.
    fn open() -> Arc<Boundary> {
        Boundary::new(crate::destination::Policy::open())
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
            let mut out = Out::default();
            let to = rx.local_addr().unwrap();
            for i in 0..10u8 {
                let start = out.buf.len();
                out.buf.extend(std::iter::repeat_n(i, 1452));
                out.reply(to, start, crate::out::Kind::Reply, true);
            }
            let c = Counters::default();
            let mut sender = Sender::new(&tx, true, &open()).unwrap();
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
        let mut out = Out::default();
        let to = rx.local_addr().unwrap();
        for i in 0..12u8 {
            let start = out.buf.len();
            out.buf
                .extend(std::iter::repeat_n(i, if i == 11 { 40 } else { 100 }));
            out.reply(to, start, crate::out::Kind::Reply, true);
        }
        let c = Counters::default();
        let log = Log::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let mut sender = Sender::new(&tx, true, &open()).unwrap();
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
    /// with `router`; its address, stop flag and counters.
    fn refusing_worker(
        router: Box<dyn Decide>,
    ) -> (Worker, SocketAddr, Arc<AtomicBool>, Arc<Counters>) {
        let socket = bind_worker_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        set_int_option(&socket, libc::SOL_SOCKET, libc::SO_NO_CHECK).unwrap();
        let relay = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let w = Worker {
            index: 0,
            socket,
            router,
            clock: Clock::default(),
            stop: stop.clone(),
            counters: counters.clone(),
            max_datagram: 1500,
            inbox: None,
            cpu: None,
            gso: true,
            gro: false,
            boundary: open(),
        };
        (w, relay, stop, counters)
    }

    /// Protocol logic for backend tests: every datagram goes on, three times, to `to`.
    struct Thrice {
        to: SocketAddr,
    }

    impl Decide for Thrice {
        fn datagram(&mut self, d: &mut [u8], _: SocketAddr, _: Now, out: &mut Out) {
            for _ in 0..3 {
                out.forward_input(self.to, 0..d.len());
            }
        }
        fn truncated(&mut self, _: usize, _: SocketAddr, _: Now, _: &mut Out) {}
        fn mapped_source(&mut self, _: usize) {}
    }

    #[test]
    fn both_backends_send_a_refused_run_again_datagram_by_datagram() {
        for backend in [&mmsg::Mmsg as &dyn Backend, &uring::Uring] {
            if backend.name() == "uring" && uring::probe().is_err() {
                println!("SKIPPED the uring half: io_uring unavailable here");
                continue;
            }
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let to = rx.local_addr().unwrap();
            let (w, relay, stop, counters) = refusing_worker(Box::new(Thrice { to }));
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
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
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
        fn datagram(&mut self, d: &mut [u8], _: SocketAddr, _: Now, out: &mut Out) {
            let to = [self.to, self.to, self.to, self.other, self.to];
            for (tag, to) in to.into_iter().enumerate() {
                let start = out.buf.len();
                out.buf.push(tag as u8);
                out.buf.extend_from_slice(d);
                out.reply(to, start, crate::out::Kind::Reply, true);
            }
        }
        fn truncated(&mut self, _: usize, _: SocketAddr, _: Now, _: &mut Out) {}
        fn mapped_source(&mut self, _: usize) {}
    }

    #[test]
    fn a_refused_run_is_sent_again_and_with_mmsg_in_its_place() {
        for backend in [&mmsg::Mmsg as &dyn Backend, &uring::Uring] {
            if backend.name() == "uring" && uring::probe().is_err() {
                println!("SKIPPED the uring half: io_uring unavailable here");
                continue;
            }
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let other = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (w, relay, stop, _) = refusing_worker(Box::new(Interleaved {
                to: rx.local_addr().unwrap(),
                other: other.local_addr().unwrap(),
            }));
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
                let mut out = Out::default();
                for i in 0..10u8 {
                    let start = out.buf.len();
                    out.buf.extend(std::iter::repeat_n(i, 1200));
                    out.reply(to, start, crate::out::Kind::Reply, true);
                }
                out
            };
            let c = Counters::default();
            let mut sender = Sender::new(&tx, true, &open()).unwrap();
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
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
}
