//! The channel table (Part 4), shared by every worker: each bound pair is two halves, one per
//! direction, found by the number their owner sends frames under.
//!
//! A frame is routed by its number alone, without the name registry: the half holds its owner's
//! address (the only one its frames are accepted from), where the frame goes and the number the
//! other side knows the channel by. Every change (bind, unbind, a registry event) is made under
//! one lock, so the halves of a pair and the per-name index never disagree; frames only read.
//! Numbers are random, non-zero and never reused while bound. A peer may bind `--max-channels`
//! pairs and be bound by four times as many; its host may bind `--max-channels-per-host`; the
//! relay holds `--max-channels-total`. Binding counts against the binder only, so that nobody can
//! spend another peer's quota of channels it binds itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::addr::host_key;
use crate::registry::{Event, Name};
use crate::settings::Settings;
use crate::shards::Sharded;

/// A frame refreshes its sender's registration at most this often (tenths of a second), so that
/// the hot path touches the name registry about once a second per channel.
const TOUCH_EVERY_DS: u32 = 10;

/// One direction of a bound pair.
struct Half {
    /// The owner's name and the only address its frames are accepted from.
    owner: Name,
    from: SocketAddr,
    /// The other side's name, where the frames go, and its number for the channel.
    peer: Name,
    to: SocketAddr,
    peer_number: u32,
    /// The binder's host when it bound the pair (on the binder's half only), whose count it is.
    binder_host: Option<[u8; 9]>,
    /// When a frame last refreshed the owner (tenths of a second since start).
    touched_ds: AtomicU32,
}

/// How many channels bound to a peer by others it may hold, per channel it may bind itself.
const INCOMING_PER_OWN: usize = 4;

/// Where a frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The recipient's address.
    pub to: SocketAddr,
    /// The number the recipient knows the channel by (written into the frame).
    pub number: u32,
    /// The sender's name, when this frame should keep it live in the registry.
    pub touch: Option<Name>,
}

/// Why a frame is not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No channel has that number.
    Gone,
    /// The channel is not this address's.
    WrongSource,
}

/// Why a `bind` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// One of the two peers, or its host, holds as many channels as it may; or the relay does.
    Limit,
}

/// A pair bound: the binder's number and the other side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The number the binder sends under.
    pub mine: u32,
    /// The number the other side sends under.
    pub theirs: u32,
    /// Whether the pair is new (the other side has not been told yet).
    pub new: bool,
}

/// A channel end to tell that it is closed: its owner's name and address, and its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The name that held this end.
    pub name: Name,
    /// Its address.
    pub to: SocketAddr,
    /// Its number for the channel.
    pub number: u32,
}

#[derive(Default)]
struct Index {
    /// The numbers each name sends under.
    by_name: HashMap<Name, Vec<u32>>,
    /// Pairs each name bound itself.
    bound_by: HashMap<Name, usize>,
    /// Pairs bound from each host.
    per_host: HashMap<[u8; 9], usize>,
    /// Pairs bound.
    pairs: usize,
}

/// Every bound channel.
pub struct Channels {
    /// Sized for `--max-channels-total` pairs, two halves each (see [`Sharded`]).
    halves: Sharded<u32, Half>,
    index: Mutex<Index>,
    /// The bounds in force, which a reload may change ([`Channels::retune`]); lowered below
    /// what is bound, the pairs stay and new ones are refused. The halves stay sized for
    /// `--max-channels-total` at start; beyond it they grow as any hash table does.
    max_per_peer: AtomicUsize,
    max_per_host: AtomicUsize,
    max_total: AtomicUsize,
}

impl Channels {
    /// An empty table with the bounds `s` configures.
    pub fn new(s: &Settings) -> Channels {
        Channels {
            halves: Sharded::new(s.max_channels_total.saturating_mul(2)),
            index: Mutex::default(),
            max_per_peer: AtomicUsize::new(s.max_channels),
            max_per_host: AtomicUsize::new(s.max_channels_per_host),
            max_total: AtomicUsize::new(s.max_channels_total),
        }
    }

    /// Puts in force the bounds of `s` (a reload): `--max-channels`, `--max-channels-per-host`
    /// and `--max-channels-total`.
    pub fn retune(&self, s: &Settings) {
        self.max_per_peer.store(s.max_channels, Relaxed);
        self.max_per_host.store(s.max_channels_per_host, Relaxed);
        self.max_total.store(s.max_channels_total, Relaxed);
    }

