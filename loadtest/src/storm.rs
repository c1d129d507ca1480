//! A registration storm: N distinct peers register as fast as the relay acknowledges them.
//!
//! Peers share sockets when N exceeds what the file-descriptor limit allows (several names per
//! address are allowed by the protocol); readiness comes from epoll so that tens of thousands of
//! sockets cost nothing while idle.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget};
use relay_wire::read::{self, Message};
use serde::{Deserialize, Serialize};

use crate::drive::run_id;
use crate::net::{RecvBatch, peer_socket};
use crate::{proto, sys};

/// A storm's parameters.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// The relay.
    pub target: SocketAddr,
    /// Distinct peers to register.
    pub peers: usize,
    /// Sockets to spread them over (`None`: as many as the limit allows, up to one per peer).
    pub sockets: Option<usize>,
    /// Registrations awaiting their ack at most.
    pub window: usize,
    /// The relay's pid, for its resident memory.
    pub target_pid: Option<u32>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Draw a progress bar (only where stderr is a terminal).
    pub progress: bool,
    /// Give every peer an address of its own (see [`loopback_source`]), as real peers have,
    /// instead of sharing sockets: what the relay keeps per address is then kept per peer.
    pub distinct: bool,
}

/// What a storm measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StormReport {
    /// Peers registered (acknowledged).
    pub peers: usize,
    /// Sockets used.
    pub sockets: usize,
    /// Seconds from the first send to the last ack.
    pub seconds: f64,
    /// Acknowledged registrations per second.
    pub registrations_per_sec: f64,
    /// Registrations sent again after no ack came.
    pub resent: u64,
    /// The relay's resident memory before, in bytes.
    pub rss_before: Option<u64>,
    /// The relay's resident memory after, in bytes.
    pub rss_after: Option<u64>,
    /// `(rss_after - rss_before) / peers`.
    pub rss_bytes_per_peer: Option<f64>,
}

impl StormReport {
    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "registered {} peers over {} sockets in {:.2} s: {:.0} registrations/s ({} resent)\n",
            self.peers, self.sockets, self.seconds, self.registrations_per_sec, self.resent
        );
        if let (Some(b), Some(a), Some(p)) =
            (self.rss_before, self.rss_after, self.rss_bytes_per_peer)
        {
            s += &format!(
                "relay RSS {:.1} MiB -> {:.1} MiB: {p:.0} bytes per peer\n",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0
            );
        }
        s
    }
}

/// Sockets kept free for everything else the process opens.
const FD_RESERVE: u64 = sys::FD_RESERVE;
/// An unacknowledged registration is sent again after this long.
const RESEND_AFTER: Duration = Duration::from_millis(500);

