//! Socket set-up: the worker sockets (`SO_REUSEPORT`, buffers, the options whose control
//! messages the receive path reads), whether the kernel segments, CPU pinning, and the signal
//! that wakes a blocked worker.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::control::{UDP_GRO, UDP_SEGMENT};

/// How long a worker socket blocks in a receive, so that its worker looks at its stop flag at
/// least that often.
pub const POLL_MS: u64 = 100;

/// Whether this kernel takes `UDP_SEGMENT` on a UDP socket (Linux 4.18 and later).
pub fn udp_segment_supported() -> bool {
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

/// The signal that interrupts a worker's wait for datagrams, so that a pause (a takeover) need
/// not wait out [`POLL_MS`]: its handler does nothing, and a receive on a socket with
/// `SO_RCVTIMEO` (or `io_uring_enter`) returns `EINTR` whatever `SA_RESTART` says.
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn ignore(_: libc::c_int) {}

/// Installs the handler of `wake_signal` (once per process).
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
pub(crate) fn set_int_option(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<()> {
    set_int(sock, level, name, 1)
}

pub(crate) fn set_int(
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

/// `n` worker sockets on `addr`, joined in one `SO_REUSEPORT` group, failing with `AddrInUse`
/// if another socket holds `addr`, even one with `SO_REUSEPORT`, so two relays never silently
/// split one port's traffic. For port 0, a port no socket holds: the kernel's own choice for a
/// `SO_REUSEPORT` socket may be a port another such socket of the same user holds (sharing it is
/// allowed), so the port is chosen by a socket without the option, which conflicts with every
/// other, then released for the group, and chosen again should another socket take it between.
pub fn bind_group(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let mut tries = 0;
    loop {
        let port = free_port(addr)?;
        match (0..n).map(|_| bind_worker_socket(port)).collect() {
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && tries < 16 => {
                tries += 1;
            }
            r => return r,
        }
    }
}

/// `addr` if no socket holds it, or for port 0 a port no socket holds now.
fn free_port(addr: SocketAddr) -> io::Result<SocketAddr> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.bind(&addr.into())?;
    let bound = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))?;
    Ok(SocketAddr::new(addr.ip(), bound.port()))
}

/// A connected, non-blocking UDP socket at `local` (port 0: any) that talks only to `remote`
/// (a peer's, as the load generator's virtual peers have), with a receive buffer of
/// `recv_buffer` bytes asked for if given.
pub fn peer_socket(
    local: SocketAddr,
    remote: SocketAddr,
    recv_buffer: Option<usize>,
) -> io::Result<UdpSocket> {
    let s = Socket::new(
        Domain::for_address(remote),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if let Some(size) = recv_buffer {
        let _ = s.set_recv_buffer_size(size);
    }
    s.bind(&local.into())?;
    s.connect(&remote.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_never_gives_a_port_another_reuseport_group_holds() {
        // Groups that the kernel's own choice for a SO_REUSEPORT socket could have joined.
        let held: Vec<UdpSocket> = (0..32)
            .map(|_| bind_worker_socket("127.0.0.1:0".parse().unwrap()).unwrap())
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        for _ in 0..500 {
            let got = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
            let port = got[0].local_addr().unwrap().port();
            assert_eq!(got[1].local_addr().unwrap().port(), port, "one group");
            assert!(!ports.contains(&port), "{port} is held");
        }
        let taken = held[0].local_addr().unwrap();
        assert_eq!(
            bind_group(taken, 1).unwrap_err().kind(),
            io::ErrorKind::AddrInUse,
            "a port asked for by number that a group holds"
        );
    }
}
