//! Enough TURN (RFC 8656) to drive a TURN server such as coturn with the same pairs, payloads
//! and window as the relay: each virtual peer allocates with long-term credentials (RFC 8489
//! §9.2: a first Allocate draws 401 with REALM and NONCE; the second carries USERNAME, REALM,
//! NONCE and MESSAGE-INTEGRITY, HMAC-SHA1 keyed by MD5(username:realm:password)), then binds a
//! channel to its partner's relayed address (which also installs the permission), and sends
//! ChannelData. The server takes A's ChannelData from A's allocation to B's relayed address, and
//! B's allocation, whose channel is bound to A's, hands it to B as ChannelData: two chat peers
//! behind symmetric NATs meeting on one TURN server.
//!
//! During a run a [`Keeper`] refreshes allocations, channels and permissions before they
//! lapse, and at its end [`close`] releases the allocations (Refresh with LIFETIME 0), so that
//! rounds of a comparison do not pile allocations up on the server.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::net::RecvBatch;

mod message;

use message::{Auth, REFRESH, allocate, channel_bind, long_term_key, parse_response, refresh};
pub use message::{
    CHANNEL, CHANNEL_HEADER, Credentials, Response, channel_data, parse_credentials,
};

/// The RFC's permission lifetime, which no response tells: refreshes come at least at half it.
const PERMISSION_LIFETIME: u32 = 300;
/// A request not answered after this long is sent again, the same bytes.
const RETRANSMIT: Duration = Duration::from_millis(500);

/// Where a peer's setup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The first Allocate, to learn the realm and nonce.
    Ask,
    /// The signed Allocate.
    Allocate,
    /// Allocated; waits for its partner's relayed address.
    Allocated,
    /// The ChannelBind to the partner.
    Bind,
    /// Bound.
    Done,
}

/// One virtual peer's TURN state.
#[derive(Debug, Clone)]
pub struct Session {
    auth: Option<Auth>,
    /// Its allocation's relayed address.
    pub relayed: Option<SocketAddr>,
    /// The lifetime the server granted, in seconds.
    pub lifetime: u32,
    step: Step,
    /// The request awaiting its answer.
    pending: Option<Pending>,
    /// Whether it moved to a socket of its own after its first was refused.
    moved: bool,
}

/// A request awaiting its answer.
#[derive(Debug, Clone)]
struct Pending {
    /// Its transaction.
    id: [u8; 12],
    /// Its bytes, sent again as they are.
    bytes: Vec<u8>,
    /// When it last went; `None` before it first does.
    sent: Option<Instant>,
}

impl Pending {
    fn new(id: [u8; 12], bytes: Vec<u8>) -> Pending {
        Pending {
            id,
            bytes,
            sent: None,
        }
    }

    /// Whether it is time to send it (again).
    fn due(&self, now: Instant) -> bool {
        self.sent.is_none_or(|t| now.duration_since(t) > RETRANSMIT)
    }
}

/// Transaction ids: the peer, a counter and a per-run salt, so that ids never repeat in a run
/// nor, likely, across runs against one server.
struct Ids {
    salt: [u8; 4],
    n: u32,
}

impl Ids {
    fn new() -> Ids {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ids {
            salt: (t ^ std::process::id().rotate_left(16)).to_be_bytes(),
            n: 0,
        }
    }

    fn next(&mut self, peer: usize) -> [u8; 12] {
        self.n = self.n.wrapping_add(1);
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&(peer as u32).to_be_bytes());
        id[4..8].copy_from_slice(&self.n.to_be_bytes());
        id[8..].copy_from_slice(&self.salt);
        id
    }
}

fn failed(target: SocketAddr, what: &str, code: u16, reason: &str) -> String {
    let hint = match code {
        401 => " (wrong username or password for the realm?)",
        403 => {
            " (a TURN server refuses loopback peers unless told: coturn's --allow-loopback-peers)"
        }
        437 => " (an allocation already exists for this address)",
        486 => " (the user's allocation quota: coturn's --user-quota)",
        508 => " (no relay ports left: widen coturn's --min-port/--max-port)",
        _ => "",
    };
    format!("the TURN server at {target} refused {what}: {code} {reason}{hint}")
}

