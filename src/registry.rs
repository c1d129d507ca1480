//! The peer registry: who is registered, where, since when, and who watches whom.
//!
//! Shared by all workers and the reaper. Sharded (dashmap) so that workers rarely meet on a lock;
//! liveness timestamps are atomics, so the hot path (a relay's sender check and target lookup)
//! takes only shared read locks.
//!
//! Liveness is kept per name: only a well-formed message that names the name (or an
//! authenticated one) refreshes it, never a refused datagram or garbage from its address.
//!
//! Trust is kept per registration, not per address: a registration is *trusted* once a request
//! from its address has carried the session token the relay sent there (or a signed claim echoed
//! a cookie there). Tokens never repeat: each one is derived from a fresh 64-bit number, drawn
//! anew at every join and every move.
//!
//! Lock discipline: maps are locked in the order `peers`, then `by_addr`, `keys`, `watchers` or
//! `watching`; a guard of one of the latter is never held while `peers` (or another of them) is
//! locked, so no two threads can wait on each other. A claim or removal updates the latter while
//! it holds the name's `peers` entry, so that claims and reaps of one name never interleave.
//!
//! Size matters at a million peers: an entry is 48 bytes beside its name, addresses are packed
//! into 18 bytes, and what only watchers need lives in maps of its own.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::addr::host_key;
use crate::addr::prefix;
use crate::auth::Key;
use crate::keyed::Keyed;
use crate::reservations::Reservations;
use crate::settings::Settings;
use crate::shards::{Entry as Slot, Sharded};
use dashmap::mapref::entry::Entry as MapEntry;

/// A registered name, in 16 bytes. Names of up to [`INLINE_NAME`] bytes (nearly all: chat
/// handles are short) are stored inline, so that a lookup compares the key in the table's own
/// memory and a registration allocates nothing for it; longer ones are shared on the heap. Every
/// map of the registry is keyed or filled by names, so their size is most of a peer's cost.
#[derive(Clone)]
pub struct Name(Repr);

/// The longest name stored inline.
pub const INLINE_NAME: usize = 15;

#[derive(Clone)]
enum Repr {
    Inline {
        len: Len,
        bytes: [u8; INLINE_NAME],
    },
    /// A thin pointer (a `Box<str>` behind the `Arc`), so that the variant fits beside the
    /// inline one's length byte.
    Heap(Arc<Box<str>>),
}

/// An inline name's length. An enum rather than a `u8`, so that the values it cannot take
/// (16 and up) are free to mark the heap variant: `Name` is 16 bytes, not 24.
#[derive(Clone, Copy)]
#[repr(u8)]
#[rustfmt::skip]
enum Len { L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11, L12, L13, L14, L15 }

#[rustfmt::skip]
const LENS: [Len; INLINE_NAME + 1] = [
    Len::L0, Len::L1, Len::L2, Len::L3, Len::L4, Len::L5, Len::L6, Len::L7,
    Len::L8, Len::L9, Len::L10, Len::L11, Len::L12, Len::L13, Len::L14, Len::L15,
];

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        match LENS.get(s.len()) {
            Some(&len) => {
                let mut bytes = [0; INLINE_NAME];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Name(Repr::Inline { len, bytes })
            }
            None => Name(Repr::Heap(Arc::new(Box::from(s)))),
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.0 {
            // SAFETY: inline bytes are only ever copied from a `&str`, up to `len`.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..*len as usize])
            },
            Repr::Heap(s) => s,
        }
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        **self == **other
    }
}

impl Eq for Name {}

/// Hashes as the `str` does, so that maps keyed by `Name` are looked up by `&str`.
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (**self).hash(h);
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// The opaque token a registration is given, proving later that a moved peer is the same one.
#[derive(Clone, Copy)]
pub struct Session([u8; 16]);

/// Compared in constant time: how long a comparison takes tells nothing of a token.
impl PartialEq for Session {
    fn eq(&self, other: &Session) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Session {}

/// A credential: kept out of logs.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

impl Session {
    /// Parses the wire form (32 lowercase or uppercase hex digits).
    pub fn parse(s: &str) -> Option<Session> {
        let s = s.as_bytes();
        // Hex digits only (`from_str_radix` alone would take a sign), so each token has one form.
        if s.len() != 32 || !s.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            b[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Session(b))
    }

    /// The wire form.
    pub fn to_hex(self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// A socket address in 18 bytes (IPv4 as IPv4-mapped IPv6). IPv6 flow labels and scope ids are
/// not kept: peers reach the relay at global addresses, where the relay sets neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Packed {
    ip: [u8; 16],
    port: [u8; 2],
}

impl From<SocketAddr> for Packed {
    fn from(a: SocketAddr) -> Packed {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Packed {
            ip: ip.octets(),
            port: a.port().to_be_bytes(),
        }
    }
}

impl Packed {
    fn get(self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        SocketAddr::new(ip, u16::from_be_bytes(self.port))
    }
}

/// The names registered at one address, oldest first. Nearly every address holds one, kept
/// inline; more are kept in a list of their own, behind a thin pointer so that this is as small
/// as a name (16 bytes: the list's variant takes one of the name's spare length values).
#[derive(Debug)]
enum AtAddr {
    One(Name),
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer: with a Vec's three words inline, an address's bucket is 48 bytes, not 40"
    )]
    Many(Box<Vec<Name>>),
}

impl AtAddr {
    fn names(&self) -> &[Name] {
        match self {
            AtAddr::One(n) => std::slice::from_ref(n),
            AtAddr::Many(ns) => ns,
        }
    }

    fn push(&mut self, n: Name) {
        match self {
            AtAddr::One(first) => *self = AtAddr::Many(Box::new(vec![first.clone(), n])),
            // Grown one at a time: an address holds at most --max-names-per-address names, and
            // a list's spare room would be paid for at every address that holds several.
            AtAddr::Many(ns) => {
                ns.reserve_exact(1);
                ns.push(n);
            }
        }
    }

    /// Removes `n`; whether any name is left.
    fn remove(&mut self, n: &Name) -> bool {
        match self {
            AtAddr::One(only) => only != n,
            AtAddr::Many(ns) => {
                ns.retain(|x| x != n);
                match &ns[..] {
                    [] => false,
                    [only] => {
                        *self = AtAddr::One(only.clone());
                        true
                    }
                    _ => true,
                }
            }
        }
    }
}

/// One registration (its name is the key it is stored under).
#[derive(Debug)]
struct Entry {
    last_heard: AtomicU64,
    /// When a `server_keepalive` (or a list in its place) was last sent, in tenths of a second
    /// of the relay's clock: four bytes, so that trust fits an entry of 48 bytes.
    last_keepalive_ds: AtomicU32,
    /// Registration number, drawn anew at every join and move: lists read in join order, as the
    /// old relay's did, and the session token derives from it, so a move issues a new token
    /// (sent only to the new address) and no token ever repeats.
    seq: u64,
    addr: Packed,
    /// When a request from `addr` last carried this registration's token (or a signed claim
    /// echoed a cookie there), in seconds of the relay's clock plus one (0: never). Someone at
    /// `addr` received what the relay sent it then; trust lasts one peer timeout from it, so
    /// that forged refreshes cannot keep a departed peer's address trusted.
    trusted_s: AtomicU32,
    /// When a refreshing `register` of this name was last announced (seconds; `u32::MAX`:
    /// never), so that repeating `register` cannot make the relay broadcast at will.
    announced_s: AtomicU32,
}

impl Entry {
    fn new(addr: Packed, now_ms: u64, seq: u64, trusted: bool) -> Entry {
        let trusted_s = if trusted { secs(now_ms) + 1 } else { 0 };
        Entry {
            last_heard: AtomicU64::new(now_ms),
            last_keepalive_ds: AtomicU32::new(tenths(now_ms)),
            seq,
            addr,
            trusted_s: AtomicU32::new(trusted_s),
            announced_s: AtomicU32::new(u32::MAX),
        }
    }

    fn session(&self, tokens: &Tokens) -> Session {
        tokens.of(self.seq)
    }

    /// Marks the registration trusted now; whether it is the first time (its first proof here).
    fn trust(&self, now_ms: u64) -> bool {
        self.trusted_s.fetch_max(secs(now_ms) + 1, Relaxed) == 0
    }

    /// Whether the registration has ever shown its token (or a cookie) from its address.
    fn proven(&self) -> bool {
        self.trusted_s.load(Relaxed) != 0
    }

    fn last_heard(&self) -> u64 {
        self.last_heard.load(Relaxed)
    }

    fn touch(&self, now_ms: u64) {
        self.last_heard.fetch_max(now_ms, Relaxed);
    }
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX - 1)
}

/// Tenths of a second (good for 13 years of uptime; saturating beyond).
fn tenths(ms: u64) -> u32 {
    u32::try_from(ms / 100).unwrap_or(u32::MAX)
}

impl Entry {
    /// When the last keepalive was sent it, in ms (to a tenth of a second).
    fn last_keepalive(&self) -> u64 {
        u64::from(self.last_keepalive_ds.load(Relaxed)) * 100
    }

    fn keepalive_sent(&self, now_ms: u64) {
        self.last_keepalive_ds.store(tenths(now_ms), Relaxed);
    }
}

/// Issues and checks session tokens. The token of registration number `seq` is the ChaCha20
/// keystream under a key drawn at start-up, with `seq` as the stream: unguessable without the
/// key, unique per registration (`seq` never repeats), and nothing to store in an entry.
struct Tokens {
    key: [u8; 32],
}

impl Tokens {
    fn of(&self, seq: u64) -> Session {
        use rand::{RngCore, SeedableRng};
        let mut c = rand_chacha::ChaCha20Rng::from_seed(self.key);
        c.set_stream(seq);
        let mut b = [0; 16];
        c.fill_bytes(&mut b);
        Session(b)
    }
}

/// What one registration watches, and the host and network slots its watch entries were
/// counted under.
#[derive(Debug, Default)]
struct Watching {
    names: Vec<Name>,
    host: usize,
    net: usize,
}

/// A watcher of a name, with the network slot it was counted under there: one network may hold
/// at most [`MAX_WATCHERS_PER_NETWORK`] of a name's watchers.
#[derive(Debug, Clone)]
struct Watcher {
    name: Name,
    net: u32,
}