    /// Pairs bound now.
    pub fn len(&self) -> usize {
        self.lock().pairs
    }

    /// Whether no pair is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes a frame sent under `number` from `from` at `now_ms`: the hot path.
    pub fn route(&self, number: u32, from: SocketAddr, now_ms: u64) -> Result<Route, Miss> {
        let now_ds = (now_ms / 100) as u32;
        let found = self.halves.get(&number, |_, h| {
            if h.from != from {
                return Err(Miss::WrongSource);
            }
            let last = h.touched_ds.load(Relaxed);
            let touch = (now_ds.wrapping_sub(last) >= TOUCH_EVERY_DS).then(|| {
                h.touched_ds.store(now_ds, Relaxed);
                h.owner.clone()
            });
            Ok(Route {
                to: h.to,
                number: h.peer_number,
                touch,
            })
        });
        found.unwrap_or(Err(Miss::Gone))
    }

    /// Binds `me` (at `my_addr`) to `peer` (at `peer_addr`), or returns the pair's numbers if
    /// they are bound already.
    pub fn bind(
        &self,
        me: &Name,
        my_addr: SocketAddr,
        peer: &Name,
        peer_addr: SocketAddr,
    ) -> Result<Bound, Full> {
        let mut ix = self.lock();
        if let Some(&mine) = ix.by_name.get(me).and_then(|ns| {
            ns.iter()
                .find(|n| self.halves.get(n, |_, h| h.peer == *peer).unwrap_or(false))
        }) {
            let theirs = self.halves.get(&mine, |_, h| h.peer_number).unwrap_or(0);
            return Ok(Bound {
                mine,
                theirs,
                new: false,
            });
        }
        let own = |ix: &Index, n: &Name| ix.bound_by.get(n).copied().unwrap_or(0);
        let all = |ix: &Index, n: &Name| ix.by_name.get(n).map_or(0, Vec::len);
        let host = host_key(my_addr.ip());
        let from_host = ix.per_host.get(&host).copied().unwrap_or(0);
        let incoming = all(&ix, peer) - own(&ix, peer);
        let per_peer = self.max_per_peer.load(Relaxed);
        if ix.pairs >= self.max_total.load(Relaxed)
            || own(&ix, me) >= per_peer
            || from_host >= self.max_per_host.load(Relaxed)
            || incoming >= INCOMING_PER_OWN * per_peer
        {
            return Err(Full::Limit);
        }
        let mine = self.fresh_number();
        let theirs = loop {
            let n = self.fresh_number();
            if n != mine {
                break n;
            }
        };
        let half = |owner: &Name, from, peer: &Name, to, peer_number, binder_host| Half {
            owner: owner.clone(),
            from,
            peer: peer.clone(),
            to,
            peer_number,
            binder_host,
            touched_ds: AtomicU32::new(0),
        };
        self.halves
            .insert(mine, half(me, my_addr, peer, peer_addr, theirs, Some(host)));
        self.halves
            .insert(theirs, half(peer, peer_addr, me, my_addr, mine, None));
        ix.by_name.entry(me.clone()).or_default().push(mine);
        ix.by_name.entry(peer.clone()).or_default().push(theirs);
        *ix.bound_by.entry(me.clone()).or_default() += 1;
        *ix.per_host.entry(host).or_default() += 1;
        ix.pairs += 1;
        Ok(Bound {
            mine,
            theirs,
            new: true,
        })
    }

    /// A random non-zero number no bound half has. Called under the index lock, which every
    /// insertion holds, so the number stays free until it is inserted.
    fn fresh_number(&self) -> u32 {
        loop {
            let n: u32 = rand::random();
            if n != 0 && !self.halves.contains(&n) {
                return n;
            }
        }
    }

    /// Ends the channel `me` sends under `number`; the other end, to be told, if it was `me`'s.
    pub fn unbind(&self, me: &str, number: u32) -> Option<Closed> {
        let mut ix = self.lock();
        if self
            .halves
            .get(&number, |_, h| &*h.owner != me)
            .unwrap_or(true)
        {
            return None;
        }
        self.remove_pair(&mut ix, number)
    }