/// Runs the storm.
pub fn run(cfg: &StormConfig) -> Result<StormReport, String> {
    if cfg.peers > 9_999_999 {
        return Err(format!("--peers {} is more than 9,999,999", cfg.peers));
    }
    if cfg.peers == 0 || cfg.window == 0 {
        return Err("--peers and --window must be at least 1".into());
    }
    if cfg.distinct {
        return run_distinct(cfg);
    }
    let limit = sys::raise_fd_limit();
    let room = limit.saturating_sub(FD_RESERVE) as usize;
    let sockets = match cfg.sockets {
        Some(s) if s as u64 + FD_RESERVE > limit => {
            return Err(format!(
                "--sockets {s} needs {} file descriptors but the limit is {limit}: raise it \
                 (ulimit -n {}) or ask for fewer sockets",
                s as u64 + FD_RESERVE,
                s as u64 + FD_RESERVE
            ));
        }
        Some(0) => return Err("--sockets must be at least 1".into()),
        Some(s) => s.min(cfg.peers),
        None => cfg.peers.min(room).min(20_000),
    };
    if sockets == 0 {
        return Err(format!(
            "the file-descriptor limit ({limit}) leaves no room for sockets: raise it (ulimit -n)"
        ));
    }
    let socks = (0..sockets)
        .map(|_| peer_socket(cfg.target))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot open {sockets} sockets: {e}"))?;
    let epoll = Epoll::new(&socks).map_err(|e| format!("epoll: {e}"))?;
    let rss_before = rss(cfg.target_pid);
    let id = run_tag();
    let name = |k: usize| peer_name(&id, k);
    let bar = progress_bar(cfg);
    let mut acked = vec![false; cfg.peers];
    let mut sent_at: Vec<Option<Instant>> = vec![None; cfg.peers];
    let (mut next, mut done, mut outstanding, mut resent) = (0usize, 0usize, 0usize, 0u64);
    let mut rx = RecvBatch::new(65_536);
    let mut resend_from = 0usize;
    let start = Instant::now();
    while done < cfg.peers {
        if start.elapsed() > cfg.timeout {
            return Err(format!(
                "only {done} of {} registrations were acknowledged within {:?}: a udp-relay \
                 limits new names per source (start it with --registration-rate 0, and \
                 --max-peers above --peers, for a storm)",
                cfg.peers, cfg.timeout
            ));
        }
        while outstanding < cfg.window && next < cfg.peers {
            send(&socks[next % sockets], &name(next), cfg.target)?;
            sent_at[next] = Some(Instant::now());
            next += 1;
            outstanding += 1;
        }
        let ready = epoll.wait(10).map_err(|e| format!("epoll: {e}"))?;
        if ready.is_empty() {
            // Nothing came back: send again what has waited too long (lost on the way).
            let now = Instant::now();
            for k in resend_from..next {
                if !acked[k] && sent_at[k].is_some_and(|t| now - t > RESEND_AFTER) {
                    send(&socks[k % sockets], &name(k), cfg.target)?;
                    sent_at[k] = Some(now);
                    resent += 1;
                }
            }
            while resend_from < next && acked[resend_from] {
                resend_from += 1;
            }
        }
        for i in ready {
            loop {
                let n = rx.recv(&socks[i]).map_err(|e| unreachable(cfg.target, e))?;
                if n == 0 {
                    break;
                }
                for j in 0..n {
                    let d = rx.get(j);
                    match reply(d, &id) {
                        Reply::Acked(k) if k < cfg.peers && !acked[k] => {
                            acked[k] = true;
                            done += 1;
                            outstanding = outstanding.saturating_sub(1);
                        }
                        Reply::Refused => return Err(refused(d)),
                        _ => {}
                    }
                }
            }
        }
        if done % 1024 == 0 {
            bar.set_position(done as u64);
        }
    }
    Ok(report(cfg, done, sockets, start, resent, rss_before, &bar))
}

fn rss(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| sys::process_rss(p).ok())
}

/// A tag unique per run, so that a storm's names are new to a relay that saw earlier ones.
fn run_tag() -> String {
    format!("{:06x}", fnv(run_id().as_bytes()) & 0xff_ffff)
}

/// Peer `k`'s name: 14 bytes ("3fa9c1-0000042"), the length of a typical chat handle.
fn peer_name(tag: &str, k: usize) -> String {
    format!("{tag}-{k:07}")
}