/// What a claim on a name shows: a session token (or none), or a verified signature by a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Unsigned: the session token of the registration, if the peer sent one.
    Token(Option<Session>),
    /// Signed (Part 5): the key whose signature over a fresh cookie was verified, and when that
    /// cookie was issued (Unix seconds).
    Key(Key, u64),
}

/// What `claim` does with a live or stale entry.
enum Decision {
    Refresh { trusted: bool },
    Move { trusted: bool },
    Replace,
    Refuse,
}

/// What became of a claim on a name (`register` or `keepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name was free and is now registered here.
    Joined(Session),
    /// The name was held by a stale registration, which a new one here replaces.
    Replaced(Session),
    /// The name was already registered at this address; it is refreshed.
    Refreshed(Session),
    /// The name moved here from another address, proven by its session token.
    Moved(Session),
    /// The name is live at another address.
    InUse,
    /// The registry holds `max_peers` names.
    Full,
    /// The address holds `--max-names-per-address` names already.
    AddressFull,
}

/// A removed registration, for announcing.
#[derive(Debug)]
pub struct Removed {
    /// The name.
    pub name: Name,
    /// Its last address.
    pub addr: SocketAddr,
    /// Whether it had ever proven itself there (so that its leaving is not forged news).
    pub proven: bool,
}

/// What a change to the registry did to a name, reported to what keeps state per name
/// elsewhere (channels), so that the registry calls into none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The name was free and is now held.
    Joined(&'a str),
    /// A stale holder of the name was replaced by a new registration.
    Replaced(&'a str),
    /// The name moved, with its session or signature, to this address.
    Moved(&'a str, SocketAddr),
    /// The registration is gone (unregistered or reaped).
    Removed(&'a str),
}

impl Claim {
    /// What this claim of `name` at `addr` did, if it changed who holds the name or where.
    pub fn event<'a>(&self, name: &'a str, addr: SocketAddr) -> Option<Event<'a>> {
        match self {
            Claim::Joined(_) => Some(Event::Joined(name)),
            Claim::Replaced(_) => Some(Event::Replaced(name)),
            Claim::Moved(_) => Some(Event::Moved(name, addr)),
            _ => None,
        }
    }
}

impl Removed {
    /// The event of this removal.
    pub fn event(&self) -> Event<'_> {
        Event::Removed(&self.name)
    }
}

/// A live peer as seen by a scan.
#[derive(Debug, Clone)]
pub struct Live {
    /// The name.
    pub name: Name,
    /// Its address.
    pub addr: SocketAddr,
    /// Its registration order.
    pub seq: u64,
    /// Whether it has shown, from `addr`, the token sent there.
    pub trusted: bool,
}

/// The registry.
pub struct Registry {
    /// The maps that grow with the peers are sized for `--max-peers` ([`Sharded`]); those of
    /// watches, bounded apart, are not.
    peers: Sharded<Name, Entry>,
    /// Address → the names registered there, oldest first.
    by_addr: Sharded<Packed, AtAddr>,
    /// Watched name → the names watching it.
    watchers: DashMap<Name, Vec<Watcher>>,
    /// Watching name → the names it watches.
    watching: DashMap<Name, Watching>,
    /// Watch entries in all, per host slot (IPv4 address, IPv6 /64, hashed) and per network
    /// slot (/24, /48, hashed): all bounded.
    watch_total: AtomicUsize,
    watch_hosts: Box<[AtomicU32]>,
    watch_nets: Box<[AtomicU32]>,
    watch_hasher: RandomState,
    /// The bounds in force, which a reload may change ([`Registry::retune`]): each use reads
    /// one once. Lowered below what is held, what is held stays and new entries are refused.
    bounds: Bounds,
    /// Name → the key it is bound to, for signed registrations, and the issue time of the
    /// latest cookie it signed (an older one is a replay).
    keys: Sharded<Name, (Key, u64)>,
    count: AtomicUsize,
    next_seq: AtomicU64,
    tokens: Tokens,
    timeout_ms: u64,
    /// The shard the next [`Registry::displace`] looks in: each in turn.
    displace_at: AtomicUsize,
    /// Names displaced from a full registry, each kept for its address for a peer timeout.
    reservations: Reservations<Name>,
}

/// The bounds of [`Registry`] in force.
#[derive(Default)]
struct Bounds {
    /// `--max-peers`, which the router passes to [`Registry::claim`]. The tables stay sized for
    /// the value at start; beyond it they grow as any hash table does.
    peers: AtomicUsize,
    /// `--max-watch`, which the router passes to [`Registry::watch`].
    watch: AtomicUsize,
    watch_total: AtomicUsize,
    watch_per_host: AtomicU32,
    /// A network's share of `watch_total`.
    watch_per_network: AtomicU32,
    names_per_address: AtomicUsize,
}

impl Bounds {
    fn set(&self, s: &Settings) {
        self.peers.store(s.max_peers, Relaxed);
        self.watch.store(s.max_watch, Relaxed);
        self.watch_total.store(s.max_watch_total, Relaxed);
        let per_host = u32::try_from(s.max_watch_per_host).unwrap_or(u32::MAX);
        self.watch_per_host.store(per_host, Relaxed);
        // A sixteenth of what the networks that took their shares may hold together (all but
        // the reserve kept for small ones: red team, twelve networks filled it at a sixteenth
        // of the whole), and at least what one of its hosts may.
        let shared = s.max_watch_total - s.max_watch_total / WATCH_RESERVE_PARTS;
        let share = (shared / WATCH_NETWORK_SHARES).max(s.max_watch_per_host);
        let per_network = u32::try_from(share).unwrap_or(u32::MAX);
        self.watch_per_network.store(per_network, Relaxed);
        self.names_per_address
            .store(s.max_names_per_address, Relaxed);
    }
}

/// Shards of the watch maps: enough that a sweep holds any one shard only for a few thousand
/// entries even with a million watches.
const SHARDS: usize = 256;
/// Most watchers of one name.
pub const MAX_WATCHERS: usize = 1024;
/// Most registrations [`Registry::displace`] looks at: the cost of a newcomer to a full
/// registry stays a few microseconds, whatever the registry holds.
const DISPLACE_SCAN: usize = 1024;
/// Most watchers of one name from one network (/24, /48): it takes 16 networks to fill a
/// name's watchers, so that no one network can keep a watcher elsewhere from hearing of it.
pub const MAX_WATCHERS_PER_NETWORK: usize = MAX_WATCHERS / 16;
/// One network (/24, /48) may hold at most this fraction of `--max-watch-total` (or, if more,
/// `--max-watch-per-host`), so that it takes 16 networks to spend it.
pub const WATCH_NETWORK_SHARES: usize = 16;
/// A network holding a quarter of a full watch (`--max-watch` / 4 entries: 64) or more may not
/// take the last 1/this of `--max-watch-total`, kept for the networks holding less.
pub const WATCH_RESERVE_PARTS: usize = 4;
/// Slots of the per-host and per-network watch counts (4 bytes each).
const WATCH_HOST_SLOTS: usize = 1 << 16;

