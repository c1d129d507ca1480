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

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

use crate::net::RecvBatch;

/// STUN's magic cookie.
const COOKIE: u32 = 0x2112_A442;
/// A STUN header's length.
const HEADER: usize = 20;

/// Methods (RFC 8656 §17) and classes (RFC 8489 §5): a message type is the method with the
/// class bits (0x0010 indication, 0x0100 success, 0x0110 error) woven in.
const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const CHANNEL_BIND: u16 = 0x0009;
const SUCCESS: u16 = 0x0100;
const ERROR: u16 = 0x0110;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
const ATTR_LIFETIME: u16 = 0x000D;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;

/// The channel every peer binds to its partner: numbers are per allocation, and each peer has
/// one channel, so one number serves all (0x4000 is the first of the range).
pub const CHANNEL: u16 = 0x4000;
/// A ChannelData message's header: the channel number and the payload's length.
pub const CHANNEL_HEADER: usize = 4;
/// The RFC's permission lifetime, which no response tells: refreshes come at least at half it.
const PERMISSION_LIFETIME: u32 = 300;
/// A request not answered after this long is sent again, the same bytes.
const RETRANSMIT: Duration = Duration::from_millis(500);

/// A TURN user's long-term credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub user: String,
    /// The password.
    pub pass: String,
}

/// Parses `USER:PASS` (the password may hold colons; the username may not).
pub fn parse_credentials(s: &str) -> Result<Credentials, String> {
    match s.split_once(':') {
        Some((user, pass)) if !user.is_empty() => Ok(Credentials {
            user: user.into(),
            pass: pass.into(),
        }),
        _ => Err(format!("`{s}` is not USER:PASS")),
    }
}

/// The long-term key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2; no SASLprep, so
/// credentials are taken as given).
pub fn long_term_key(c: &Credentials, realm: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(c.user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(c.pass.as_bytes());
    h.finalize().into()
}

/// A STUN message being written.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(ty: u16, txid: &[u8; 12]) -> Message {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&ty.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&COOKIE.to_be_bytes());
        buf.extend_from_slice(txid);
        Message { buf }
    }

    fn set_length(&mut self, extra: usize) {
        let len = (self.buf.len() - HEADER + extra) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute, zero-padded to four bytes.
    fn attr(mut self, ty: u16, value: &[u8]) -> Message {
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self.set_length(0);
        self
    }

    /// Appends an XOR-…-ADDRESS attribute (RFC 8489 §14.2).
    fn xor_addr(self, ty: u16, a: SocketAddr) -> Message {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&COOKIE.to_be_bytes());
        key[4..].copy_from_slice(&self.buf[8..HEADER]);
        let mut v = vec![0];
        let port = a.port() ^ (COOKIE >> 16) as u16;
        match a.ip() {
            IpAddr::V4(ip) => {
                v.push(1);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(key).map(|(b, k)| b ^ k));
            }
            IpAddr::V6(ip) => {
                v.push(2);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(key).map(|(b, k)| b ^ k));
            }
        }
        self.attr(ty, &v)
    }

    /// Appends USERNAME, REALM, NONCE and MESSAGE-INTEGRITY: the HMAC-SHA1 of the message so
    /// far, its length already counting the integrity attribute (RFC 8489 §14.5).
    fn sign(self, auth: &Auth) -> Vec<u8> {
        let mut m = self
            .attr(ATTR_USERNAME, auth.user.as_bytes())
            .attr(ATTR_REALM, auth.realm.as_bytes())
            .attr(ATTR_NONCE, &auth.nonce);
        m.integrity(&auth.key)
    }

    fn integrity(&mut self, key: &[u8]) -> Vec<u8> {
        self.set_length(24);
        // HMAC takes a key of any length: it cannot fail.
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.buf
            .extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&tag);
        std::mem::take(&mut self.buf)
    }
}