fn progress_bar(cfg: &StormConfig) -> ProgressBar {
    if cfg.progress {
        ProgressBar::with_draw_target(Some(cfg.peers as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    }
}

fn report(
    cfg: &StormConfig,
    done: usize,
    sockets: usize,
    start: Instant,
    resent: u64,
    rss_before: Option<u64>,
    bar: &ProgressBar,
) -> StormReport {
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let rss_after = rss(cfg.target_pid);
    StormReport {
        peers: done,
        sockets,
        seconds,
        registrations_per_sec: done as f64 / seconds,
        resent,
        rss_before,
        rss_after,
        rss_bytes_per_peer: rss_before
            .zip(rss_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / done as f64),
    }
}

/// Peer `k`'s own source address in the distinct-address storm: 127.1.0.0 onward (all of
/// 127.0.0.0/8 is loopback on Linux), so up to 9,999,999 peers stay within 127.1.0.0-127.153.x.x.
pub fn loopback_source(k: usize) -> SocketAddr {
    let k = k as u32 + (1 << 16);
    SocketAddr::from(([127, (k >> 16) as u8, (k >> 8) as u8, k as u8], 0))
}

/// The storm with an address per peer: each peer gets a socket bound to its own loopback
/// address, closed once its registration is acknowledged, so that at most `window` are open.
fn run_distinct(cfg: &StormConfig) -> Result<StormReport, String> {
    if !cfg.target.ip().is_loopback() || !cfg.target.is_ipv4() {
        return Err("--distinct-addresses needs a relay at an IPv4 loopback address".into());
    }
    let limit = sys::raise_fd_limit();
    let window = cfg
        .window
        .min(cfg.peers)
        .min(limit.saturating_sub(FD_RESERVE) as usize);
    if window == 0 {
        return Err(format!(
            "the file-descriptor limit ({limit}) leaves no room for sockets"
        ));
    }
    let open = |k: usize| -> Result<UdpSocket, String> {
        relay_udp::peer_socket(loopback_source(k), cfg.target, None)
            .map_err(|e| format!("a socket at {}: {e}", loopback_source(k)))
    };
    let epoll = Epoll::new(&[]).map_err(|e| format!("epoll: {e}"))?;
    let rss_before = rss(cfg.target_pid);
    let id = run_tag();
    let bar = progress_bar(cfg);
    // Slot i holds the socket of the peer it registers now, and when that peer last sent.
    let mut slots: Vec<Option<(usize, UdpSocket, Instant)>> = (0..window).map(|_| None).collect();
    let (mut next, mut done, mut resent) = (0usize, 0usize, 0u64);
    let mut rx = RecvBatch::new(4096);
    let start = Instant::now();
    let start_peer = |slot: &mut Option<(usize, UdpSocket, Instant)>,
                      i: usize,
                      next: &mut usize|
     -> Result<(), String> {
        *slot = None;
        if *next < cfg.peers {
            let s = open(*next)?;
            epoll.add(&s, i).map_err(|e| format!("epoll: {e}"))?;
            send(&s, &peer_name(&id, *next), cfg.target)?;
            *slot = Some((*next, s, Instant::now()));
            *next += 1;
        }
        Ok(())
    };
    for (i, slot) in slots.iter_mut().enumerate() {
        start_peer(slot, i, &mut next)?;
    }
    while done < cfg.peers {
        if start.elapsed() > cfg.timeout {
            return Err(format!(
                "only {done} of {} registrations were acknowledged within {:?}",
                cfg.peers, cfg.timeout
            ));
        }
        let ready = epoll.wait(10).map_err(|e| format!("epoll: {e}"))?;
        if ready.is_empty() {
            let now = Instant::now();
            for (k, s, at) in slots.iter_mut().flatten() {
                if now - *at > RESEND_AFTER {
                    send(s, &peer_name(&id, *k), cfg.target)?;
                    *at = now;
                    resent += 1;
                }
            }
        }
        for i in ready {
            let Some((k, s, _)) = &slots[i] else { continue };
            let k = *k;
            let mut acked = false;
            loop {
                let n = rx.recv(s).map_err(|e| unreachable(cfg.target, e))?;
                if n == 0 {
                    break;
                }
                for j in 0..n {
                    let d = rx.get(j);
                    match reply(d, &id) {
                        Reply::Acked(a) if a == k => acked = true,
                        Reply::Refused => return Err(refused(d)),
                        _ => {}
                    }
                }
            }
            if acked {
                // Closing the socket takes it out of the epoll set.
                done += 1;
                start_peer(&mut slots[i], i, &mut next)?;
                if done % 1024 == 0 {
                    bar.set_position(done as u64);
                }
            }
        }
    }
    Ok(report(cfg, done, window, start, resent, rss_before, &bar))
}

fn send(sock: &UdpSocket, name: &str, target: SocketAddr) -> Result<(), String> {
    match sock.send(&proto::register(name)) {
        Ok(_) => Ok(()),
        // A full send buffer: the ack wait and resend logic covers it.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(unreachable(target, e)),
    }
}

fn unreachable(target: SocketAddr, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        format!("the relay at {target} is unreachable: nothing listens on that port")
    } else {
        format!("talking to {target}: {e}")
    }
}

/// FNV-1a, to fold the run id into a few hex digits.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What a datagram a storm's peer receives says.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// A `register_ack` of one of this run's names: the peer's index.
    Acked(usize),
    /// An `error`: the relay refused a registration.
    Refused,
    /// `rate_limited`: the relay asks for the registration later (a cluster's claims waiting
    /// fill the peer's share); it is sent again as a lost one is.
    Later,
    /// Anything else (the `peer_list` that follows an ack, another run's ack).
    Other,
}