impl Registry {
    /// An empty registry whose peers go stale after `s.peer_timeout_ms` of silence, with the
    /// bounds of `s`.
    pub fn new(s: &Settings) -> Registry {
        let bounds = Bounds::default();
        bounds.set(s);
        Registry {
            peers: Sharded::new(s.max_peers),
            by_addr: Sharded::new(s.max_peers),
            watchers: DashMap::with_shard_amount(SHARDS),
            watching: DashMap::with_shard_amount(SHARDS),
            watch_total: AtomicUsize::new(0),
            watch_hosts: (0..WATCH_HOST_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            watch_nets: (0..WATCH_HOST_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            watch_hasher: RandomState::new(),
            bounds,
            keys: Sharded::new(s.max_peers),
            count: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            tokens: Tokens {
                key: rand::random(),
            },
            timeout_ms: s.peer_timeout_ms,
            displace_at: AtomicUsize::new(0),
            reservations: Reservations::default(),
        }
    }

    /// Puts in force the bounds of `s` (a reload): `--max-peers`, `--max-watch`,
    /// `--max-watch-total`, `--max-watch-per-host` and `--max-names-per-address`.
    pub fn retune(&self, s: &Settings) {
        self.bounds.set(s);
    }

    /// The most names registered at once, in force (`--max-peers`).
    pub fn max_peers(&self) -> usize {
        self.bounds.peers.load(Relaxed)
    }

    /// The most names one peer may watch, in force (`--max-watch`).
    pub fn max_watch(&self) -> usize {
        self.bounds.watch.load(Relaxed)
    }

    /// Number of registered names (live or not yet reaped).
    pub fn len(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// True when no name is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fresh(&self, t: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(t) <= self.timeout_ms
    }

    /// Whether `e` showed its token from its address within the timeout.
    fn trusted(&self, e: &Entry, now_ms: u64) -> bool {
        let t = e.trusted_s.load(Relaxed);
        t > 0 && u64::from(secs(now_ms)).saturating_sub(u64::from(t - 1)) * 1000 <= self.timeout_ms
    }

    /// Whether `e` is live: named by a well-formed message within the timeout.
    fn live(&self, e: &Entry, now_ms: u64) -> bool {
        self.fresh(e.last_heard(), now_ms)
    }

    /// Claims `name` for `addr`, following the rules of Part 2 (live names stay with their address
    /// unless the session token is shown; stale ones are free).
    pub fn claim(
        &self,
        name: &str,
        addr: SocketAddr,
        proof: Proof,
        now_ms: u64,
        max_peers: usize,
    ) -> Claim {
        let here = Packed::from(addr);
        let signed = matches!(proof, Proof::Key(..));
        // The secondary maps are updated while the name's entry is held (lock order: `peers`
        // first), so a concurrent reap or claim of the same name cannot interleave with them.
        self.peers.entry(name, |slot| match slot {
            Slot::Occupied(mut o) => {
                let key = o.get().0.clone();
                let live = self.live(&o.get().1, now_ms);
                let bound = self.keys.get(&key, |_, b| *b);
                let e = &mut o.get_mut().1;
                let session = e.session(&self.tokens);
                let decision = if !live {
                    Decision::Replace
                } else {
                    match (proof, bound) {
                        // A refresh from the name's own address needs no proof; one that carries
                        // the token sent there is authenticated.
                        (Proof::Token(t), _) if e.addr == here => Decision::Refresh {
                            trusted: t == Some(session),
                        },
                        (Proof::Token(t), None) if t == Some(session) => {
                            Decision::Move { trusted: false }
                        }
                        // A signature over a cookie older than the last one is a replay (of a
                        // move back to an address the peer has left, say).
                        (Proof::Key(k, t), Some((b, bt))) if k == b && t < bt => Decision::Refuse,
                        (Proof::Key(k, _), Some((b, _))) if k == b && e.addr == here => {
                            Decision::Refresh { trusted: true }
                        }
                        (Proof::Key(k, _), Some((b, _))) if k == b => {
                            Decision::Move { trusted: true }
                        }
                        // A live unsigned name is bound to the key that signs for it there.
                        (Proof::Key(..), None) if e.addr == here => {
                            Decision::Refresh { trusted: true }
                        }
                        _ => Decision::Refuse,
                    }
                };
                let arrives = matches!(decision, Decision::Move { .. } | Decision::Replace);
                if arrives && self.address_full(here) {
                    return Claim::AddressFull;
                }
                let claim = match decision {
                    Decision::Refuse => return Claim::InUse,
                    Decision::Refresh { trusted } => {
                        e.touch(now_ms);
                        if trusted {
                            e.trust(now_ms);
                        }
                        if let Proof::Key(k, t) = proof {
                            self.keys.insert(key, (k, t));
                        }
                        return Claim::Refreshed(session);
                    }
                    Decision::Move { trusted } => {
                        let old = e.addr;
                        // A new number, so a new token, sent only to the new address; the new
                        // address is trusted only once it shows that token (or a cookie).
                        let seq = self.next_seq.fetch_add(1, Relaxed);
                        *e = Entry::new(here, now_ms, seq, trusted);
                        self.unlink_addr(&key, old);
                        Claim::Moved(e.session(&self.tokens))
                    }
                    Decision::Replace => {
                        let seq = self.next_seq.fetch_add(1, Relaxed);
                        let old = std::mem::replace(e, Entry::new(here, now_ms, seq, signed));
                        self.unlink(&key, &old);
                        Claim::Replaced(self.tokens.of(seq))
                    }
                };
                self.link(key, here, proof);
                claim
            }
            Slot::Vacant(v) => {
                // A signature proves the claimant is the key's holder; no key was bound to a
                // displaced name (only unproven registrations are displaced).
                if !signed && self.reservations.elsewhere(name, addr, now_ms) {
                    return Claim::InUse;
                }
                if self.count.load(Relaxed) >= max_peers {
                    return Claim::Full;
                }
                if self.address_full(here) {
                    return Claim::AddressFull;
                }
                let key = Name::from(name);
                let seq = self.next_seq.fetch_add(1, Relaxed);
                let _held = v.insert((key.clone(), Entry::new(here, now_ms, seq, signed)));
                self.count.fetch_add(1, Relaxed);
                self.link(key, here, proof);
                Claim::Joined(self.tokens.of(seq))
            }
        })
    }

    /// Whether `here` holds as many names as an address may.
    fn address_full(&self, here: Packed) -> bool {
        let max = self.bounds.names_per_address.load(Relaxed);
        self.by_addr
            .get(&here, |_, at| at.names().len() >= max)
            .unwrap_or(false)
    }

    /// Links a name just claimed at `here` into the secondary maps; how many names `here`
    /// holds now.
    fn link(&self, key: Name, here: Packed, proof: Proof) -> usize {
        if let Proof::Key(k, t) = proof {
            self.keys.insert(key.clone(), (k, t));
        }
        self.by_addr.entry(&here, |slot| match slot {
            Slot::Occupied(mut o) => {
                let at = &mut o.get_mut().1;
                at.push(key);
                at.names().len()
            }
            Slot::Vacant(v) => {
                v.insert((here, AtAddr::One(key)));
                1
            }
        })
    }

    /// Drops the secondary-map links of a registration that is gone from `peers`.
    fn unlink(&self, name: &Name, old: &Entry) {
        self.unlink_addr(name, old.addr);
        self.keys.remove(name);
        let Some((_, watched)) = self.watching.remove(name) else {
            return;
        };
        self.uncount_watches(&watched, watched.names.len());
        for n in watched.names {
            self.drop_watcher(n, name);
        }
    }

    fn drop_watcher(&self, watched: Name, watcher: &Name) {
        if let MapEntry::Occupied(mut o) = self.watchers.entry(watched) {
            o.get_mut().retain(|w| w.name != *watcher);
            if o.get().is_empty() {
                o.remove();
            }
        }
    }

    fn uncount_watches(&self, w: &Watching, n: usize) {
        self.watch_total.fetch_sub(n, Relaxed);
        self.watch_hosts[w.host].fetch_sub(n as u32, Relaxed);
        self.watch_nets[w.net].fetch_sub(n as u32, Relaxed);
    }

    fn unlink_addr(&self, name: &Name, addr: Packed) {
        self.by_addr.entry(&addr, |slot| {
            if let Slot::Occupied(mut o) = slot {
                if !o.get_mut().1.remove(name) {
                    o.remove();
                }
            }
        });
    }

    /// The sender check of a relay: true (and the name refreshed) if `name` is live at `addr`.
    pub fn touch_sender(&self, name: &str, addr: SocketAddr, now_ms: u64) -> bool {
        let packed = Packed::from(addr);
        self.peers
            .get(name, |_, e| {
                let ok = e.addr == packed && self.live(e, now_ms);
                if ok {
                    e.touch(now_ms);
                }
                ok
            })
            .unwrap_or(false)
    }

    /// Whether a request for `name` from `addr` carrying `token` is authenticated: the name is
    /// live there and `token` is its current session. If so the name is refreshed and its
    /// registration trusted from now on, and the answer says whether this was its first proof
    /// there (`Some(true)`).
    pub fn authenticate(
        &self,
        name: &str,
        addr: SocketAddr,
        token: Option<Session>,
        now_ms: u64,
    ) -> Option<bool> {
        let token = token?;
        let packed = Packed::from(addr);
        self.peers
            .get(name, |_, e| {
                let ok =
                    e.addr == packed && self.live(e, now_ms) && e.session(&self.tokens) == token;
                ok.then(|| {
                    e.touch(now_ms);
                    e.trust(now_ms)
                })
            })
            .flatten()
    }

    /// The address of `name` if it is live.
    pub fn addr_of(&self, name: &str, now_ms: u64) -> Option<SocketAddr> {
        self.target_of(name, now_ms).map(|(a, _)| a)
    }

    /// The address of `name` if it is live, and whether its registration is trusted there.
    pub fn target_of(&self, name: &str, now_ms: u64) -> Option<(SocketAddr, bool)> {
        self.peers
            .get(name, |_, e| {
                self.live(e, now_ms)
                    .then(|| (e.addr.get(), self.trusted(e, now_ms)))
            })
            .flatten()
    }

    /// The address of `name` if it is live, whether its registration is trusted there, and its
    /// registration number (which a move or a new holder changes).
    pub fn registration_of(&self, name: &str, now_ms: u64) -> Option<(SocketAddr, bool, u64)> {
        self.peers
            .get(name, |_, e| {
                self.live(e, now_ms)
                    .then(|| (e.addr.get(), self.trusted(e, now_ms), e.seq))
            })
            .flatten()
    }

    /// Whether a refreshing `register` of `name` may be announced now: the first may, then one
    /// per `every_ms`.
    pub fn announce_refresh(&self, name: &str, now_ms: u64, every_ms: u64) -> bool {
        let now_s = (now_ms / 1000) as u32;
        let every_s = every_ms.div_ceil(1000) as u32;
        self.peers
            .get(name, |_, e| {
                e.announced_s
                    .fetch_update(Relaxed, Relaxed, |last| {
                        (last == u32::MAX || now_s.saturating_sub(last) >= every_s).then_some(now_s)
                    })
                    .is_ok()
            })
            .unwrap_or(false)
    }

    /// Whether any name is registered at `addr`.
    pub fn has_addr(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains(&addr.into())
    }

    /// The name registered at `addr` when it holds exactly one (a request that names none
    /// speaks for it); `Err(n)` with how many it holds otherwise.
    pub fn only_name_at(&self, addr: SocketAddr) -> Result<Name, usize> {
        match self.by_addr.get(&addr.into(), |_, at| match at.names() {
            [only] => Ok(only.clone()),
            names => Err(names.len()),
        }) {
            Some(found) => found,
            None => Err(0),
        }
    }

    /// For a recipient owed a coalesced `peer_list`: `None` if `addr` holds no live trusted
    /// registration (it is owed nothing), else whether its list is due now (no keepalive or list
    /// sent it within `every_ms`; if so, it is marked as sent one now).
    pub fn list_due(&self, addr: SocketAddr, now_ms: u64, every_ms: u64) -> Option<bool> {
        let names = self
            .by_addr
            .get(&addr.into(), |_, at| at.names().to_vec())?;
        let mut owed = None;
        for n in names {
            let due = self.peers.get(&n, |_, e| {
                if !self.live(e, now_ms) || !self.trusted(e, now_ms) {
                    return None;
                }
                let due = now_ms.saturating_sub(e.last_keepalive()) >= every_ms;
                if due {
                    e.keepalive_sent(now_ms);
                }
                Some(due)
            });
            match due.flatten() {
                Some(true) => return Some(true),
                Some(false) => owed = Some(false),
                None => {}
            }
        }
        owed
    }

    /// Whether `name` is registered at `addr` and has ever proven itself there.
    pub fn proven_at(&self, name: &str, addr: SocketAddr) -> bool {
        self.peers
            .get(name, |_, e| e.addr == Packed::from(addr) && e.proven())
            .unwrap_or(false)
    }

    /// The session of `name` if it is live at `addr`.
    pub fn session_at(&self, name: &str, addr: SocketAddr, now_ms: u64) -> Option<Session> {
        self.peers
            .get(name, |_, e| {
                (e.addr == Packed::from(addr) && self.live(e, now_ms))
                    .then(|| e.session(&self.tokens))
            })
            .flatten()
    }

    /// Removes `name` if `may(entry)` allows it.
    fn remove_if(&self, name: &str, may: impl FnOnce(&Entry) -> bool) -> Option<Removed> {
        self.peers.entry(name, |slot| {
            let Slot::Occupied(o) = slot else {
                return None;
            };
            if !may(&o.get().1) {
                return None;
            }
            // Unlinked while the entry is held, as in `claim`.
            let (key, old) = o.get();
            self.unlink(key, old);
            let ((key, old), _) = o.remove();
            self.count.fetch_sub(1, Relaxed);
            Some(Removed {
                name: key,
                addr: old.addr.get(),
                proven: old.proven(),
            })
        })
    }

    /// Removes `name` if it is live at `addr` and `token` is its session: an address alone can
    /// be forged, and a token alone may have been seen on the path.
    pub fn unregister(
        &self,
        name: &str,
        addr: SocketAddr,
        token: Option<Session>,
        now_ms: u64,
    ) -> Option<Removed> {
        self.remove_if(name, |e| {
            e.addr == Packed::from(addr)
                && token == Some(e.session(&self.tokens))
                && self.live(e, now_ms)
        })
    }

    /// Makes room in a full registry, as a SYN cache drops its oldest half-open entry: removes,
    /// of the next [`DISPLACE_SCAN`] registrations in shard order (from where the last call
    /// stopped), the one heard from least recently among those gone stale or never proven
    /// where they are. A forged registration is heard from once; a peer in use is heard from
    /// every keepalive, so a flood of new names displaces the forgeries before the peers.
    /// `None` if none such was found.
    pub fn displace(&self, now_ms: u64) -> Option<Removed> {
        let shards = self.peers.shard_count();
        let first = self.displace_at.fetch_add(1, Relaxed);
        let (mut looked, mut best): (usize, Option<(u64, Name, u64, Packed)>) = (0, None);
        for i in 0..shards {
            if looked >= DISPLACE_SCAN {
                break;
            }
            self.peers.in_shard((first + i) % shards, |table| {
                for (name, e) in table.iter().take(DISPLACE_SCAN - looked) {
                    looked += 1;
                    let older = best.as_ref().is_none_or(|b| e.last_heard() < b.0);
                    if older && (!e.proven() || !self.live(e, now_ms)) {
                        best = Some((e.last_heard(), name.clone(), e.seq, e.addr));
                    }
                }
            });
        }
        let (_, name, seq, addr) = best?;
        // Reserved before it is removed, so that no claim on another worker finds the name
        // free in between.
        let until = now_ms + self.timeout_ms;
        self.reservations.keep(&name, addr.get(), until, now_ms);
        // The same registration, still unproven or stale: one that proved itself or was
        // replaced since it was looked at stays.
        let gone = self.remove_if(&name, |e| {
            e.seq == seq && (!e.proven() || !self.live(e, now_ms))
        });
        if gone.is_none() {
            self.reservations.release(&name);
        }
        gone
    }

    /// Removes `name` if it is stale.
    pub fn reap(&self, name: &str, now_ms: u64) -> Option<Removed> {
        self.remove_if(name, |e| !self.live(e, now_ms))
    }

    /// Adds `names` to what `watcher` (registered at `addr`) watches, within `max` per watcher,
    /// the per-host, per-network and relay-wide bounds, and each name's watchers per network. Returns how many of `names` did not fit, or
    /// `None` if `watcher` is not registered.
    pub fn watch(
        &self,
        watcher: &str,
        addr: SocketAddr,
        names: &[Name],
        max: usize,
    ) -> Option<usize> {
        // The watcher's entry is held while its watch lists change (lock order: `peers` first),
        // so that a reap cannot remove it in between and leave the lists to a later owner.
        self.peers
            .get(watcher, |key, _| self.watch_held(key, addr, names, max))
    }

    /// [`Registry::watch`] while `key`'s entry is held.
    fn watch_held(&self, key: &Name, addr: SocketAddr, names: &[Name], max: usize) -> usize {
        let slot = |key: &[u8]| self.watch_hasher.hash_one(key) as usize % WATCH_HOST_SLOTS;
        let (host, net) = (slot(&host_key(addr.ip())), slot(&prefix(addr.ip())));
        let mut added = Vec::new();
        // One request looks at no more names than a watcher may hold: its work is bounded.
        let mut left_out = names.len().saturating_sub(max);
        {
            let mut watching = self
                .watching
                .entry(key.clone())
                .or_insert_with(|| Watching {
                    names: Vec::new(),
                    host,
                    net,
                });
            for n in names.iter().take(max) {
                if watching.names.contains(n) {
                    continue;
                }
                if watching.names.len() >= max || !self.count_watch(&watching) {
                    left_out += 1;
                } else {
                    watching.names.push(n.clone());
                    added.push(n.clone());
                }
            }
        }
        // A name has at most MAX_WATCHERS watchers, so that removing one (a reap) and telling
        // them (an announcement) cost a bounded walk, and at most MAX_WATCHERS_PER_NETWORK of
        // one network (the one its watching entry was counted under, which a move keeps); the
        // rest are refused as beyond a limit.
        let net = self.watching.get(key).map_or(net, |w| w.net) as u32;
        let mut refused = Vec::new();
        for n in added {
            let mut ws = self.watchers.entry(n.clone()).or_default();
            let mine = ws.iter().filter(|w| w.net == net).count();
            if ws.len() >= MAX_WATCHERS || mine >= MAX_WATCHERS_PER_NETWORK {
                refused.push(n);
            } else {
                ws.push(Watcher {
                    name: key.clone(),
                    net,
                });
            }
        }
        if !refused.is_empty() {
            left_out += refused.len();
            if let Some(mut w) = self.watching.get_mut(key) {
                w.names.retain(|n| !refused.contains(n));
                self.uncount_watches(&w, refused.len());
            }
        }
        left_out
    }

    /// Counts one more watch entry of `w`'s host and network, if the bounds allow it.
    fn count_watch(&self, w: &Watching) -> bool {
        let max_total = self.bounds.watch_total.load(Relaxed);
        // The last quarter of the relay's entries is kept for networks that hold less than a
        // quarter of one full watch: once the networks that took their shares have filled the
        // rest, a newcomer can still watch its contacts, and only as many more networks again
        // as the quarter holds such small shares could take that from it.
        let small = (self.bounds.watch.load(Relaxed) / WATCH_RESERVE_PARTS).max(1);
        let held = self.watch_nets[w.net].load(Relaxed) as usize;
        let max_total = if held < small {
            max_total
        } else {
            max_total - max_total / WATCH_RESERVE_PARTS
        };
        let total = self
            .watch_total
            .fetch_update(Relaxed, Relaxed, |t| (t < max_total).then_some(t + 1));
        if total.is_err() {
            return false;
        }
        let below = |count: &AtomicU32, max: u32| {
            count
                .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
                .is_ok()
        };
        if !below(
            &self.watch_hosts[w.host],
            self.bounds.watch_per_host.load(Relaxed),
        ) {
            self.watch_total.fetch_sub(1, Relaxed);
            return false;
        }
        if !below(
            &self.watch_nets[w.net],
            self.bounds.watch_per_network.load(Relaxed),
        ) {
            self.watch_hosts[w.host].fetch_sub(1, Relaxed);
            self.watch_total.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Removes `names` from what `watcher` watches; returns what it still watches, or `None`
    /// if `watcher` is not registered.
    pub fn unwatch(&self, watcher: &str, names: &[Name]) -> Option<Vec<Name>> {
        // Held as in `watch`.
        self.peers
            .get(watcher, |key, _| self.unwatch_held(key, names))
    }

    /// [`Registry::unwatch`] while `key`'s entry is held.
    fn unwatch_held(&self, key: &Name, names: &[Name]) -> Vec<Name> {
        let mut removed = Vec::new();
        let left = match self.watching.get_mut(key) {
            Some(mut w) => {
                w.names.retain(|n| {
                    let gone = names.contains(n);
                    if gone {
                        removed.push(n.clone());
                    }
                    !gone
                });
                self.uncount_watches(&w, removed.len());
                w.names.clone()
            }
            None => Vec::new(),
        };
        for n in removed {
            self.drop_watcher(n, key);
        }
        left
    }

    /// Watch entries held in all.
    pub fn watch_entries(&self) -> usize {
        self.watch_total.load(Relaxed)
    }

    /// The live peers that watch `name` (beyond `announce_max`, the only ones told of it).
    pub fn watchers_of(&self, name: &str, now_ms: u64) -> Vec<Live> {
        let ws = self
            .watchers
            .get(name)
            .map(|v| v.clone())
            .unwrap_or_default();
        ws.iter()
            .filter_map(|w| {
                self.peers
                    .get(&w.name, |name, e| {
                        self.live(e, now_ms).then(|| self.seen(name, e, now_ms))
                    })
                    .flatten()
            })
            .collect()
    }

    /// `name`'s registration `e` as a scan sees it.
    fn seen(&self, name: &Name, e: &Entry, now_ms: u64) -> Live {
        Live {
            name: name.clone(),
            addr: e.addr.get(),
            seq: e.seq,
            trusted: self.trusted(e, now_ms),
        }
    }

    /// Up to `limit` live peers, in no particular order.
    pub fn live_peers(&self, now_ms: u64, limit: usize) -> Vec<Live> {
        let mut found = Vec::new();
        for i in 0..self.peers.shard_count() {
            if found.len() >= limit {
                break;
            }
            self.peers.in_shard(i, |table| {
                let live = table.iter().filter(|(_, e)| self.live(e, now_ms));
                let room = limit - found.len();
                found.extend(live.take(room).map(|(n, e)| self.seen(n, e, now_ms)));
            });
        }
        found
    }

    /// One pass over the registry, shard by shard: for each shard, `visit` is given the names
    /// gone stale and the live peers not heard from nor sent a keepalive within `keepalive_ms`
    /// (those are marked as sent one now). `visit` runs with no lock held, and what it is given
    /// is one shard's worth, so a sweep of a million peers holds neither a lock nor memory for
    /// long.
    pub fn scan(
        &self,
        now_ms: u64,
        keepalive_ms: u64,
        mut visit: impl FnMut(&mut Vec<Name>, &mut Vec<Live>),
    ) {
        let (mut stale, mut due) = (Vec::new(), Vec::new());
        let quiet = |t: u64| now_ms.saturating_sub(t) >= keepalive_ms;
        for i in 0..self.peers.shard_count() {
            self.peers.in_shard(i, |table| {
                for (name, e) in table {
                    if !self.live(e, now_ms) {
                        stale.push(name.clone());
                    } else if quiet(e.last_keepalive()) && quiet(e.last_heard()) {
                        e.keepalive_sent(now_ms);
                        due.push(self.seen(name, e, now_ms));
                    }
                }
            });
            if !stale.is_empty() || !due.is_empty() {
                visit(&mut stale, &mut due);
                stale.clear();
                due.clear();
            }
        }
    }
}

/// One registration as a handover image holds it: every field of its entry, its name, and the
/// key a signed name is bound to. Its name is borrowed: from the tables when written, from the
/// image when read.
#[derive(Serialize, Deserialize)]
pub struct PeerImage<'a> {
    name: &'a str,
    addr: SocketAddr,
    last_heard: u64,
    last_keepalive_ds: u32,
    seq: u64,
    trusted_s: u32,
    announced_s: u32,
    key: Option<(Key, u64)>,
}

/// The registry as a handover image holds it: the token key (so that every session stays
/// valid), the next registration number (so that none repeats), the registrations and what
/// each watches.
#[derive(Serialize, Deserialize)]
pub struct Image<'a> {
    token_key: [u8; 32],
    next_seq: u64,
    /// The hash key of the names' table, in whose shard order the registrations come.
    names_key: Keyed,
    #[serde(borrow)]
    peers: Vec<PeerImage<'a>>,
    watches: Vec<(String, Vec<String>)>,
}

/// The registry, written as an [`Image`] straight from its tables (no copy of a million
/// registrations is built first).
#[derive(Serialize)]
pub struct Export<'a> {
    token_key: [u8; 32],
    next_seq: u64,
    names_key: Keyed,
    peers: Peers<'a>,
    watches: Vec<(String, Vec<String>)>,
}

/// Every registration, serialized shard by shard under each shard's read lock.
pub struct Peers<'a>(&'a Registry);

