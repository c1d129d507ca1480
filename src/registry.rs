//! The peer registry: who is registered, where, since when, and who watches whom.
//!
//! Shared by all workers and the reaper. Sharded (dashmap) so that workers rarely meet on a lock;
//! liveness timestamps are atomics, so the hot path (a relay's sender check and target lookup)
//! takes only shared read locks. Lock discipline: no guard of `peers` is held while another map
//! (or another key of `peers`) is locked, so no two threads can wait on each other.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

/// A registered name, shared between the registry's maps.
pub type Name = Arc<str>;

/// The opaque token a registration is given, proving later that a moved peer is the same one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Session([u8; 16]);

/// A credential: kept out of logs.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

impl Session {
    /// A fresh unguessable token.
    pub fn random() -> Session {
        let mut b = [0u8; 16];
        // The OS random source does not fail on Linux once booted; a zero token would still be
        // unique per peer only by luck, so treat failure as fatal.
        getrandom::fill(&mut b).expect("OS random source");
        Session(b)
    }

    /// Parses the wire form (32 lowercase or uppercase hex digits).
    pub fn parse(s: &str) -> Option<Session> {
        let s = s.as_bytes();
        if s.len() != 32 {
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

/// One registration.
#[derive(Debug)]
pub struct Entry {
    /// The public address the name is registered at.
    pub addr: SocketAddr,
    /// The registration's token.
    pub session: Session,
    /// Registration order, so that lists read in join order as the old relay's did.
    pub seq: u64,
    last_heard: AtomicU64,
    last_keepalive: AtomicU64,
    /// Names this peer watches.
    pub watching: Vec<Name>,
}

impl Entry {
    fn new(addr: SocketAddr, now_ms: u64, seq: u64) -> Entry {
        Entry {
            addr,
            session: Session::random(),
            seq,
            last_heard: AtomicU64::new(now_ms),
            last_keepalive: AtomicU64::new(now_ms),
            watching: Vec::new(),
        }
    }

    /// When the relay last heard from this peer (monotonic ms).
    pub fn last_heard(&self) -> u64 {
        self.last_heard.load(Relaxed)
    }

    fn touch(&self, now_ms: u64) {
        self.last_heard.fetch_max(now_ms, Relaxed);
    }
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
    by_addr: DashMap<SocketAddr, Vec<Name>>,
    watchers: DashMap<Name, Vec<Name>>,
    count: AtomicUsize,
    next_seq: AtomicU64,
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
            count: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
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

    fn live(&self, e: &Entry, now_ms: u64) -> bool {
        now_ms.saturating_sub(e.last_heard()) <= self.timeout_ms
    }

    /// Claims `name` for `addr`, following the rules of Part 2 (live names stay with their address
    /// unless the session token is shown; stale ones are free).
    pub fn claim(
        &self,
        name: &str,
        addr: SocketAddr,
        token: Option<Session>,
        now_ms: u64,
        max_peers: usize,
    ) -> Claim {
        let mut replaced = None;
        let mut moved_from = None;
        let key: Name;
        let claim = match self.peers.entry(Arc::from(name)) {
            MapEntry::Occupied(mut o) => {
                key = o.key().clone();
                let live = self.live(o.get(), now_ms);
                let e = o.get_mut();
                if live && e.addr == addr {
                    e.touch(now_ms);
                    return Claim::Refreshed(e.session);
                } else if live && token == Some(e.session) {
                    moved_from = Some(e.addr);
                    e.addr = addr;
                    e.touch(now_ms);
                    Claim::Moved(e.session)
                } else if live {
                    return Claim::InUse;
                } else {
                    let fresh = Entry::new(addr, now_ms, self.next_seq.fetch_add(1, Relaxed));
                    let session = fresh.session;
                    replaced = Some(std::mem::replace(e, fresh));
                    Claim::Joined(session)
                }
            }
            MapEntry::Vacant(v) => {
                if self.count.load(Relaxed) >= max_peers {
                    return Claim::Full;
                }
                key = v.key().clone();
                let fresh = Entry::new(addr, now_ms, self.next_seq.fetch_add(1, Relaxed));
                let session = fresh.session;
                v.insert(fresh);
                self.count.fetch_add(1, Relaxed);
                Claim::Joined(session)
            }
        };
        if let Some(old) = replaced {
            self.unlink(&key, old);
        }
        if let Some(old_addr) = moved_from {
            self.unlink_addr(&key, old_addr);
        }
        self.by_addr.entry(addr).or_default().push(key);
        claim
    }

    /// Drops the secondary-map links of a registration that is gone from `peers`.
    fn unlink(&self, name: &Name, old: Entry) {
        self.unlink_addr(name, old.addr);
        for watched in old.watching {
            if let MapEntry::Occupied(mut o) = self.watchers.entry(watched) {
                o.get_mut().retain(|w| w != name);
                if o.get().is_empty() {
                    o.remove();
                }
            }
        }
    }

    fn unlink_addr(&self, name: &Name, addr: SocketAddr) {
        if let MapEntry::Occupied(mut o) = self.by_addr.entry(addr) {
            o.get_mut().retain(|n| n != name);
            if o.get().is_empty() {
                o.remove();
            }
        }
    }

    /// The sender check of a relay: true (and every name at `addr` refreshed) if `name` is live
    /// at `addr`.
    pub fn touch_sender(&self, name: &str, addr: SocketAddr, now_ms: u64) -> bool {
        match self.peers.get(name) {
            Some(e) if e.addr == addr && self.live(&e, now_ms) => {
                e.touch(now_ms);
                drop(e);
                if self.shared_addr(addr) {
                    self.touch_addr(addr, now_ms);
                }
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
            .map(|e| e.addr)
    }

    /// Whether any name is registered at `addr`.
    pub fn has_addr(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains_key(&addr)
    }

    /// The names registered at `addr`, oldest first.
    pub fn names_at(&self, addr: SocketAddr) -> Vec<Name> {
        self.by_addr
            .get(&addr)
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The oldest name registered at `addr`.
    pub fn first_name_at(&self, addr: SocketAddr) -> Option<Name> {
        self.by_addr.get(&addr).and_then(|v| v.first().cloned())
    }

    /// Marks every name at `addr` live: any datagram from a peer proves it is there.
    pub fn touch_addr(&self, addr: SocketAddr, now_ms: u64) {
        // Names are copied out (cheap `Arc` clones, on the stack for the usual few) so that no
        // `by_addr` lock is held while a `peers` shard is locked: `claim` takes them the other
        // way round.
        const INLINE: usize = 8;
        let mut inline: [Option<Name>; INLINE] = Default::default();
        let mut spill = Vec::new();
        match self.by_addr.get(&addr) {
            Some(v) if v.len() <= INLINE => {
                for (slot, n) in inline.iter_mut().zip(v.iter()) {
                    *slot = Some(n.clone());
                }
            }
            Some(v) => spill = v.clone(),
            None => return,
        }
        for name in inline.iter().flatten().chain(spill.iter()) {
            if let Some(e) = self.peers.get(name) {
                if e.addr == addr {
                    e.touch(now_ms);
                }
            }
        }
    }

    /// Whether another name than the one just heard shares `addr`, so needs touching too.
    pub fn shared_addr(&self, addr: SocketAddr) -> bool {
        self.by_addr.get(&addr).is_some_and(|v| v.len() > 1)
    }

    /// The session of `name` if it is live at `addr`.
    pub fn session_at(&self, name: &str, addr: SocketAddr, now_ms: u64) -> Option<Session> {
        self.peers
            .get(name)
            .filter(|e| e.addr == addr && self.live(e, now_ms))
            .map(|e| e.session)
    }

    /// Removes `name` if `may(entry)` allows it.
    pub fn remove_if(&self, name: &str, may: impl FnOnce(&Entry) -> bool) -> Option<Removed> {
        let (key, old) = self.peers.remove_if(name, |_, e| may(e))?;
        self.count.fetch_sub(1, Relaxed);
        let addr = old.addr;
        self.unlink(&key, old);
        Some(Removed { name: key, addr })
    }

    /// Removes `name` if it is live at `addr`, or its session token is shown.
    pub fn unregister(
        &self,
        name: &str,
        addr: SocketAddr,
        token: Option<Session>,
        now_ms: u64,
    ) -> Option<Removed> {
        self.remove_if(name, |e| {
            self.live(e, now_ms) && (e.addr == addr || token == Some(e.session))
        })
    }

    /// Removes `name` if it is stale.
    pub fn reap(&self, name: &str, now_ms: u64) -> Option<Removed> {
        self.remove_if(name, |e| !self.live(e, now_ms))
    }

    /// Adds `names` to what `watcher` watches, up to `max` in all. Returns how many of `names`
    /// did not fit, or `None` if `watcher` is not registered.
    pub fn watch(&self, watcher: &str, names: &[Name], max: usize) -> Option<usize> {
        let (key, added) = {
            let mut e = self.peers.get_mut(watcher)?;
            let mut added = Vec::new();
            let mut left_out = 0;
            for n in names {
                if e.watching.contains(n) {
                    continue;
                }
                if e.watching.len() >= max {
                    left_out += 1;
                } else {
                    e.watching.push(n.clone());
                    added.push(n.clone());
                }
            }
            let key: Name = Arc::from(watcher);
            (key, (added, left_out))
        };
        let (added, left_out) = added;
        for n in added {
            self.watchers.entry(n).or_default().push(key.clone());
        }
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
                addr: r.value().addr,
                seq: r.value().seq,
            })
            .collect()
    }

    /// One pass over every shard in turn: the names gone stale, and the live peers not heard
    /// from nor sent a keepalive within `keepalive_ms` (those are marked as sent one now).
    pub fn scan(&self, now_ms: u64, keepalive_ms: u64) -> (Vec<Name>, Vec<Live>) {
        let mut stale = Vec::new();
        let mut due = Vec::new();
        for r in self.peers.iter() {
            let e = r.value();
            if !self.live(e, now_ms) {
                stale.push(r.key().clone());
            } else if now_ms.saturating_sub(e.last_heard()) >= keepalive_ms
                && now_ms.saturating_sub(e.last_keepalive.load(Relaxed)) >= keepalive_ms
            {
                e.last_keepalive.store(now_ms, Relaxed);
                due.push(Live {
                    name: r.key().clone(),
                    addr: e.addr,
                    seq: e.seq,
                });
            }
        }
        (stale, due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn claim_rules() {
        let r = Registry::new(1000);
        let Claim::Joined(s) = r.claim("alice", a("1.1.1.1:1"), None, 0, 10) else {
            panic!()
        };
        assert_eq!(
            r.claim("alice", a("1.1.1.1:1"), None, 10, 10),
            Claim::Refreshed(s)
        );
        assert_eq!(r.claim("alice", a("2.2.2.2:2"), None, 20, 10), Claim::InUse);
        assert_eq!(
            r.claim("alice", a("2.2.2.2:2"), Some(s), 30, 10),
            Claim::Moved(s)
        );
        assert_eq!(r.addr_of("alice", 30), Some(a("2.2.2.2:2")));
        assert!(!r.has_addr(a("1.1.1.1:1")));
        assert_eq!(r.names_at(a("2.2.2.2:2")).len(), 1);
        // Stale: anyone may take it, with a new session.
        match r.claim("alice", a("3.3.3.3:3"), None, 2000, 10) {
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
            r.claim("a", a("1.1.1.1:1"), None, 0, 1),
            Claim::Joined(_)
        ));
        assert_eq!(r.claim("b", a("1.1.1.1:1"), None, 0, 1), Claim::Full);
        assert!(matches!(
            r.claim("a", a("1.1.1.1:1"), None, 0, 1),
            Claim::Refreshed(_)
        ));
    }

    #[test]
    fn sender_check_and_liveness() {
        let r = Registry::new(1000);
        r.claim("a", a("1.1.1.1:1"), None, 0, 10);
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
        r.claim("w", a("1.1.1.1:1"), None, 0, 10);
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
        r.claim("old", a("1.1.1.1:1"), None, 0, 10);
        r.claim("quiet", a("1.1.1.1:2"), None, 600, 10);
        r.claim("fresh", a("1.1.1.1:3"), None, 1400, 10);
        let (stale, due) = r.scan(1500, 500);
        assert_eq!(stale, vec![Name::from("old")]);
        assert_eq!(due.len(), 1);
        assert_eq!(&*due[0].name, "quiet");
        // Just sent: not due again until another interval passes.
        assert!(r.scan(1600, 500).1.is_empty());
    }

    #[test]
    fn session_round_trips() {
        let s = Session::random();
        assert_eq!(Session::parse(&s.to_hex()), Some(s));
        assert_eq!(Session::parse("xyz"), None);
    }
}