/// A response to one of our requests, as far as a client needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The method (ALLOCATE, REFRESH, CHANNEL_BIND…).
    pub method: u16,
    /// A success response (otherwise an error response).
    pub success: bool,
    /// The transaction it answers.
    pub txid: [u8; 12],
    /// ERROR-CODE: the code (e.g. 401) and its reason phrase.
    pub error: Option<(u16, String)>,
    /// REALM.
    pub realm: Option<String>,
    /// NONCE.
    pub nonce: Option<Vec<u8>>,
    /// XOR-RELAYED-ADDRESS.
    pub relayed: Option<SocketAddr>,
    /// LIFETIME, in seconds.
    pub lifetime: Option<u32>,
}

/// Reads a STUN success or error response; `None` for anything else (ChannelData, requests,
/// indications, malformed messages).
pub fn parse_response(d: &[u8]) -> Option<Response> {
    let head = d.get(..HEADER)?;
    let ty = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if ty & 0xC000 != 0 || head[4..8] != COOKIE.to_be_bytes() || d.len() < HEADER + len {
        return None;
    }
    let class = ty & 0x0110;
    if class != SUCCESS && class != ERROR {
        return None;
    }
    let mut r = Response {
        method: ty & !0x0110,
        success: class == SUCCESS,
        txid: head[8..HEADER].try_into().ok()?,
        ..Response::default()
    };
    let body = &d[HEADER..HEADER + len];
    let mut at = 0;
    while let Some(h) = body.get(at..at + 4) {
        let aty = u16::from_be_bytes([h[0], h[1]]);
        let alen = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let v = body.get(at + 4..at + 4 + alen)?;
        match aty {
            ATTR_ERROR_CODE if v.len() >= 4 => {
                let code = u16::from(v[2] & 7) * 100 + u16::from(v[3]);
                r.error = Some((code, String::from_utf8_lossy(&v[4..]).into_owned()));
            }
            ATTR_REALM => r.realm = Some(String::from_utf8_lossy(v).into_owned()),
            ATTR_NONCE => r.nonce = Some(v.to_vec()),
            ATTR_LIFETIME if v.len() == 4 => {
                r.lifetime = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            ATTR_XOR_RELAYED_ADDRESS => r.relayed = xor_address(v, &r.txid),
            _ => {}
        }
        at += (4 + alen).next_multiple_of(4);
    }
    Some(r)
}

fn xor_address(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&COOKIE.to_be_bytes());
    key[4..].copy_from_slice(txid);
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (COOKIE >> 16) as u16;
    let ip: IpAddr = match (v[1], v.len()) {
        (1, 8) => <[u8; 4]>::try_from(&v[4..8])
            .ok()
            .map(|o| std::array::from_fn::<u8, 4, _>(|i| o[i] ^ key[i]))?
            .into(),
        (2, 20) => <[u8; 16]>::try_from(&v[4..20])
            .ok()
            .map(|o| std::array::from_fn::<u8, 16, _>(|i| o[i] ^ key[i]))?
            .into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Appends a ChannelData message for `channel` carrying `payload` (over UDP, unpadded).
pub fn channel_data(buf: &mut Vec<u8>, channel: u16, payload: &[u8]) {
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    buf.extend_from_slice(payload);
}

/// What signs a peer's requests once the server has named its realm and nonce.
#[derive(Debug, Clone)]
struct Auth {
    user: String,
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

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
    socks: &[UdpSocket],
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
    socks: &[UdpSocket],
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
        for (i, s) in socks.iter().enumerate() {
            let n = rx.recv(s).map_err(|e| io_error(target, e))?;
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

fn allocate(id: &[u8; 12], auth: Option<&Auth>) -> Vec<u8> {
    // REQUESTED-TRANSPORT: UDP (17), then three reserved bytes.
    let m = Message::new(ALLOCATE, id).attr(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    match auth {
        Some(a) => m.sign(a),
        None => m.buf,
    }
}

fn channel_bind(id: &[u8; 12], auth: &Auth, peer: SocketAddr) -> Vec<u8> {
    let mut number = CHANNEL.to_be_bytes().to_vec();
    number.extend_from_slice(&[0, 0]);
    Message::new(CHANNEL_BIND, id)
        .attr(ATTR_CHANNEL_NUMBER, &number)
        .xor_addr(ATTR_XOR_PEER_ADDRESS, peer)
        .sign(auth)
}

fn refresh(id: &[u8; 12], auth: &Auth, lifetime: u32) -> Vec<u8> {
    Message::new(REFRESH, id)
        .attr(ATTR_LIFETIME, &lifetime.to_be_bytes())
        .sign(auth)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.4: a request with long-term authentication (USERNAME, NONCE, REALM,
    /// MESSAGE-INTEGRITY), username and password as SASLprep leaves them.
    const RFC_5769_LONG_TERM: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
        0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
        0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
        0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
        0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
        0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
        0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];

    #[test]
    fn message_integrity_matches_rfc_5769() {
        let creds = Credentials {
            user: "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}".into(),
            pass: "TheMatrIX".into(),
        };
        let txid: [u8; 12] = RFC_5769_LONG_TERM[8..20].try_into().unwrap();
        let key = long_term_key(&creds, "example.org");
        let mut m = Message::new(0x0001, &txid)
            .attr(ATTR_USERNAME, creds.user.as_bytes())
            .attr(ATTR_NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
            .attr(ATTR_REALM, b"example.org");
        assert_eq!(m.integrity(&key), RFC_5769_LONG_TERM);
    }

    #[test]
    fn responses_parse_and_garbage_does_not() {
        let txid = [7u8; 12];
        let relayed: SocketAddr = "127.0.0.1:49152".parse().unwrap();
        let m = Message::new(ALLOCATE | SUCCESS, &txid)
            .xor_addr(ATTR_XOR_RELAYED_ADDRESS, relayed)
            .attr(ATTR_LIFETIME, &600u32.to_be_bytes());
        let r = parse_response(&m.buf).unwrap();
        assert_eq!((r.method, r.success, r.txid), (ALLOCATE, true, txid));
        assert_eq!((r.relayed, r.lifetime), (Some(relayed), Some(600)));
        let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let m = Message::new(ALLOCATE | SUCCESS, &txid).xor_addr(ATTR_XOR_RELAYED_ADDRESS, v6);
        assert_eq!(parse_response(&m.buf).unwrap().relayed, Some(v6));
        let mut code = vec![0, 0, 4, 1];
        code.extend_from_slice(b"Unauthorized");
        let m = Message::new(ALLOCATE | ERROR, &txid)
            .attr(ATTR_ERROR_CODE, &code)
            .attr(ATTR_REALM, b"test")
            .attr(ATTR_NONCE, b"abc");
        let r = parse_response(&m.buf).unwrap();
        assert_eq!(r.error, Some((401, "Unauthorized".into())));
        assert_eq!(
            (r.realm.as_deref(), r.nonce.as_deref()),
            (Some("test"), Some(&b"abc"[..]))
        );
        // Cut anywhere, or a request, or ChannelData: nothing, and no panic.
        for n in 0..m.buf.len() {
            let _ = parse_response(&m.buf[..n]);
        }
        assert_eq!(parse_response(&Message::new(ALLOCATE, &txid).buf), None);
        let mut cd = Vec::new();
        channel_data(&mut cd, CHANNEL, b"lt 0");
        assert_eq!(parse_response(&cd), None);
    }

    #[test]
    fn credentials_parse() {
        let c = parse_credentials("u:p:q").unwrap();
        assert_eq!((c.user.as_str(), c.pass.as_str()), ("u", "p:q"));
        assert!(parse_credentials("nopass").is_err());
        assert!(parse_credentials(":p").is_err());
    }
}