impl Serialize for Peers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let r = self.0;
        // Counted from the tables themselves: the encoding writes the length first.
        let n = (0..r.peers.shard_count())
            .map(|i| r.peers.in_shard(i, |t| t.len()))
            .sum();
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..r.peers.shard_count() {
            r.peers.in_shard(i, |table| {
                table.iter().try_for_each(|(name, e)| {
                    seq.serialize_element(&PeerImage {
                        name,
                        addr: e.addr.get(),
                        last_heard: e.last_heard(),
                        last_keepalive_ds: e.last_keepalive_ds.load(Relaxed),
                        seq: e.seq,
                        trusted_s: e.trusted_s.load(Relaxed),
                        announced_s: e.announced_s.load(Relaxed),
                        key: r.keys.get(&**name, |_, k| *k),
                    })
                })
            })?;
        }
        seq.end()
    }
}

/// What restoring an image kept and left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Registrations restored.
    pub peers: usize,
    /// Registrations left out because they went stale while no relay held them.
    pub stale: usize,
    /// Watch entries left out because the limits in force are lower.
    pub watches_left_out: usize,
}

/// Registrations a restoring thread takes at least: fewer are not worth a thread.
const RESTORE_CHUNK: usize = 65_536;

/// A restored registration's place in the addresses' table.
struct Placed {
    hash: u64,
    addr: Packed,
    name: Name,
}

