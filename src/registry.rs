//! The peer registry: who is registered, where, since when, and who watches whom.
//!
//! Shared by all workers and the reaper. Sharded (dashmap) so that workers rarely meet on a lock;
//! liveness timestamps are atomics, so the hot path (a relay's sender check and target lookup)
//! takes only shared read locks.
//!
//! Liveness is kept per name and per address: a datagram from an address refreshes the address
//! (one lookup, however many names share it), and a name is live while either its own time or
//! its address's is recent.
//!
//! Lock discipline: maps are locked in the order `peers`, then `by_addr`, `keys`, `watchers` or
//! `watching`; a guard of one of the latter is never held while `peers` (or another of them) is
//! locked, so no two threads can wait on each other. A claim or removal updates the latter while
//! it holds the name's `peers` entry, so that claims and reaps of one name never interleave.
//!
//! Size matters at a million peers: an entry is 48 bytes beside its name, addresses are packed
//! into 18 bytes, and what only watchers need lives in maps of its own.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;

use crate::auth::Key;
use dashmap::mapref::entry::Entry as MapEntry;

/// A registered name. Names of up to [`INLINE_NAME`] bytes (nearly all) are stored inline, so
/// that a lookup compares the key in the table's own memory and a registration allocates
/// nothing for it; longer ones are shared on the heap.
#[derive(Clone)]
pub struct Name(Repr);