    /// Removes the pair of half `number`, returning the other end.
    fn remove_pair(&self, ix: &mut Index, number: u32) -> Option<Closed> {
        let (_, mine) = self.halves.remove(&number)?;
        let other = self.halves.remove(&mine.peer_number).map(|(_, h)| h);
        let forget = |ix: &mut Index, h: &Half, n: u32| {
            if let Some(ns) = ix.by_name.get_mut(&h.owner) {
                ns.retain(|&x| x != n);
                if ns.is_empty() {
                    ix.by_name.remove(&h.owner);
                }
            }
            let Some(key) = h.binder_host else { return };
            decrement(&mut ix.per_host, &key);
            decrement(&mut ix.bound_by, &h.owner);
        };
        forget(ix, &mine, number);
        let other = other.map(|o| {
            forget(ix, &o, mine.peer_number);
            Closed {
                name: o.owner,
                to: o.from,
                number: mine.peer_number,
            }
        });
        ix.pairs -= 1;
        other
    }

    /// Applies what the registry did: a name gone or taken by someone else ends its channels
    /// (their other ends returned, to be told); a moved name takes its channels along.
    pub fn on_event(&self, ev: Event<'_>) -> Vec<Closed> {
        let mut ix = self.lock();
        let (name, moved_to) = match ev {
            Event::Joined(_) => return Vec::new(),
            Event::Replaced(n) | Event::Removed(n) => (n, None),
            Event::Moved(n, to) => (n, Some(to)),
        };
        let Some(numbers) = ix.by_name.get(name).cloned() else {
            return Vec::new();
        };
        let Some(to) = moved_to else {
            return numbers
                .into_iter()
                .filter_map(|n| self.remove_pair(&mut ix, n))
                .collect();
        };
        for n in numbers {
            let peer = self.halves.get_mut(&n, |h| {
                h.from = to;
                h.peer_number
            });
            if let Some(peer) = peer {
                self.halves.get_mut(&peer, |p| p.to = to);
            }
        }
        Vec::new()
    }
}

/// One channel end as a handover image holds it.
#[derive(Serialize, Deserialize)]
pub struct HalfImage {
    /// The channel's number at this end.
    pub number: u32,
    owner: String,
    /// The address of this end's owner.
    pub from: SocketAddr,
    peer: String,
    to: SocketAddr,
    peer_number: u32,
    binder_host: Option<[u8; 9]>,
    touched_ds: u32,
}

/// Every bound channel, as a handover image holds them.
#[derive(Serialize, Deserialize)]
pub struct Image(pub Vec<HalfImage>);

impl Channels {
    /// Every bound channel, for a relay that takes over to go on from (meant for a table
    /// nothing changes meanwhile).
    pub fn export(&self) -> Image {
        let mut halves = Vec::new();
        for i in 0..self.halves.shard_count() {
            self.halves.in_shard(i, |t| {
                halves.extend(t.iter().map(|&(number, ref h)| HalfImage {
                    number,
                    owner: h.owner.to_string(),
                    from: h.from,
                    peer: h.peer.to_string(),
                    to: h.to,
                    peer_number: h.peer_number,
                    binder_host: h.binder_host,
                    touched_ds: h.touched_ds.load(Relaxed),
                }))
            });
        }
        Image(halves)
    }