/// Reads `d` (with `relay_wire::read`) for the storm tagged `tag`.
fn reply(d: &[u8], tag: &str) -> Reply {
    match read::message(d) {
        Ok(Message::RegisterAck {
            full: Some(ack), ..
        }) => peer_index(&ack.peer_name, tag).map_or(Reply::Other, Reply::Acked),
        Ok(Message::Error { code, .. }) if code == "rate_limited" => Reply::Later,
        Ok(Message::Error { .. }) => Reply::Refused,
        _ => Reply::Other,
    }
}

/// The index `k` of a [`peer_name`] of the storm tagged `tag`.
fn peer_index(name: &str, tag: &str) -> Option<usize> {
    let digits = name.strip_prefix(tag)?.strip_prefix('-')?;
    if digits.len() != 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn refused(d: &[u8]) -> String {
    format!(
        "the relay refused a registration: {}",
        String::from_utf8_lossy(d)
    )
}

/// Level-triggered readiness for many sockets.
struct Epoll {
    fd: i32,
}

impl Epoll {
    fn new(socks: &[UdpSocket]) -> std::io::Result<Epoll> {
        // SAFETY: plain system calls on descriptors we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ep = Epoll { fd };
        for (i, s) in socks.iter().enumerate() {
            ep.add(s, i)?;
        }
        Ok(ep)
    }

    /// Watches `s`, reporting it as index `i`.
    fn add(&self, s: &UdpSocket, i: usize) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: a plain system call on descriptors we own; `ev` outlives it.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Indices of readable sockets, waiting up to `ms`.
    fn wait(&self, ms: i32) -> std::io::Result<Vec<usize>> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 1024];
        // SAFETY: the buffer holds 1024 events.
        let n = unsafe { libc::epoll_wait(self.fd, evs.as_mut_ptr(), 1024, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        Ok(evs[..n as usize].iter().map(|e| e.u64 as usize).collect())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we created.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peer_index_of_an_ack() {
        let d = br#"{"type":"register_ack","status":"success","your_address":"127.0.0.1:1","server_time":1.0,"peer_name":"ltab-0000042","session":"x"}"#;
        assert_eq!(reply(d, "ltab"), Reply::Acked(42));
        assert_eq!(reply(d, "ltcd"), Reply::Other);
        assert_eq!(reply(d, "lta"), Reply::Other);
        let mut d = Vec::new();
        let name = peer_name("3fa9c1", 9_999_999);
        relay_wire::reply::register_ack(&mut d, loopback_source(7), 2.5, &name, "s");
        assert_eq!(reply(&d, "3fa9c1"), Reply::Acked(9_999_999));
        d.clear();
        relay_wire::reply::register_ack_short(&mut d, loopback_source(7));
        assert_eq!(
            reply(&d, "3fa9c1"),
            Reply::Other,
            "the short ack names nobody"
        );
        d.clear();
        relay_wire::reply::peer_list(&mut d, [name.as_str()], 1, None);
        assert_eq!(reply(&d, "3fa9c1"), Reply::Other);
        d.clear();
        relay_wire::reply::error(&mut d, relay_wire::reply::ErrorCode::RateLimited, "", 100);
        assert_eq!(reply(&d, "3fa9c1"), Reply::Later, "asked to come back");
        d.clear();
        relay_wire::reply::error(&mut d, relay_wire::reply::ErrorCode::NameInUse, "", 100);
        assert_eq!(reply(&d, "3fa9c1"), Reply::Refused);
        assert_eq!(
            reply(b"{\"type\":\"error\"", "3fa9c1"),
            Reply::Other,
            "cut short"
        );
    }

    #[test]
    fn each_peer_of_a_distinct_storm_has_its_own_loopback_address() {
        assert_eq!(loopback_source(0), "127.1.0.0:0".parse().unwrap());
        assert_eq!(
            loopback_source(9_999_999),
            "127.153.150.127:0".parse().unwrap()
        );
        let seen: std::collections::HashSet<_> = (0..70_000).map(loopback_source).collect();
        assert_eq!(seen.len(), 70_000);
    }
}