fn io_error(target: SocketAddr, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        format!("the TURN server at {target} is unreachable: nothing listens on that port")
    } else {
        format!("talking to {target}: {e}")
    }
}

/// Allocates for every socket and binds peer `i`'s channel to peer `i ^ 1`'s relayed address;
/// gives up after `timeout`, releasing what it allocated.
pub fn setup(
    target: SocketAddr,
    socks: &mut [UdpSocket],
    creds: &Credentials,
    timeout: Duration,
) -> Result<Vec<Session>, String> {
    let mut peers: Vec<Session> = (0..socks.len())
        .map(|_| Session {
            auth: None,
            relayed: None,
            lifetime: 600,
            step: Step::Ask,
            pending: None,
            moved: false,
        })
        .collect();
    match set_up(target, socks, creds, timeout, &mut peers) {
        Ok(()) => Ok(peers),
        Err(e) => {
            close(socks, &peers, Duration::from_millis(300));
            Err(e)
        }
    }
}

fn set_up(
    target: SocketAddr,
    socks: &mut [UdpSocket],
    creds: &Credentials,
    timeout: Duration,
    peers: &mut [Session],
) -> Result<(), String> {
    let start = Instant::now();
    let mut ids = Ids::new();
    let mut rx = RecvBatch::new(2048);
    loop {
        let done = peers.iter().filter(|p| p.step == Step::Done).count();
        if done == peers.len() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let allocated = peers.iter().filter(|p| p.relayed.is_some()).count();
            return Err(format!(
                "the TURN server at {target} allocated for {allocated} and bound channels for \
                 {done} of {} peers in {timeout:?}: is it a TURN server, and is the address right?",
                peers.len()
            ));
        }
        // Start what each peer's step calls for; send again what went unanswered.
        let now = Instant::now();
        for i in 0..peers.len() {
            let partner = peers[i ^ 1].relayed;
            let p = &mut peers[i];
            if p.pending.is_none() {
                let id = ids.next(i);
                let m = match (p.step, &p.auth, partner) {
                    (Step::Ask, _, _) => Some(allocate(&id, None)),
                    (Step::Allocate, Some(a), _) => Some(allocate(&id, Some(a))),
                    (Step::Allocated, Some(a), Some(to)) => {
                        p.step = Step::Bind;
                        Some(channel_bind(&id, a, to))
                    }
                    (Step::Bind, Some(a), Some(to)) => Some(channel_bind(&id, a, to)),
                    _ => None,
                };
                p.pending = m.map(|m| Pending::new(id, m));
            }
            if let Some(q) = p.pending.as_mut().filter(|q| q.due(now)) {
                // A full socket buffer (WouldBlock) is retried at the next pass.
                match socks[i].send(&q.bytes) {
                    Ok(_) => q.sent = Some(now),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io_error(target, e)),
                }
            }
        }
        let mut heard = false;
        for i in 0..socks.len() {
            let n = rx.recv(&socks[i]).map_err(|e| io_error(target, e))?;
            for k in 0..n {
                let Some(r) = parse_response(rx.get(k)) else {
                    continue;
                };
                let p = &mut peers[i];
                if p.pending.as_ref().is_none_or(|q| q.id != r.txid) {
                    continue;
                }
                p.pending = None;
                heard = true;
                match (p.step, r.success, &r.error) {
                    (Step::Ask | Step::Allocate, true, _) => {
                        p.relayed = r.relayed;
                        p.lifetime = r.lifetime.unwrap_or(600);
                        p.step = if p.relayed.is_some() {
                            Step::Allocated
                        } else {
                            return Err(format!(
                                "the TURN server at {target} allocated without a relayed address"
                            ));
                        };
                    }
                    (Step::Ask, false, Some((401, _))) => {
                        let (Some(realm), Some(nonce)) = (r.realm, r.nonce) else {
                            return Err(format!(
                                "the TURN server at {target} asked for credentials without a \
                                 realm and nonce"
                            ));
                        };
                        p.auth = Some(Auth {
                            key: long_term_key(creds, &realm),
                            user: creds.user.clone(),
                            realm,
                            nonce,
                        });
                        p.step = Step::Allocate;
                    }
                    // A stale nonce: the same request again under the new one.
                    (_, false, Some((438, _))) => {
                        if let (Some(a), Some(nonce)) = (&mut p.auth, r.nonce) {
                            a.nonce = nonce;
                        }
                    }
                    (Step::Bind, true, _) => p.step = Step::Done,
                    // Its port is one an earlier run's allocation still holds (the kernel gave
                    // it again; coturn keeps a released 5-tuple a while): a port of its own.
                    (Step::Ask | Step::Allocate, false, Some((437, _))) if !p.moved => {
                        p.moved = true;
                        p.step = Step::Ask;
                        p.auth = None;
                        socks[i] =
                            crate::net::peer_socket(target).map_err(|e| io_error(target, e))?;
                    }
                    (step, _, e) => {
                        let (code, reason) = e.clone().unwrap_or((0, "no error code".into()));
                        let what = match step {
                            Step::Bind => "a ChannelBind",
                            _ => "an Allocate",
                        };
                        return Err(failed(target, what, code, &reason));
                    }
                }
            }
        }
        if !heard {
            std::thread::yield_now();
        }
    }
}