    /// A table of `s` holding the pairs of `image` whose two owners are `held` at their
    /// addresses (by the restored registry) (a pair of a registration left out as stale is left out with it); how many
    /// pairs that left out. An image whose halves do not pair up (a number twice or zero, a
    /// half without its other, a pair bound by neither or both sides) is refused whole. Pairs
    /// beyond the `--max-channels*` bounds of `s` stay, as after a reload that lowers them: new
    /// binds are refused until under them.
    pub fn restore(
        s: &Settings,
        image: Image,
        held: impl Fn(&str, SocketAddr) -> bool,
    ) -> Result<(Channels, usize), String> {
        let t = Channels::new(s);
        let mut by_number = HashMap::with_capacity(image.0.len());
        for h in image.0 {
            if h.number == 0 {
                return Err("a channel has the number 0".into());
            }
            let number = h.number;
            if by_number.insert(number, h).is_some() {
                return Err(format!("two channels have the number {number}"));
            }
        }
        let mut ix = t.lock();
        let mut left_out = 0;
        for (&number, h) in &by_number {
            let Some(o) = by_number.get(&h.peer_number) else {
                return Err(format!("channel {number} has no other end"));
            };
            let paired = o.peer_number == number
                && o.owner == h.peer
                && o.peer == h.owner
                && o.from == h.to
                && o.to == h.from
                && h.number != h.peer_number;
            if !paired || h.binder_host.is_some() == o.binder_host.is_some() {
                return Err(format!("channel {number} and its other end disagree"));
            }
            if !relay_wire::valid_name(&h.owner) {
                return Err(format!("channel {number} has an invalid owner name"));
            }
            let kept = held(&h.owner, h.from) && held(&h.peer, h.to);
            if !kept {
                // Counted once per pair, on the binder's half.
                left_out += usize::from(h.binder_host.is_some());
                continue;
            }
            let owner = Name::from(h.owner.as_str());
            ix.by_name.entry(owner.clone()).or_default().push(number);
            if let Some(host) = h.binder_host {
                *ix.bound_by.entry(owner.clone()).or_default() += 1;
                *ix.per_host.entry(host).or_default() += 1;
                ix.pairs += 1;
            }
            t.halves.insert(
                number,
                Half {
                    owner,
                    from: h.from,
                    peer: Name::from(h.peer.as_str()),
                    to: h.to,
                    peer_number: h.peer_number,
                    binder_host: h.binder_host,
                    touched_ds: AtomicU32::new(h.touched_ds),
                },
            );
        }
        drop(ix);
        Ok((t, left_out))
    }
}