/// The longest name stored inline.
pub const INLINE_NAME: usize = 22;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Heap(Arc<str>),
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        if s.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Name(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Name(Repr::Heap(Arc::from(s)))
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.0 {
            // SAFETY: inline bytes are only ever copied from a `&str`, up to `len`.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
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

/// One registration (its name is the key it is stored under).
#[derive(Debug)]
struct Entry {
    last_heard: AtomicU64,
    last_keepalive: AtomicU64,
    /// Registration number: lists read in join order, as the old relay's did, and the session
    /// token derives from it.
    seq: u64,
    addr: Packed,
    /// Moves so far: each move issues a new session token, sent only to the new address, so
    /// that echoing a token proves an address only where that token was sent.
    epoch: u16,
    /// When a refreshing `register` of this name was last announced (seconds; `u32::MAX`:
    /// never), so that repeating `register` cannot make the relay broadcast at will.
    announced_s: AtomicU32,
}

impl Entry {
    fn new(addr: SocketAddr, now_ms: u64, seq: u64) -> Entry {
        Entry {
            last_heard: AtomicU64::new(now_ms),
            last_keepalive: AtomicU64::new(now_ms),
            seq,
            addr: addr.into(),
            epoch: 0,
            announced_s: AtomicU32::new(u32::MAX),
        }
    }

    fn session(&self, tokens: &Tokens) -> Session {
        tokens.of(self.seq, self.epoch)
    }

    fn last_heard(&self) -> u64 {
        self.last_heard.load(Relaxed)
    }

    fn touch(&self, now_ms: u64) {
        self.last_heard.fetch_max(now_ms, Relaxed);
    }
}

/// Issues and checks session tokens. The token of registration number `seq` is the ChaCha20
/// keystream under a key drawn at start-up, with `seq` as the stream: unguessable without the
/// key, unique per registration (`seq` never repeats), and nothing to store in an entry.
struct Tokens {
    key: [u8; 32],
}

impl Tokens {
    fn of(&self, seq: u64, epoch: u16) -> Session {
        use rand::{RngCore, SeedableRng};
        let mut c = rand_chacha::ChaCha20Rng::from_seed(self.key);
        c.set_stream(seq);
        // One 16-word ChaCha block per epoch.
        c.set_word_pos(u128::from(epoch) * 16);
        let mut b = [0; 16];
        c.fill_bytes(&mut b);
        Session(b)
    }
}

/// The names at one address, when the address was last heard from, and whether it has proven
/// that it receives (by echoing a session token the relay sent it).
#[derive(Debug, Default)]
struct AtAddr {
    names: Vec<Name>,
    heard: AtomicU64,
    proven: AtomicBool,
    /// Bytes of credit used (high half) and when it last refilled (low half, tenths of a
    /// second), for replies to the address while it is unproven: kept here rather than in a
    /// hashed table so that a million registered addresses never share one.
    credit: AtomicU64,
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
    Refresh { proven: bool },
    Move,
    Replace,
    Refuse,
}

/// What became of a claim on a name (`register` or `keepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name was free (or stale) and is now registered here.
    Joined(Session),
    /// The name was already registered at this address; it is refreshed.
    Refreshed(Session),
    /// The name moved here from another address, proven by its session token.
    Moved(Session),
    /// The name is live at another address.
    InUse,
    /// The registry holds `max_peers` names.
    Full,
}

/// A removed registration, for announcing.
#[derive(Debug)]
pub struct Removed {
    /// The name.
    pub name: Name,
    /// Its last address.
    pub addr: SocketAddr,
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
}

/// The registry.
pub struct Registry {
    peers: DashMap<Name, Entry>,
    by_addr: DashMap<Packed, AtAddr>,
    /// Watched name → the names watching it.
    watchers: DashMap<Name, Vec<Name>>,
    /// Watching name → the names it watches.
    watching: DashMap<Name, Vec<Name>>,
    /// Name → the key it is bound to, for signed registrations, and the issue time of the
    /// latest cookie it signed (an older one is a replay).
    keys: DashMap<Name, (Key, u64)>,
    count: AtomicUsize,
    next_seq: AtomicU64,
    tokens: Tokens,
    timeout_ms: u64,
}

/// Shards per map: enough that a sweep holds any one shard only for a few thousand entries even
/// with a million peers.
const SHARDS: usize = 256;

impl Registry {
    /// An empty registry whose peers go stale after `timeout_ms` of silence.
    pub fn new(timeout_ms: u64) -> Registry {
        Registry {
            peers: DashMap::with_shard_amount(SHARDS),
            by_addr: DashMap::with_shard_amount(SHARDS),
            watchers: DashMap::with_shard_amount(SHARDS),
            watching: DashMap::with_shard_amount(SHARDS),
            keys: DashMap::with_shard_amount(SHARDS),
            count: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            tokens: Tokens {
                key: rand::random(),
            },
            timeout_ms,
        }
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

    /// Whether `e` is live: heard itself, or its address heard, within the timeout. The address
    /// is looked up only when the name's own time is old (see the lock discipline above).
    fn live(&self, e: &Entry, now_ms: u64) -> bool {
        self.fresh(e.last_heard(), now_ms) || self.fresh(self.addr_heard(e), now_ms)
    }

    /// The later of `e`'s own time and its address's, copied into `e` so that the address need
    /// not be looked up again until that time is old too.
    fn addr_heard(&self, e: &Entry) -> u64 {
        let t = self
            .by_addr
            .get(&e.addr)
            .map_or(0, |r| r.heard.load(Relaxed));
        e.touch(t);
        e.last_heard()
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
        // The secondary maps are updated while the name's entry is held (lock order: `peers`
        // first), so a concurrent reap or claim of the same name cannot interleave with them.
        match self.peers.entry(Name::from(name)) {
            MapEntry::Occupied(mut o) => {
                let key = o.key().clone();
                let live = self.live(o.get(), now_ms);
                let bound = self.keys.get(&key).map(|b| *b);
                let e = o.get_mut();
                let session = e.session(&self.tokens);
                let decision = if !live {
                    Decision::Replace
                } else {
                    match (proof, bound) {
                        // A refresh from the name's own address needs no proof.
                        (Proof::Token(t), _) if e.addr == here => Decision::Refresh {
                            proven: t == Some(session),
                        },
                        (Proof::Token(t), None) if t == Some(session) => Decision::Move,
                        // A signature over a cookie older than the last one is a replay (of a
                        // move back to an address the peer has left, say).
                        (Proof::Key(k, t), Some((b, bt))) if k == b && t < bt => Decision::Refuse,
                        (Proof::Key(k, _), Some((b, _))) if k == b && e.addr == here => {
                            Decision::Refresh { proven: true }
                        }
                        (Proof::Key(k, _), Some((b, _))) if k == b => Decision::Move,
                        // A live unsigned name is bound to the key that signs for it there.
                        (Proof::Key(..), None) if e.addr == here => {
                            Decision::Refresh { proven: true }
                        }
                        _ => Decision::Refuse,
                    }
                };
                let claim = match decision {
                    Decision::Refuse => return Claim::InUse,
                    Decision::Refresh { proven } => {
                        e.touch(now_ms);
                        // The token or cookie was sent to this very address: echoing it proves
                        // the address receives.
                        if proven {
                            if let Some(r) = self.by_addr.get(&here) {
                                r.proven.store(true, Relaxed);
                            }
                        }
                        if let Proof::Key(k, t) = proof {
                            self.keys.insert(key, (k, t));
                        }
                        return Claim::Refreshed(session);
                    }
                    Decision::Move => {
                        let old = e.addr;
                        e.addr = here;
                        e.epoch = e.epoch.wrapping_add(1);
                        e.touch(now_ms);
                        self.unlink_addr(&key, old);
                        Claim::Moved(e.session(&self.tokens))
                    }
                    Decision::Replace => {
                        let seq = self.next_seq.fetch_add(1, Relaxed);
                        let old = std::mem::replace(e, Entry::new(addr, now_ms, seq));
                        self.unlink(&key, &old);
                        Claim::Joined(self.tokens.of(seq, 0))
                    }
                };
                self.link(key, here, proof, now_ms);
                claim
            }
            MapEntry::Vacant(v) => {
                if self.count.load(Relaxed) >= max_peers {
                    return Claim::Full;
                }
                let key = v.key().clone();
                let seq = self.next_seq.fetch_add(1, Relaxed);
                let _held = v.insert(Entry::new(addr, now_ms, seq));
                self.count.fetch_add(1, Relaxed);
                self.link(key, here, proof, now_ms);
                Claim::Joined(self.tokens.of(seq, 0))
            }
        }
    }

    /// Links a name just claimed at `here` into the secondary maps.
    fn link(&self, key: Name, here: Packed, proof: Proof, now_ms: u64) {
        if let Proof::Key(k, t) = proof {
            self.keys.insert(key.clone(), (k, t));
        }
        let at = self.by_addr.entry(here).or_default();
        at.heard.fetch_max(now_ms, Relaxed);
        // A signed claim echoed a cookie sent to this address.
        if matches!(proof, Proof::Key(..)) {
            at.proven.store(true, Relaxed);
        }
        at.map(|a| &mut a.names).push(key);
    }

    /// Drops the secondary-map links of a registration that is gone from `peers`.
    fn unlink(&self, name: &Name, old: &Entry) {
        self.unlink_addr(name, old.addr);
        self.keys.remove(name);
        let Some((_, watched)) = self.watching.remove(name) else {
            return;
        };
        for watched in watched {
            if let MapEntry::Occupied(mut o) = self.watchers.entry(watched) {
                o.get_mut().retain(|w| w != name);
                if o.get().is_empty() {
                    o.remove();
                }
            }
        }
    }

    fn unlink_addr(&self, name: &Name, addr: Packed) {
        if let MapEntry::Occupied(mut o) = self.by_addr.entry(addr) {
            o.get_mut().names.retain(|n| n != name);
            if o.get().names.is_empty() {
                o.remove();
            }
        }
    }

    /// The sender check of a relay: true (and every name at `addr` refreshed) if `name` is live
    /// at `addr`.
    pub fn touch_sender(&self, name: &str, addr: SocketAddr, now_ms: u64) -> bool {
        let packed = Packed::from(addr);
        match self.peers.get(name) {
            Some(e) if e.addr == packed && self.live(&e, now_ms) => {
                e.touch(now_ms);
                drop(e);
                self.touch_packed(packed, now_ms);
                true
            }
            _ => false,
        }
    }

    /// The address of `name` if it is live.
    pub fn addr_of(&self, name: &str, now_ms: u64) -> Option<SocketAddr> {
        self.peers
            .get(name)
            .filter(|e| self.live(e, now_ms))
            .map(|e| e.addr.get())
    }

    /// Whether a refreshing `register` of `name` may be announced now: the first may, then one
    /// per `every_ms`.
    pub fn announce_refresh(&self, name: &str, now_ms: u64, every_ms: u64) -> bool {
        let Some(e) = self.peers.get(name) else {
            return false;
        };
        let now_s = (now_ms / 1000) as u32;
        let every_s = every_ms.div_ceil(1000) as u32;
        e.announced_s
            .fetch_update(Relaxed, Relaxed, |last| {
                (last == u32::MAX || now_s.saturating_sub(last) >= every_s).then_some(now_s)
            })
            .is_ok()
    }

    /// Spends `bytes` of the reply credit of registered address `addr` (`burst` bytes, refilling
    /// `rate` bytes a second) if it has them; `None` if no name is registered there.
    pub fn spend_credit(
        &self,
        addr: SocketAddr,
        bytes: u64,
        now_ms: u64,
        burst: u64,
        rate: u64,
    ) -> Option<bool> {
        let r = self.by_addr.get(&addr.into())?;
        let now_ds = (now_ms / 100) as u32;
        let ok = r
            .credit
            .fetch_update(Relaxed, Relaxed, |state| {
                let (used, at) = ((state >> 32) as u32, state as u32);
                let refill = u64::from(now_ds.saturating_sub(at)) * rate / 10;
                let used = u64::from(used).saturating_sub(refill);
                (used + bytes <= burst).then(|| ((used + bytes) << 32) | u64::from(now_ds.max(at)))
            })
            .is_ok();
        Some(ok)
    }

    /// Whether `addr` has proven that it receives what the relay sends it.
    pub fn proven(&self, addr: SocketAddr) -> bool {
        self.by_addr
            .get(&addr.into())
            .is_some_and(|r| r.proven.load(Relaxed))
    }

    /// Whether any name is registered at `addr`.
    pub fn has_addr(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains_key(&addr.into())
    }

    /// The oldest name registered at `addr`.
    pub fn first_name_at(&self, addr: SocketAddr) -> Option<Name> {
        self.by_addr
            .get(&addr.into())
            .and_then(|r| r.names.first().cloned())
    }

    /// Marks every name at `addr` live: any datagram from a peer proves it is there.
    pub fn touch_addr(&self, addr: SocketAddr, now_ms: u64) {
        self.touch_packed(addr.into(), now_ms);
    }

    fn touch_packed(&self, addr: Packed, now_ms: u64) {
        if let Some(r) = self.by_addr.get(&addr) {
            r.heard.fetch_max(now_ms, Relaxed);
        }
    }

    /// The session of `name` if it is live at `addr`.
    pub fn session_at(&self, name: &str, addr: SocketAddr, now_ms: u64) -> Option<Session> {
        self.peers
            .get(name)
            .filter(|e| e.addr == Packed::from(addr) && self.live(e, now_ms))
            .map(|e| e.session(&self.tokens))
    }

    /// Removes `name` if `may(entry)` allows it.
    fn remove_if(&self, name: &str, may: impl FnOnce(&Entry) -> bool) -> Option<Removed> {
        let MapEntry::Occupied(o) = self.peers.entry(Name::from(name)) else {
            return None;
        };
        if !may(o.get()) {
            return None;
        }
        // Unlinked while the entry is held, as in `claim`.
        let key = o.key().clone();
        self.unlink(&key, o.get());
        let (_, old) = o.remove_entry();
        self.count.fetch_sub(1, Relaxed);
        Some(Removed {
            name: key,
            addr: old.addr.get(),
        })
    }

    /// Removes `name` if it is live at `addr`, or its session token is shown. A name bound to a
    /// key needs both: its address alone can be forged, and a signed name must not be freed for
    /// another key by anyone but its holder.
    pub fn unregister(
        &self,
        name: &str,
        addr: SocketAddr,
        token: Option<Session>,
        now_ms: u64,
    ) -> Option<Removed> {
        self.remove_if(name, |e| {
            let here = e.addr == Packed::from(addr);
            let shown = token == Some(e.session(&self.tokens));
            let signed = self.keys.contains_key(name);
            self.live(e, now_ms) && if signed { here && shown } else { here || shown }
        })
    }

    /// Removes `name` if it is stale.
    pub fn reap(&self, name: &str, now_ms: u64) -> Option<Removed> {
        self.remove_if(name, |e| !self.live(e, now_ms))
    }

    /// Adds `names` to what `watcher` watches, up to `max` in all. Returns how many of `names`
    /// did not fit, or `None` if `watcher` is not registered.
    pub fn watch(&self, watcher: &str, names: &[Name], max: usize) -> Option<usize> {
        // The watcher's entry is held while its watch lists change (lock order: `peers` first),
        // so that a reap cannot remove it in between and leave the lists to a later owner.
        let held = self.peers.get(watcher)?;
        let key = held.key().clone();
        let mut added = Vec::new();
        let mut left_out = 0;
        {
            let mut watching = self.watching.entry(key.clone()).or_default();
            for n in names {
                if watching.contains(n) {
                    continue;
                }
                if watching.len() >= max {
                    left_out += 1;
                } else {
                    watching.push(n.clone());
                    added.push(n.clone());
                }
            }
        }
        for n in added {
            self.watchers.entry(n).or_default().push(key.clone());
        }
        drop(held);
        Some(left_out)
    }

    /// Addresses of the live peers that watch `name`.
    pub fn watchers_of(&self, name: &str, now_ms: u64) -> Vec<SocketAddr> {
        let ws = self
            .watchers
            .get(name)
            .map(|v| v.clone())
            .unwrap_or_default();
        ws.iter().filter_map(|w| self.addr_of(w, now_ms)).collect()
    }

    /// Up to `limit` live peers, in no particular order.
    pub fn live_peers(&self, now_ms: u64, limit: usize) -> Vec<Live> {
        self.peers
            .iter()
            .filter(|r| self.live(r.value(), now_ms))
            .take(limit)
            .map(|r| Live {
                name: r.key().clone(),
                addr: r.value().addr.get(),
                seq: r.value().seq,
            })
            .collect()
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
        for shard in self.peers.shards() {
            {
                let table = shard.read();
                // SAFETY: the buckets are only read, while the shard's read lock is held.
                for bucket in unsafe { table.iter() } {
                    // SAFETY: as above; the bucket is full and outlives this iteration.
                    let (name, value) = unsafe { bucket.as_ref() };
                    let e = value.get();
                    if !self.live(e, now_ms) {
                        stale.push(name.clone());
                    } else if quiet(e.last_keepalive.load(Relaxed))
                        && quiet(e.last_heard())
                        && quiet(self.addr_heard(e))
                    {
                        e.last_keepalive.store(now_ms, Relaxed);
                        due.push(Live {
                            name: name.clone(),
                            addr: e.addr.get(),
                            seq: e.seq,
                        });
                    }
                }
            }
            if !stale.is_empty() || !due.is_empty() {
                visit(&mut stale, &mut due);
                stale.clear();
                due.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The names registered at `addr`, oldest first.
    fn names_at(r: &Registry, addr: SocketAddr) -> Vec<Name> {
        r.by_addr
            .get(&addr.into())
            .map(|at| at.names.clone())
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
        let r = Registry::new(1000);
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
            Claim::Joined(s2) => assert_ne!(s2, s),
            c => panic!("{c:?}"),
        }
        assert!(!r.has_addr(a("2.2.2.2:2")));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn full_registry_refuses_new_names_only() {
        let r = Registry::new(1000);
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
        let r = Registry::new(1000);
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
        let r = Registry::new(1000);
        r.claim("w", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        let names: Vec<Name> = vec!["x".into(), "y".into(), "z".into()];
        assert_eq!(r.watch("w", &names, 2), Some(1));
        assert_eq!(r.watch("w", &names[..1], 2), Some(0));
        assert_eq!(r.watchers_of("x", 0), vec![a("1.1.1.1:1")]);
        assert!(r.watchers_of("z", 0).is_empty());
        assert_eq!(r.watch("nobody", &names, 2), None);
        r.unregister("w", a("1.1.1.1:1"), None, 0).unwrap();
        assert!(r.watchers_of("x", 0).is_empty());
        assert!(r.watchers.is_empty());
    }

    #[test]
    fn scan_finds_stale_and_keepalive_due() {
        let r = Registry::new(1000);
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
    fn a_datagram_from_an_address_keeps_every_name_there_live() {
        let r = Registry::new(1000);
        r.claim("s1", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        r.claim("s2", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        r.claim("other", a("1.1.1.1:2"), Proof::Token(None), 0, 10);
        // Only s1 speaks, and only by name; s2 is kept by its address.
        assert!(r.touch_sender("s1", a("1.1.1.1:1"), 900));
        r.touch_addr(a("1.1.1.1:1"), 1800);
        assert_eq!(r.addr_of("s2", 2500), Some(a("1.1.1.1:1")));
        let (stale, due) = scan_all(&r, 2100, 500);
        assert_eq!(stale, vec![Name::from("other")]);
        assert!(due.is_empty(), "the address was heard within the interval");
        assert_eq!(
            scan_all(&r, 2300, 500).1.len(),
            2,
            "now both are owed a keepalive"
        );
        assert!(r.reap("s2", 2500).is_none());
        assert!(r.reap("s2", 2801).is_some());
    }

    #[test]
    fn an_address_is_proven_by_echoing_its_token_there() {
        let r = Registry::new(1000);
        let Claim::Joined(s) = r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 0, 10) else {
            panic!()
        };
        assert!(!r.proven(a("1.1.1.1:1")));
        r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 1, 10);
        assert!(
            !r.proven(a("1.1.1.1:1")),
            "a refresh without the token proves nothing"
        );
        // Shown from elsewhere, the token moves the name (issuing a new one, sent there) but
        // proves nothing of the new address; nor does echoing the old one from there, which a
        // forger holding it could do.
        let Claim::Moved(s2) = r.claim("a", a("2.2.2.2:2"), Proof::Token(Some(s)), 2, 10) else {
            panic!()
        };
        assert_ne!(s2, s);
        assert!(!r.proven(a("2.2.2.2:2")));
        assert!(matches!(
            r.claim("a", a("2.2.2.2:2"), Proof::Token(Some(s)), 3, 10),
            Claim::Refreshed(_)
        ));
        assert!(!r.proven(a("2.2.2.2:2")));
        assert_eq!(
            r.claim("a", a("1.1.1.1:1"), Proof::Token(Some(s)), 3, 10),
            Claim::InUse,
            "the old token moves nothing any more"
        );
        r.claim("a", a("2.2.2.2:2"), Proof::Token(Some(s2)), 4, 10);
        assert!(r.proven(a("2.2.2.2:2")));
    }

    #[test]
    fn a_signed_name_is_bound_to_its_key_while_live() {
        let r = Registry::new(1000);
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let here = a("1.1.1.1:1");
        assert!(matches!(
            r.claim("s", here, Proof::Key(k1, 0), 0, 10),
            Claim::Joined(_)
        ));
        assert!(r.proven(here), "a signed claim echoed a cookie sent here");
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
            Claim::Joined(_)
        ));
        assert!(r.keys.get("s").is_some_and(|b| b.0 == k2));
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
        assert_eq!(size_of::<Packed>(), 18);
        assert_eq!(size_of::<Name>(), 24);
        let long = "x".repeat(INLINE_NAME + 1);
        for n in ["", "Alice", "é🙂", &long[1..], &long] {
            assert_eq!(&*Name::from(n), n);
        }
        assert!(size_of::<Entry>() <= 48);
        let r = Registry::new(60_000);
        r.claim("n", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        assert!(r.announce_refresh("n", 0, 10_000));
        assert!(!r.announce_refresh("n", 9_000, 10_000));
        assert!(r.announce_refresh("n", 10_000, 10_000));
        assert!(!r.announce_refresh("nobody", 0, 10_000));
    }

    #[test]
    fn session_round_trips() {
        let t = Tokens { key: [7; 32] };
        assert_ne!(t.of(1, 0), t.of(2, 0));
        assert_ne!(t.of(1, 0), t.of(1, 1));
        assert_ne!(t.of(1, 0), Tokens { key: [8; 32] }.of(1, 0));
        let s = t.of(1, 0);
        assert_eq!(Session::parse(&s.to_hex()), Some(s));
        assert_eq!(Session::parse("xyz"), None);
        let signed = format!("+{}", &s.to_hex()[1..]);
        assert_eq!(Session::parse(&signed), None);
    }
}