/// Keeps allocations, channels and permissions alive through a run: every peer refreshes its
/// allocation and binds its channel again (which refreshes the permission too) at half the
/// shortest of the lifetimes granted and the permission's 300 s.
pub struct Keeper {
    target: SocketAddr,
    sessions: Vec<Session>,
    partners: Vec<SocketAddr>,
    /// Per peer: when its next refresh is due, and its requests awaiting answers.
    due: Vec<Instant>,
    waiting: Vec<Vec<Pending>>,
    ids: Ids,
    next_check: Instant,
    /// Refresh and ChannelBind requests sent to keep sessions alive (not counting resends).
    pub refreshes: u64,
    /// Refresh or ChannelBind requests the server refused (other than for a stale nonce).
    pub refused: u64,
}

impl Keeper {
    /// Keeps `sessions` (as [`setup`] left them) alive.
    pub fn new(target: SocketAddr, sessions: Vec<Session>) -> Keeper {
        let now = Instant::now();
        let partners = (0..sessions.len())
            .map(|i| sessions[i ^ 1].relayed.unwrap_or(target))
            .collect();
        let due = sessions
            .iter()
            .map(|s| now + Self::interval(s.lifetime))
            .collect();
        Keeper {
            target,
            waiting: vec![Vec::new(); sessions.len()],
            sessions,
            partners,
            due,
            ids: Ids::new(),
            next_check: now,
            refreshes: 0,
            refused: 0,
        }
    }

    fn interval(lifetime: u32) -> Duration {
        Duration::from_secs_f64(f64::from(lifetime.clamp(2, PERMISSION_LIFETIME)) / 2.0)
    }

    /// Whether peer `i` awaits an answer (so its socket must be read).
    pub fn awaits(&self, i: usize) -> bool {
        !self.waiting[i].is_empty()
    }