/// Takes one from `key`'s count, forgetting it at zero.
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(c) = counts.get_mut(key) {
        *c -= 1;
        if *c == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize) -> Channels {
        Channels::new(&Settings {
            max_channels: max,
            max_channels_per_host: 5,
            max_channels_total: 4,
            ..Settings::default()
        })
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pair_routes_both_ways_from_its_owners_only() {
        let t = table(8);
        let (alice, bob) = (Name::from("alice"), Name::from("bob"));
        let (aa, ba) = (a("192.0.2.1:1"), a("198.51.100.2:2"));
        let b = t.bind(&alice, aa, &bob, ba).unwrap();
        assert!(b.new && b.mine != 0 && b.theirs != 0 && b.mine != b.theirs);
        let again = t.bind(&bob, ba, &alice, aa).unwrap();
        assert_eq!(
            (again.mine, again.theirs, again.new),
            (b.theirs, b.mine, false)
        );
        let r = t.route(b.mine, aa, 5000).unwrap();
        assert_eq!((r.to, r.number), (ba, b.theirs));
        assert_eq!(r.touch.as_deref(), Some("alice"));
        assert_eq!(
            t.route(b.mine, aa, 5050).unwrap().touch,
            None,
            "a second apart"
        );
        assert_eq!(t.route(b.theirs, ba, 0).unwrap().to, aa);
        assert_eq!(t.route(b.mine, ba, 0), Err(Miss::WrongSource));
        assert_eq!(t.route(b.mine ^ 1, aa, 0), Err(Miss::Gone));
        // Bob moves: his channel follows, both ways.
        let moved = a("203.0.113.9:9");
        assert!(t.on_event(Event::Moved("bob", moved)).is_empty());
        assert_eq!(t.route(b.mine, aa, 0).unwrap().to, moved);
        assert_eq!(t.route(b.theirs, ba, 0), Err(Miss::WrongSource));
        assert_eq!(t.route(b.theirs, moved, 0).unwrap().to, aa);
        // Only the owner unbinds; the other end is told.
        assert_eq!(t.unbind("bob", b.mine), None);
        let closed = t.unbind("alice", b.mine).unwrap();
        assert_eq!((closed.to, closed.number), (moved, b.theirs));
        assert_eq!(t.route(b.theirs, moved, 0), Err(Miss::Gone));
        assert!(t.is_empty());
    }

    #[test]
    fn channels_end_with_either_peer_and_are_bounded() {
        let t = table(2);
        let n = |s: &str| Name::from(s);
        let host = |i: u8| a(&format!("192.0.2.{i}:1"));
        t.bind(&n("a"), host(1), &n("b"), host(2)).unwrap();
        t.bind(&n("a"), host(1), &n("c"), host(3)).unwrap();
        assert_eq!(
            t.bind(&n("a"), host(1), &n("d"), host(4)),
            Err(Full::Limit),
            "two bound by each peer"
        );
        // What others bind to `a` counts against them, not `a` (up to four times its own).
        t.bind(&n("d"), host(4), &n("a"), host(1)).unwrap();
        t.bind(&n("b"), host(2), &n("c"), host(3)).unwrap();
        let closed = t.on_event(Event::Removed("a"));
        let mut told: Vec<&str> = closed.iter().map(|c| &*c.name).collect();
        told.sort_unstable();
        assert_eq!(told, ["b", "c", "d"]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.on_event(Event::Replaced("c")).len(), 1);
        assert!(t.is_empty());
        // `a`'s quota came back with its channels.
        t.bind(&n("a"), host(1), &n("b"), host(2)).unwrap();
        t.bind(&n("a"), host(1), &n("c"), host(3)).unwrap();
        assert!(t.on_event(Event::Removed("a")).len() == 2 && t.is_empty());
        // In all: four pairs.
        let same = |p: u16| a(&format!("192.0.2.9:{p}"));
        for p in 1..=4 {
            let (x, y) = (format!("h{p}"), format!("far{p}"));
            t.bind(&n(&x), same(p), &n(&y), host(100 + p as u8))
                .unwrap();
        }
        assert_eq!(t.len(), 4);
        assert_eq!(
            t.bind(&n("h9"), same(9), &n("far9"), host(109)),
            Err(Full::Limit),
            "four in all"
        );
        t.on_event(Event::Removed("far1"));
        t.bind(&n("h5"), same(5), &n("far5"), host(105)).unwrap();
        let t = table(1);
        for p in 1..=5u16 {
            let far = format!("far{p}");
            t.bind(&n(&far), host(20 + p as u8), &n("x"), host(1)).ok();
        }
        assert_eq!(t.len(), 4, "x may be bound by four times its own quota");
    }

    #[test]
    fn a_retune_below_what_is_bound_keeps_the_pairs_and_refuses_new_ones() {
        // 64 per peer; no bound per host or in all.
        let roomy = Settings::default();
        let t = Channels::new(&roomy);
        let n = |s: &str| Name::from(s);
        let host = |i: u8| a(&format!("192.0.2.{i}:1"));
        let mut numbers = Vec::new();
        for i in 2..=6 {
            let b = t
                .bind(&n("a"), host(1), &n(&format!("p{i}")), host(i))
                .unwrap();
            numbers.push(b.mine);
        }
        // Lowered to two per peer, host and relay: the five pairs stay, and route.
        let low = Settings {
            max_channels: 2,
            max_channels_per_host: 2,
            max_channels_total: 2,
            ..Settings::default()
        };
        t.retune(&low);
        assert_eq!(t.len(), 5);
        for &m in &numbers {
            assert!(t.route(m, host(1), 0).is_ok());
        }
        let bind =
            |me: &str, at: u8, peer: &str, to: u8| t.bind(&n(me), host(at), &n(peer), host(to));
        assert_eq!(bind("a", 1, "p7", 7), Err(Full::Limit), "the peer's bound");
        assert_eq!(bind("q", 9, "r", 10), Err(Full::Limit), "the relay's bound");
        // A pair bound already is found, not refused.
        assert!(!bind("a", 1, "p2", 2).unwrap().new);
        // Under the bound again, one more fits; then none.
        for &m in &numbers[..4] {
            t.unbind("a", m).unwrap();
        }
        assert_eq!(t.len(), 1);
        assert!(bind("q", 9, "r", 10).unwrap().new);
        assert_eq!(bind("s", 11, "u", 12), Err(Full::Limit));
        // Raised again: binds fit again, and the counts are right.
        t.retune(&roomy);
        assert!(bind("a", 1, "p7", 7).unwrap().new);
        assert!(bind("s", 11, "u", 12).unwrap().new);
        assert_eq!(t.len(), 4);
        for name in ["a", "q", "s"] {
            t.on_event(Event::Removed(name));
        }
        assert!(t.is_empty());
    }
}