impl Registry {
    /// Everything the registry holds, for a relay that takes over (or a later start) to go on
    /// from. Meant for a registry nothing changes meanwhile (the workers and reaper stopped).
    pub fn export(&self) -> Export<'_> {
        let watches = self
            .watching
            .iter()
            .map(|w| {
                let names = w.names.iter().map(|n| n.to_string()).collect();
                (w.key().to_string(), names)
            })
            .collect();
        Export {
            token_key: self.tokens.key,
            next_seq: self.next_seq.load(Relaxed),
            names_key: self.peers.key(),
            peers: Peers(self),
            watches,
        }
    }

    /// A registry of `s` holding what `image` holds, at `now_ms` of a clock that goes on from
    /// the exporter's. With `drop_stale`, registrations silent beyond the peer timeout are left
    /// out (a snapshot read after a pause); without, they are kept for the reaper to announce.
    /// An image that breaks an invariant (a name or a number twice, a number that would repeat
    /// a token, an invalid name, more than the limits allow) is refused whole, naming what is
    /// wrong. Restored by as many threads as there are CPUs to run them, since forwarding waits.
    pub fn restore(
        s: &Settings,
        image: Image<'_>,
        now_ms: u64,
        drop_stale: bool,
    ) -> Result<(Registry, Restored), String> {
        // Far beyond what any relay issues: numbers near the end of the range would wrap to
        // ones (so tokens) already issued.
        if image.next_seq > 1 << 62 {
            return Err(format!(
                "the next registration number ({}) is beyond any a relay issues (its tokens \
                 could repeat)",
                image.next_seq
            ));
        }
        let mut r = Registry::new(s);
        r.tokens.key = image.token_key;
        r.next_seq = AtomicU64::new(image.next_seq);
        let mut seqs: Vec<u64> = image.peers.iter().map(|p| p.seq).collect();
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[0] == w[1]) || seqs.last() >= Some(&image.next_seq) {
            return Err(
                "registration numbers repeat or reach the next one (tokens could repeat)".into(),
            );
        }
        if let Some(p) = image.peers.iter().find(|p| p.last_heard > now_ms) {
            return Err(format!("registration {:?} was heard in the future", p.name));
        }
        // Times ahead of the clock would keep it trusted, or without keepalives and
        // announcements, for as long as they lie ahead.
        let ahead = |p: &&PeerImage| {
            p.trusted_s > secs(now_ms).saturating_add(1)
                || (p.announced_s != u32::MAX && p.announced_s > secs(now_ms))
                || p.last_keepalive_ds > tenths(now_ms)
        };
        if let Some(p) = image.peers.iter().find(ahead) {
            return Err(format!(
                "registration {:?} was trusted, announced or kept alive in the future",
                p.name
            ));
        }
        let kept: Vec<&PeerImage> = image
            .peers
            .iter()
            .filter(|p| !drop_stale || r.fresh(p.last_heard, now_ms))
            .collect();
        let mut done = Restored {
            peers: kept.len(),
            stale: image.peers.len() - kept.len(),
            ..Restored::default()
        };
        if kept.len() > s.max_peers {
            return Err(format!(
                "the state holds {} registrations, more than --max-peers ({})",
                kept.len(),
                s.max_peers
            ));
        }
        // The names' table hashes as the exporter's did: the registrations come in the order of
        // its shards, so each shard fills while it is in the cache (a million in random order
        // miss the cache at every one).
        r.peers.set_key(image.names_key);
        r.peers.reserve(kept.len());
        r.by_addr.reserve(kept.len());
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(kept.len().div_ceil(RESTORE_CHUNK).max(1));
        let runs = kept.chunks(kept.len().div_ceil(threads).max(1));
        let placed = std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .map(|run| scope.spawn(|| r.restore_names(run)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| "a restoring thread failed".to_string())?
                })
                .collect::<Result<Vec<_>, String>>()
        })?;
        // The addresses, likewise shard by shard: each names' thread put each registration in
        // the bucket of its address's shard, and each thread here takes a run of shards.
        let shards = r.by_addr.shard_count();
        let per = shards.div_ceil(threads);
        let crowded = std::thread::scope(|scope| {
            let (placed, r) = (&placed, &r);
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let run = t * per..((t + 1) * per).min(shards);
                    scope.spawn(move || {
                        let mut crowded = Vec::new();
                        for shard in run {
                            for from in placed {
                                crowded.extend(r.restore_addresses(&from[shard])?);
                            }
                        }
                        Ok::<_, String>(crowded)
                    })
                })
                .collect();
            let mut crowded = Vec::new();
            for h in handles {
                crowded.extend(
                    h.join()
                        .map_err(|_| "a restoring thread failed".to_string())??,
                );
            }
            Ok::<_, String>(crowded)
        })?;
        // An address holding several names lists them in join order.
        for addr in crowded {
            let Some(names) = r.by_addr.get(&addr, |_, at| at.names().to_vec()) else {
                continue;
            };
            let mut names: Vec<(u64, Name)> = names
                .into_iter()
                .map(|n| (r.peers.get(&*n, |_, e| e.seq).unwrap_or(0), n))
                .collect();
            names.sort_by_key(|(seq, _)| *seq);
            r.by_addr.get_mut(&addr, |at| {
                if let AtAddr::Many(list) = at {
                    **list = names.into_iter().map(|(_, n)| n).collect();
                }
            });
        }
        for (watcher, names) in image.watches {
            let names: Vec<Name> = names.iter().map(|n| Name::from(n.as_str())).collect();
            let watched = r.peers.get(watcher.as_str(), |key, e| {
                r.watch_held(key, e.addr.get(), &names, s.max_watch)
            });
            match watched {
                Some(left_out) => done.watches_left_out += left_out,
                // A watcher left out as stale takes its watches along.
                None if drop_stale => {}
                None => return Err(format!("{watcher:?} watches but is not registered")),
            }
        }
        Ok((r, done))
    }

    /// Restores the registrations of `run` to the names' table; where each goes in the
    /// addresses' table, by the shard it goes to.
    fn restore_names(&self, run: &[&PeerImage<'_>]) -> Result<Vec<Vec<Placed>>, String> {
        let shards = self.by_addr.shard_count();
        let mut placed: Vec<Vec<Placed>> = (0..shards)
            .map(|_| Vec::with_capacity(run.len() / shards + run.len() / shards / 4 + 4))
            .collect();
        for p in run {
            if !relay_wire::valid_name(p.name) {
                return Err(format!("a registration has an invalid name ({:?})", p.name));
            }
            let here = Packed::from(p.addr);
            let name = Name::from(p.name);
            let entry = Entry {
                last_heard: AtomicU64::new(p.last_heard),
                last_keepalive_ds: AtomicU32::new(p.last_keepalive_ds),
                seq: p.seq,
                addr: here,
                trusted_s: AtomicU32::new(p.trusted_s),
                announced_s: AtomicU32::new(p.announced_s),
            };
            let fresh = self.peers.entry(p.name, |slot| match slot {
                Slot::Occupied(_) => false,
                Slot::Vacant(v) => {
                    v.insert((name.clone(), entry));
                    true
                }
            });
            if !fresh {
                return Err(format!("the name {:?} is registered twice", p.name));
            }
            if let Some(k) = p.key {
                self.keys.insert(name.clone(), k);
            }
            self.count.fetch_add(1, Relaxed);
            let (hash, shard) = self.by_addr.locate(&here);
            placed[shard].push(Placed {
                hash,
                addr: here,
                name,
            });
        }
        Ok(placed)
    }

    /// Lists the registrations of `run` at their addresses; the addresses that came to hold
    /// several names (put in join order afterwards).
    fn restore_addresses(&self, run: &[Placed]) -> Result<Vec<Packed>, String> {
        let max = self.bounds.names_per_address.load(Relaxed);
        let mut crowded = Vec::new();
        for p in run {
            let at = self
                .by_addr
                .entry_hashed(p.hash, &p.addr, |slot| match slot {
                    Slot::Occupied(mut o) => {
                        let at = &mut o.get_mut().1;
                        at.push(p.name.clone());
                        at.names().len()
                    }
                    Slot::Vacant(v) => {
                        v.insert((p.addr, AtAddr::One(p.name.clone())));
                        1
                    }
                });
            if at > max {
                return Err(format!(
                    "{} holds more names than --max-names-per-address ({max})",
                    p.addr.get()
                ));
            }
            if at == 2 {
                crowded.push(p.addr);
            }
        }
        Ok(crowded)
    }

    /// Whether `name` is registered at `addr`, live or not (a channel's owner, on restore).
    pub fn registered_at(&self, name: &str, addr: SocketAddr) -> bool {
        self.peers
            .get(name, |_, e| e.addr == Packed::from(addr))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length prefix far beyond the image (2^60 registrations) is refused as corrupt without
    /// allocating for it: nothing is reserved that the bytes do not hold.
    #[test]
    fn a_crafted_length_is_refused_without_allocating_for_it() {
        let r = registry(1000);
        let e = r.export();
        let mut bytes = postcard::to_stdvec(&e).unwrap();
        // The token key, the next number and the names' key, then the peers' count.
        let at = postcard::to_stdvec(&(e.token_key, e.next_seq, e.names_key))
            .unwrap()
            .len();
        assert_eq!(bytes[at], 0);
        let mut huge = Vec::new();
        let mut n = 1u64 << 60;
        while n >= 0x80 {
            huge.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        huge.push(n as u8);
        bytes.splice(at..at + 1, huge);
        assert!(postcard::from_bytes::<Image>(&bytes).is_err());
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn registry(timeout_ms: u64) -> Registry {
        Registry::new(&Settings {
            peer_timeout_ms: timeout_ms,
            ..Settings::default()
        })
    }

    fn trusted(r: &Registry, name: &str) -> bool {
        r.peers.get(name, |_, e| r.trusted(e, 10)).unwrap_or(false)
    }

    /// The names registered at `addr`, oldest first.
    fn names_at(r: &Registry, addr: SocketAddr) -> Vec<Name> {
        r.by_addr
            .get(&addr.into(), |_, at| at.names().to_vec())
            .unwrap_or_default()
    }

    /// Every shard's findings of one scan, together.
    fn scan_all(r: &Registry, now_ms: u64, keepalive_ms: u64) -> (Vec<Name>, Vec<Live>) {
        let (mut stale, mut due) = (Vec::new(), Vec::new());
        r.scan(now_ms, keepalive_ms, |s, d| {
            stale.append(s);
            due.append(d);
        });
        (stale, due)
    }

    #[test]
    fn claim_rules() {
        let r = registry(1000);
        let Claim::Joined(s) = r.claim("alice", a("1.1.1.1:1"), Proof::Token(None), 0, 10) else {
            panic!()
        };
        assert_eq!(
            r.claim("alice", a("1.1.1.1:1"), Proof::Token(None), 10, 10),
            Claim::Refreshed(s)
        );
        assert_eq!(
            r.claim("alice", a("2.2.2.2:2"), Proof::Token(None), 20, 10),
            Claim::InUse
        );
        // A move issues a new token.
        let Claim::Moved(moved) = r.claim("alice", a("2.2.2.2:2"), Proof::Token(Some(s)), 30, 10)
        else {
            panic!()
        };
        assert_ne!(moved, s);
        assert_eq!(r.addr_of("alice", 30), Some(a("2.2.2.2:2")));
        assert!(!r.has_addr(a("1.1.1.1:1")));
        assert_eq!(names_at(&r, a("2.2.2.2:2")).len(), 1);
        // Stale: anyone may take it, with a new session.
        match r.claim("alice", a("3.3.3.3:3"), Proof::Token(None), 2000, 10) {
            Claim::Replaced(s2) => assert_ne!(s2, s),
            c => panic!("{c:?}"),
        }
        assert!(!r.has_addr(a("2.2.2.2:2")));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn full_registry_refuses_new_names_only() {
        let r = registry(1000);
        assert!(matches!(
            r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 0, 1),
            Claim::Joined(_)
        ));
        assert_eq!(
            r.claim("b", a("1.1.1.1:1"), Proof::Token(None), 0, 1),
            Claim::Full
        );
        assert!(matches!(
            r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 0, 1),
            Claim::Refreshed(_)
        ));
    }

    #[test]
    fn sender_check_and_liveness() {
        let r = registry(1000);
        r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        assert!(r.touch_sender("a", a("1.1.1.1:1"), 900));
        assert!(!r.touch_sender("a", a("1.1.1.1:2"), 900));
        assert!(r.addr_of("a", 1900).is_some());
        assert!(r.addr_of("a", 1901).is_none());
        assert!(r.reap("a", 1500).is_none());
        let gone = r.reap("a", 1901).unwrap();
        assert_eq!(&*gone.name, "a");
        assert!(r.is_empty());
        assert!(!r.has_addr(a("1.1.1.1:1")));
    }

    #[test]
    fn watchers_follow_registrations() {
        let r = registry(1000);
        let w = a("1.1.1.1:1");
        r.claim("w", w, Proof::Token(None), 0, 10);
        let names: Vec<Name> = vec!["x".into(), "y".into(), "z".into()];
        assert_eq!(r.watch("w", w, &names, 2), Some(1));
        assert_eq!(r.watch("w", w, &names[..1], 2), Some(0));
        assert_eq!(r.watchers_of("x", 0)[0].addr, w);
        assert!(r.watchers_of("z", 0).is_empty());
        assert_eq!(r.watch("nobody", w, &names, 2), None);
        assert_eq!(r.watch_entries(), 2);
        assert_eq!(r.unwatch("w", &names[..1]), Some(vec![Name::from("y")]));
        assert_eq!(r.watch_entries(), 1);
        let token = r.session_at("w", w, 0);
        r.unregister("w", w, token, 0).unwrap();
        assert!(r.watchers_of("y", 0).is_empty());
        assert!(r.watchers.is_empty());
        assert_eq!(r.watch_entries(), 0);
    }

    #[test]
    fn watch_entries_are_bounded_per_host_and_in_all() {
        let r = Registry::new(&Settings {
            peer_timeout_ms: 1000,
            max_watch_total: 5,
            max_watch_per_host: 3,
            ..Settings::default()
        });
        let names: Vec<Name> = (0..10)
            .map(|i| Name::from(format!("n{i}").as_str()))
            .collect();
        // Two registrations of one host (ports differ) share its three entries.
        for (n, p) in [("a", "1.1.1.1:1"), ("b", "1.1.1.1:2"), ("c", "2.2.2.2:1")] {
            r.claim(n, a(p), Proof::Token(None), 0, 10);
        }
        assert_eq!(r.watch("a", a("1.1.1.1:1"), &names[..2], 100), Some(0));
        assert_eq!(r.watch("b", a("1.1.1.1:2"), &names[..2], 100), Some(1));
        assert_eq!(
            r.watch("c", a("2.2.2.2:1"), &names, 100),
            Some(8),
            "5 in all"
        );
        assert_eq!(r.watch_entries(), 5);
        // Entries come back when the watcher goes.
        r.reap("a", 5000).unwrap();
        assert_eq!(r.watch_entries(), 3);
        assert_eq!(r.watch("b", a("1.1.1.1:2"), &names[2..4], 100), Some(0));
    }

    #[test]
    fn one_network_holds_a_share_of_the_watches_and_of_each_names_watchers() {
        let r = Registry::new(&Settings {
            max_watch_total: 16 * 10,
            max_watch_per_host: 10,
            ..Settings::default()
        });
        let names: Vec<Name> = (0..8)
            .map(|i| Name::from(format!("n{i}").as_str()))
            .collect();
        // Two hosts of one /24 share its ten entries; a host elsewhere has ten of its own.
        for (n, p) in [("a", "1.1.1.1:1"), ("b", "1.1.1.2:1"), ("c", "2.2.2.2:1")] {
            r.claim(n, a(p), Proof::Token(None), 0, 10);
        }
        assert_eq!(r.watch("a", a("1.1.1.1:1"), &names, 100), Some(0));
        assert_eq!(r.watch("b", a("1.1.1.2:1"), &names, 100), Some(6));
        assert_eq!(r.watch("c", a("2.2.2.2:1"), &names, 100), Some(0));
        // Entries come back to the network when its watcher goes.
        let token = r.session_at("a", a("1.1.1.1:1"), 0);
        r.unregister("a", a("1.1.1.1:1"), token, 0).unwrap();
        assert_eq!(r.watch("b", a("1.1.1.2:1"), &names, 100), Some(0));
        // One name's watchers: 64 of one /24 or one /48 (hosts of many /64s), then others.
        let r = Registry::new(&Settings::default());
        let star = [Name::from("star")];
        for v6 in [false, true] {
            let at = |i: usize| match v6 {
                false => SocketAddr::from(([10, 0, 0, i as u8], 1)),
                true => SocketAddr::from((
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 1),
                    1,
                )),
            };
            let tag = if v6 { "v6" } else { "v4" };
            for i in 0..=MAX_WATCHERS_PER_NETWORK {
                let w = format!("{tag}-{i}");
                r.claim(&w, at(i + 1), Proof::Token(None), 0, usize::MAX);
                let left_out = r.watch(&w, at(i + 1), &star, 10).unwrap();
                let beyond = i == MAX_WATCHERS_PER_NETWORK;
                assert_eq!(left_out, usize::from(beyond), "{tag} watcher {i}");
            }
        }
        for (n, p) in [("x", "10.0.1.1:1"), ("y", "[2001:db8:2::1]:1")] {
            r.claim(n, a(p), Proof::Token(None), 0, usize::MAX);
            assert_eq!(r.watch(n, a(p), &star, 10), Some(0), "{p} elsewhere");
        }
        assert_eq!(r.watchers_of("star", 0).len(), 2 * 64 + 2);
    }

    #[test]
    fn a_retune_below_what_is_held_keeps_it_and_refuses_more() {
        // The defaults bound neither watches in all or per host nor names per address.
        let r = registry(1000);
        let names: Vec<Name> = (0..6)
            .map(|i| Name::from(format!("n{i}").as_str()))
            .collect();
        let (here, there) = (a("1.1.1.1:1"), a("2.2.2.2:2"));
        for n in ["a", "b", "c"] {
            r.claim(n, here, Proof::Token(None), 0, 10);
        }
        r.claim("w", there, Proof::Token(None), 0, 10);
        assert_eq!(r.watch("a", here, &names[..4], 100), Some(0));
        assert_eq!(r.watch("w", there, &names[..2], 100), Some(0));
        let low = Settings {
            max_peers: 2,
            max_watch: 1,
            max_watch_total: 3,
            max_watch_per_host: 2,
            max_names_per_address: 2,
            ..Settings::default()
        };
        r.retune(&low);
        assert_eq!((r.max_peers(), r.max_watch()), (2, 1));
        // What is held stays: four names, six watch entries, three names at `here`.
        assert_eq!((r.len(), r.watch_entries()), (4, 6));
        assert_eq!(names_at(&r, here).len(), 3);
        assert!(matches!(
            r.claim("a", here, Proof::Token(None), 1, 10),
            Claim::Refreshed(_)
        ));
        // New entries are refused, until enough are gone to be under the bound.
        assert_eq!(
            r.claim("d", here, Proof::Token(None), 1, 10),
            Claim::AddressFull
        );
        assert_eq!(r.watch("w", there, &names[2..3], 100), Some(1));
        let token = r.session_at("c", here, 1);
        r.unregister("c", here, token, 1).unwrap();
        let token = r.session_at("b", here, 1);
        r.unregister("b", here, token, 1).unwrap();
        assert_eq!(r.unwatch("a", &names[..4]), Some(Vec::new()));
        assert_eq!(r.watch_entries(), 2);
        assert!(matches!(
            r.claim("d", here, Proof::Token(None), 2, 10),
            Claim::Joined(_)
        ));
        assert_eq!(r.watch("a", here, &names[..2], 100), Some(1), "3 in all");
        assert_eq!(r.watch_entries(), 3);
        // Raised back to no bound, the counts are as they were and more fits.
        r.retune(&Settings::default());
        assert_eq!(r.watch("w", there, &names[2..6], 100), Some(0));
        assert_eq!(r.watch_entries(), 7);
        assert!(matches!(
            r.claim("e", here, Proof::Token(None), 2, 10),
            Claim::Joined(_)
        ));
        assert_eq!(names_at(&r, here).len(), 3);
        for n in ["a", "d", "e", "w"] {
            r.reap(n, 5000).unwrap();
        }
        assert_eq!((r.len(), r.watch_entries()), (0, 0));
    }

    #[test]
    fn watchers_of_a_name_and_names_at_an_address_are_bounded() {
        let r = Registry::new(&Settings {
            max_names_per_address: 3,
            ..Settings::default()
        });
        let star = [Name::from("star")];
        // A thousand and more watchers of one name: the last are refused, and what one reap
        // walks stays bounded.
        for i in 0..=MAX_WATCHERS {
            let at = SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 1));
            r.claim(&format!("w{i}"), at, Proof::Token(None), 0, usize::MAX);
            let left_out = r.watch(&format!("w{i}"), at, &star, 10).unwrap();
            assert_eq!(left_out, usize::from(i == MAX_WATCHERS), "watcher {i}");
        }
        assert_eq!(r.watchers.get("star").unwrap().len(), MAX_WATCHERS);
        assert_eq!(r.watch_entries(), MAX_WATCHERS);
        // One request looks at no more names than a watcher may hold.
        let many: Vec<Name> = (0..50)
            .map(|i| Name::from(format!("m{i}").as_str()))
            .collect();
        assert_eq!(r.watch("w0", a("10.0.0.1:1"), &many, 10), Some(41));
        // An address holds at most three names; refreshes there and moves away still work.
        let here = a("9.9.9.9:9");
        for n in ["a", "b", "c"] {
            assert!(matches!(
                r.claim(n, here, Proof::Token(None), 0, usize::MAX),
                Claim::Joined(_)
            ));
        }
        assert_eq!(
            r.claim("d", here, Proof::Token(None), 0, usize::MAX),
            Claim::AddressFull
        );
        assert!(matches!(
            r.claim("a", here, Proof::Token(None), 1, usize::MAX),
            Claim::Refreshed(_)
        ));
        let t = r.session_at("e", a("8.8.8.8:8"), 0);
        assert!(t.is_none());
        r.claim("e", a("8.8.8.8:8"), Proof::Token(None), 0, usize::MAX);
        let t = r.session_at("e", a("8.8.8.8:8"), 0);
        assert_eq!(
            r.claim("e", here, Proof::Token(t), 2, usize::MAX),
            Claim::AddressFull
        );
    }

    #[test]
    fn scan_finds_stale_and_keepalive_due() {
        let r = registry(1000);
        r.claim("old", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        r.claim("quiet", a("1.1.1.1:2"), Proof::Token(None), 600, 10);
        r.claim("fresh", a("1.1.1.1:3"), Proof::Token(None), 1400, 10);
        let (stale, due) = scan_all(&r, 1500, 500);
        assert_eq!(stale, vec![Name::from("old")]);
        assert_eq!(due.len(), 1);
        assert_eq!(&*due[0].name, "quiet");
        // Just sent: not due again until another interval passes.
        assert!(scan_all(&r, 1600, 500).1.is_empty());
    }

    #[test]
    fn only_a_message_naming_a_name_keeps_it_live() {
        let r = registry(1000);
        r.claim("s1", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        r.claim("s2", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        // s1 speaks by name; s2 shares its address but is not named, so it goes stale.
        assert!(r.touch_sender("s1", a("1.1.1.1:1"), 900));
        let (stale, _) = scan_all(&r, 1500, 500);
        assert_eq!(stale, vec![Name::from("s2")]);
        assert!(r.reap("s2", 1500).is_some());
        assert!(r.reap("s1", 1500).is_none());
    }

    #[test]
    fn a_registration_is_trusted_once_its_token_comes_back_from_its_address() {
        let r = registry(1000);
        let (here, there) = (a("1.1.1.1:1"), a("2.2.2.2:2"));
        let Claim::Joined(s) = r.claim("a", here, Proof::Token(None), 0, 10) else {
            panic!()
        };
        assert!(!trusted(&r, "a"));
        r.claim("a", here, Proof::Token(None), 1, 10);
        assert!(
            !trusted(&r, "a"),
            "a refresh without the token proves nothing"
        );
        assert!(
            r.authenticate("a", there, Some(s), 1).is_none(),
            "the token from elsewhere"
        );
        assert_eq!(
            r.authenticate("a", here, Some(s), 1),
            Some(true),
            "its first proof"
        );
        assert_eq!(r.authenticate("a", here, Some(s), 1), Some(false));
        assert!(trusted(&r, "a"));
        // Shown from elsewhere, the token moves the name, issuing a new token sent there; the
        // new address is not trusted until it shows that one, and the old token is dead.
        let Claim::Moved(s2) = r.claim("a", there, Proof::Token(Some(s)), 2, 10) else {
            panic!()
        };
        assert_ne!(s2, s);
        assert!(!trusted(&r, "a"));
        assert!(r.authenticate("a", there, Some(s), 3).is_none());
        assert!(!trusted(&r, "a"));
        assert_eq!(
            r.claim("a", here, Proof::Token(Some(s)), 3, 10),
            Claim::InUse,
            "the old token moves nothing any more"
        );
        assert!(r.authenticate("a", there, Some(s2), 4).is_some());
        assert!(trusted(&r, "a"));
        // Trust lasts a timeout from the last authenticated request: unauthenticated refreshes
        // (which anyone can forge from the address) keep the name live but not trusted.
        r.claim("a", there, Proof::Token(None), 900, 10);
        r.peers.get("a", |_, e| {
            assert!(r.trusted(e, 1000));
            assert!(!r.trusted(e, 2_500));
        });
    }

    #[test]
    fn tokens_never_repeat_however_often_a_name_moves() {
        // 16-bit move counters once wrapped after 65,536 moves and revived the first token.
        let r = registry(1_000_000);
        let mut seen = std::collections::HashSet::new();
        let Claim::Joined(mut t) = r.claim("m", a("1.1.1.1:1"), Proof::Token(None), 0, 10) else {
            panic!()
        };
        let first = t;
        seen.insert(t.0);
        for i in 0..70_000u32 {
            let to = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 2 + (i % 2) as u16));
            let Claim::Moved(next) = r.claim("m", to, Proof::Token(Some(t)), 1, 10) else {
                panic!("move {i}")
            };
            assert!(seen.insert(next.0), "token repeated at move {i}");
            t = next;
        }
        let at = r.addr_of("m", 1).unwrap();
        assert!(r.authenticate("m", at, Some(first), 2).is_none());
        assert_eq!(
            r.claim("m", a("9.9.9.9:9"), Proof::Token(Some(first)), 2, 10),
            Claim::InUse
        );
    }

    #[test]
    fn a_signed_name_is_bound_to_its_key_while_live() {
        let r = registry(1000);
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let here = a("1.1.1.1:1");
        assert!(matches!(
            r.claim("s", here, Proof::Key(k1, 0), 0, 10),
            Claim::Joined(_)
        ));
        assert!(trusted(&r, "s"), "a signed claim echoed a cookie sent here");
        // Another key, or an unsigned claim elsewhere even with the token, cannot take it.
        let there = a("2.2.2.2:2");
        assert_eq!(r.claim("s", there, Proof::Key(k2, 0), 1, 10), Claim::InUse);
        let token = r.session_at("s", here, 1);
        assert_eq!(
            r.claim("s", there, Proof::Token(token), 1, 10),
            Claim::InUse
        );
        // The same key moves it; an unsigned refresh where it lives keeps it live.
        assert!(matches!(
            r.claim("s", there, Proof::Key(k1, 0), 2, 10),
            Claim::Moved(_)
        ));
        assert!(matches!(
            r.claim("s", there, Proof::Token(None), 3, 10),
            Claim::Refreshed(_)
        ));
        // Unregistering it takes its address and its token, not either.
        let token = r.session_at("s", there, 3);
        assert!(r.unregister("s", there, None, 3).is_none());
        assert!(r.unregister("s", here, token, 3).is_none());
        assert!(r.unregister("s", there, token, 3).is_some());
        assert!(matches!(
            r.claim("s", there, Proof::Key(k1, 0), 4, 10),
            Claim::Joined(_)
        ));
        // Once stale, the binding goes with it.
        assert!(matches!(
            r.claim("s", here, Proof::Key(k2, 0), 2000, 10),
            Claim::Replaced(_)
        ));
        assert_eq!(r.keys.get("s", |_, b| b.0), Some(k2));
        // A signature over an older cookie than the last is a replay, even by the right key.
        let elsewhere = a("3.3.3.3:3");
        assert!(matches!(
            r.claim("s", here, Proof::Key(k2, 100), 2001, 10),
            Claim::Refreshed(_)
        ));
        assert_eq!(
            r.claim("s", elsewhere, Proof::Key(k2, 99), 2002, 10),
            Claim::InUse
        );
    }

    #[test]
    fn packed_addresses_round_trip() {
        for s in ["1.2.3.4:5", "[2001:db8::1]:65535", "[::1]:80", "0.0.0.0:0"] {
            assert_eq!(Packed::from(a(s)).get(), a(s));
        }
        let long = "x".repeat(INLINE_NAME + 1);
        for n in ["", "Alice", "é🙂", &long[1..], &long] {
            assert_eq!(&*Name::from(n), n);
        }
        let r = registry(60_000);
        r.claim("n", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        assert!(r.announce_refresh("n", 0, 10_000));
        assert!(!r.announce_refresh("n", 9_000, 10_000));
        assert!(r.announce_refresh("n", 10_000, 10_000));
        assert!(!r.announce_refresh("nobody", 0, 10_000));
    }

    /// What a registered peer costs rests on these sizes (README, "Memory per peer"): a
    /// regression here is one in bytes per peer, a million times over.
    #[test]
    fn a_peer_is_small() {
        assert!(size_of::<Name>() <= 16);
        assert!(size_of::<Packed>() <= 18);
        assert!(size_of::<Entry>() <= 48);
        assert!(size_of::<AtAddr>() <= 16);
        // The buckets of `peers`, `by_addr` and (signed names only) `keys`.
        assert!(size_of::<(Name, Entry)>() <= 64);
        assert!(size_of::<(Packed, AtAddr)>() <= 40);
        assert!(size_of::<(Name, (Key, u64))>() <= 56);
        // Inline names need no heap; a single name at an address needs no list.
        assert!(matches!(
            Name::from("a-15-byte-name!").0,
            Repr::Inline { .. }
        ));
        assert!(matches!(Name::from("a-16-byte-name!!").0, Repr::Heap(_)));
        let r = registry(60_000);
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            r.claim(n, a("1.1.1.1:1"), Proof::Token(None), 0, 10);
            r.claim(
                &format!("{n}{i}"),
                a(&format!("2.2.2.{i}:2")),
                Proof::Token(None),
                0,
                10,
            );
        }
        let at = |addr: &str| {
            r.by_addr
                .get(&a(addr).into(), |_, at| matches!(at, AtAddr::One(_)))
        };
        assert_eq!(at("2.2.2.0:2"), Some(true));
        assert_eq!(at("1.1.1.1:1"), Some(false));
        // Back to one name, the address keeps it inline again; the order stays oldest first.
        let token = r.session_at("a", a("1.1.1.1:1"), 0);
        r.unregister("a", a("1.1.1.1:1"), token, 0).unwrap();
        assert_eq!(
            names_at(&r, a("1.1.1.1:1")),
            [Name::from("b"), Name::from("c")]
        );
        r.reap("b", 60_001).unwrap();
        assert_eq!(at("1.1.1.1:1"), Some(true));
        assert_eq!(r.only_name_at(a("1.1.1.1:1")).unwrap(), Name::from("c"));
    }

    #[test]
    fn session_round_trips() {
        let t = Tokens { key: [7; 32] };
        assert_ne!(t.of(1), t.of(2));
        assert_ne!(t.of(u64::MAX), t.of(0));
        assert_ne!(t.of(1), Tokens { key: [8; 32] }.of(1));
        let s = t.of(1);
        assert_eq!(Session::parse(&s.to_hex()), Some(s));
        assert_eq!(Session::parse("xyz"), None);
        let signed = format!("+{}", &s.to_hex()[1..]);
        assert_eq!(Session::parse(&signed), None);
    }

    /// An image whose numbers or times cannot have been written by a relay is refused whole:
    /// a next number at the end of its range would wrap to numbers (so tokens) already issued,
    /// and times past the image's own clock would keep a registration trusted, or unannounced
    /// and without keepalives, for as long as they lie ahead.
    #[test]
    fn an_image_with_numbers_or_times_beyond_its_clock_is_refused() {
        let s = Settings {
            peer_timeout_ms: 60_000,
            ..Settings::default()
        };
        let now = 100_000;
        // The image as written, to be read (and damaged) as a relay taking over reads it.
        let bytes = {
            let r = Registry::new(&s);
            r.claim("alice", a("1.1.1.1:1"), Proof::Token(None), now, 10);
            postcard::to_stdvec(&r.export()).unwrap()
        };
        let image = || postcard::from_bytes::<Image>(&bytes).unwrap();
        assert!(Registry::restore(&s, image(), now, false).is_ok());
        let mut wraps = image();
        wraps.next_seq = u64::MAX;
        let err = Registry::restore(&s, wraps, now, false).err().unwrap();
        assert!(err.contains("number"), "{err}");
        type Damage = fn(&mut PeerImage);
        let future: [(&str, Damage); 3] = [
            ("trusted", |p| p.trusted_s = u32::MAX - 1),
            ("announced", |p| p.announced_s = 1_000_000),
            ("keepalive", |p| p.last_keepalive_ds = 1_000_000_000),
        ];
        for (what, damage) in future {
            let mut img = image();
            damage(&mut img.peers[0]);
            let err = Registry::restore(&s, img, now, false).err();
            assert!(err.is_some_and(|e| e.contains("future")), "{what}");
        }
    }

    /// An image of `names`, the `i`th at `addr(i)` with registration number `seq(i)`.
    fn image_of<'a>(
        names: &'a [String],
        addr: impl Fn(usize) -> SocketAddr,
        seq: impl Fn(usize) -> u64,
    ) -> Image<'a> {
        let peers = names
            .iter()
            .enumerate()
            .map(|(i, n)| PeerImage {
                name: n,
                addr: addr(i),
                last_heard: 0,
                last_keepalive_ds: 0,
                seq: seq(i),
                trusted_s: 0,
                announced_s: u32::MAX,
                key: None,
            })
            .collect();
        Image {
            token_key: [1; 32],
            next_seq: names.len() as u64 * 2,
            names_key: Keyed::random(),
            peers,
            watches: Vec::new(),
        }
    }

    /// Every invariant the tables keep, of a registry that holds `n` registrations: each is
    /// listed at its address once, addresses list theirs in join order, and nothing else is
    /// listed.
    fn check_tables(r: &Registry, n: usize) {
        assert_eq!(r.len(), n);
        assert_eq!(r.peers.len(), n);
        let mut listed = 0;
        for i in 0..r.by_addr.shard_count() {
            r.by_addr.in_shard(i, |t| {
                for (addr, at) in t.iter() {
                    let seqs: Vec<u64> = at
                        .names()
                        .iter()
                        .map(|name| {
                            r.peers
                                .get(&**name, |_, e| {
                                    assert_eq!(e.addr, *addr, "{name} listed elsewhere");
                                    e.seq
                                })
                                .expect("a listed name is registered")
                        })
                        .collect();
                    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
                    listed += seqs.len();
                }
            });
        }
        assert_eq!(listed, n);
    }

    /// Registrations of several restoring threads (chunks of 65,536) meet at the same
    /// addresses and in the same shards: each is listed once, in join order, bounds kept, and
    /// a name in two threads' chunks is refused.
    #[test]
    fn a_parallel_restore_keeps_every_invariant() {
        let n = 3 * RESTORE_CHUNK + 17;
        let s = Settings {
            max_peers: 1_000_000,
            max_names_per_address: 4,
            ..Settings::default()
        };
        let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        // Four names an address, one from each quarter of the image (each another thread's
        // chunk), joined in the reverse of the image's order.
        let addr = |i: usize| {
            let k = i % (n / 4 + 1);
            SocketAddr::from(([10, (k >> 16) as u8, (k >> 8) as u8, k as u8], 7))
        };
        let seq = |i: usize| (n - i) as u64;
        let (r, done) = Registry::restore(&s, image_of(&names, addr, seq), 0, false).unwrap();
        assert_eq!(done.peers, n);
        check_tables(&r, n);
        assert_eq!(
            names_at(&r, addr(0)),
            [3 * (n / 4 + 1), 2 * (n / 4 + 1), n / 4 + 1, 0].map(|i| Name::from(&*names[i]))
        );
        // A fifth name at one of them is beyond --max-names-per-address.
        let five = Settings {
            max_names_per_address: 3,
            ..s.clone()
        };
        let err = Registry::restore(&five, image_of(&names, addr, seq), 0, false)
            .err()
            .unwrap();
        assert!(err.contains("--max-names-per-address"), "{err}");
        // The same name first and last: in two threads' chunks.
        let mut twice = names.clone();
        twice[n - 1] = twice[0].clone();
        let err = Registry::restore(&s, image_of(&twice, addr, seq), 0, false)
            .err()
            .unwrap();
        assert!(err.contains("twice"), "{err}");
        // Taken over by a relay of another size (other shard counts) from the tables' own
        // export: the same registrations, listed as they were.
        let bytes = postcard::to_stdvec(&r.export()).unwrap();
        for max_peers in [n, 10_000_000] {
            let other = Settings {
                max_peers,
                ..s.clone()
            };
            let image = postcard::from_bytes::<Image>(&bytes).unwrap();
            let (back, _) = Registry::restore(&other, image, 0, false).unwrap();
            check_tables(&back, n);
            assert_eq!(names_at(&back, addr(0)), names_at(&r, addr(0)));
        }
    }
}
