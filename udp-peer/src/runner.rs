//! A thin shell around [`Peer`] on a real UDP socket: one thread, a blocking receive bounded by
//! the peer's next timeout, commands from a channel, events to a callback. What a host's
//! interfaces are (the peer's local candidates) is read here too.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::{ConnectError, Event, Peer, SendError, Status};

/// What the application asks of a running peer.
pub enum Command {
    /// Connect to a peer; the outcome goes back on the channel.
    Connect(String, std::sync::mpsc::Sender<Result<(), ConnectError>>),
    /// Send a message to a peer; the outcome goes back on the channel.
    Send(
        String,
        Vec<u8>,
        std::sync::mpsc::Sender<Result<(), SendError>>,
    ),
    /// Report the state.
    Status(std::sync::mpsc::Sender<Status>),
    /// Stop once every message sent is acknowledged, or after the time given.
    Finish(Duration),
}

/// How often the loop looks at its commands while nothing arrives.
const COMMAND_POLL: Duration = Duration::from_millis(20);

/// Runs `peer` on `sock` until the command channel closes or a `Finish` is done; each event goes
/// to `on_event`.
pub fn run(
    sock: &UdpSocket,
    peer: &mut Peer,
    commands: &Receiver<Command>,
    mut on_event: impl FnMut(Event),
) -> io::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut finish_by: Option<Instant> = None;
    loop {
        let now = Instant::now();
        loop {
            match commands.try_recv() {
                Ok(Command::Connect(name, reply)) => {
                    let _ = reply.send(peer.connect(&name, now));
                }
                Ok(Command::Send(name, text, reply)) => {
                    let _ = reply.send(peer.send(&name, &text, now));
                }
                Ok(Command::Status(reply)) => {
                    let _ = reply.send(peer.status());
                }
                Ok(Command::Finish(within)) => finish_by = Some(now + within),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        if let Some(by) = finish_by
            && (now >= by || peer.status().peers.iter().all(|p| p.unacked == 0))
        {
            return Ok(());
        }
        if peer.poll_timeout().is_some_and(|t| t <= now) {
            peer.handle_timeout(now);
        }
        while let Some(t) = peer.poll_transmit() {
            // A send that fails (no route yet, a peer's port closed) is one lost datagram:
            // the peer's own timers send again.
            let _ = sock.send_to(&t.bytes, t.to);
        }
        while let Some(e) = peer.poll_event() {
            on_event(e);
        }
        let wait = peer
            .poll_timeout()
            .map_or(COMMAND_POLL, |t| {
                t.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), COMMAND_POLL);
        sock.set_read_timeout(Some(wait))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => peer.handle(Instant::now(), from, &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// This host's addresses with `port`: the candidates a peer on the same network can reach.
/// Loopback and link-local addresses are left out.
pub fn local_addresses(port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family says its type.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        };
        if !ip.is_loopback() && !link_local {
            out.push(SocketAddr::new(ip, port));
        }
    }
    // SAFETY: `ifap` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out.dedup();
    out
}