    /// Sends the refreshes that are due and again those unanswered; cheap when nothing is.
    pub fn tick(&mut self, socks: &[UdpSocket]) -> Result<(), String> {
        let now = Instant::now();
        if now < self.next_check {
            return Ok(());
        }
        self.next_check = now + Duration::from_millis(50);
        for (i, sock) in socks.iter().enumerate() {
            if self.waiting[i].is_empty() && now >= self.due[i] {
                let Some(auth) = &self.sessions[i].auth else {
                    continue;
                };
                let a = self.ids.next(i);
                let b = self.ids.next(i);
                let ra = refresh(&a, auth, self.sessions[i].lifetime);
                let rb = channel_bind(&b, auth, self.partners[i]);
                self.waiting[i].push(Pending::new(a, ra));
                self.waiting[i].push(Pending::new(b, rb));
                self.refreshes += 2;
            }
            for q in self.waiting[i].iter_mut().filter(|q| q.due(now)) {
                // A full socket buffer (WouldBlock) is retried at the next tick.
                match sock.send(&q.bytes) {
                    Ok(_) => q.sent = Some(now),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io_error(self.target, e)),
                }
            }
        }
        Ok(())
    }

    /// Reads datagram `d` that peer `i` received and was not load: the answer to a refresh?
    pub fn on_datagram(&mut self, i: usize, d: &[u8]) {
        let Some(r) = parse_response(d) else { return };
        let Some(k) = self.waiting[i].iter().position(|q| q.id == r.txid) else {
            return;
        };
        self.waiting[i].swap_remove(k);
        let stale = r.error.as_ref().is_some_and(|e| e.0 == 438);
        if stale {
            // The same request under the new nonce, at once.
            let lifetime = self.sessions[i].lifetime;
            if let (Some(a), Some(nonce)) = (&mut self.sessions[i].auth, r.nonce) {
                a.nonce = nonce;
                let id = self.ids.next(i);
                let m = if r.method == REFRESH {
                    refresh(&id, a, lifetime)
                } else {
                    channel_bind(&id, a, self.partners[i])
                };
                self.waiting[i].push(Pending::new(id, m));
                self.next_check = Instant::now();
            }
            return;
        }
        if !r.success {
            self.refused += 1;
        }
        // A refresh may be granted longer than the allocation was (coturn answers 600 s to a
        // Refresh under a 2 s maximum), but channels and permissions, whose lifetimes no answer
        // tells, may be as short as the first grant: the interval only ever shortens.
        if let (REFRESH, Some(l)) = (r.method, r.lifetime) {
            let s = &mut self.sessions[i];
            s.lifetime = s.lifetime.min(l);
        }
        if self.waiting[i].is_empty() {
            self.due[i] = Instant::now() + Self::interval(self.sessions[i].lifetime);
        }
    }

    /// The sessions, for [`close`].
    pub fn into_sessions(self) -> Vec<Session> {
        self.sessions
    }
}

/// Releases every allocation (Refresh with LIFETIME 0), waiting at most `timeout` for the
/// answers; returns how many were released. Best effort: the server frees the rest when their
/// lifetime ends.
pub fn close(socks: &[UdpSocket], sessions: &[Session], timeout: Duration) -> usize {
    let start = Instant::now();
    let mut ids = Ids::new();
    let mut rx = RecvBatch::new(2048);
    let mut waiting: Vec<Option<([u8; 12], Vec<u8>)>> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = ids.next(i);
            let auth = s.auth.as_ref().filter(|_| s.relayed.is_some());
            auth.map(|a| (id, refresh(&id, a, 0)))
        })
        .collect();
    let mut released = 0;
    let mut last_send = None::<Instant>;
    while waiting.iter().any(Option::is_some) && start.elapsed() < timeout {
        if last_send.is_none_or(|t| t.elapsed() > Duration::from_millis(100)) {
            for (i, w) in waiting.iter().enumerate() {
                if let Some((_, m)) = w {
                    let _ = socks[i].send(m);
                }
            }
            last_send = Some(Instant::now());
        }
        let mut heard = false;
        for (i, s) in socks.iter().enumerate() {
            if waiting[i].is_none() {
                continue;
            }
            for k in 0..rx.recv(s).unwrap_or_default() {
                let Some(r) = parse_response(rx.get(k)) else {
                    continue;
                };
                if waiting[i].as_ref().is_some_and(|(id, _)| *id == r.txid) {
                    heard = true;
                    waiting[i] = None;
                    released += usize::from(r.success);
                }
            }
        }
        if !heard {
            std::thread::yield_now();
        }
    }
    released
}
