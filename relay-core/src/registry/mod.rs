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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;

use crate::auth::Key;
use crate::reservations::Reservations;
use crate::settings::Settings;
use crate::shards::Sharded;

mod claims;
mod displace;
mod entry;
mod image;
mod name;
mod packed;
mod restore;
mod session;
mod sweep;
#[cfg(test)]
mod tests;
mod watch;

pub use claims::{Claim, Event, Proof, Removed};
pub use image::{Export, Image, PeerImage, Peers};
pub use name::{INLINE_NAME, Name};
pub use restore::Restored;
pub use session::Session;
pub use sweep::Live;

use entry::{Entry, secs};
use packed::{AtAddr, Packed};
use session::Tokens;
use watch::{Watcher, Watching};

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
}
