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
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::addr::host_key;
use crate::registry::{Event, Name};
use crate::settings::Settings;
use crate::shards::Sharded;

mod across;
mod image;

pub use across::Refused;
pub use image::{AcrossImage, AcrossImages, HalfImage, Image};

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
    /// For a channel bound across relays: the node where the other end lives (`peer_number`
    /// is that relay's number, and `to` is unused).
    remote: Option<Arc<str>>,
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
    /// For a channel bound across relays: the other end's node and owner (the frame goes
    /// there as a mesh datagram, not to `to`).
    pub remote: Option<(Arc<str>, Name)>,
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

/// A channel end to tell that it is closed: its owner's name and address, and its number. With
/// `remote`, an end of this relay whose other end lives at that node: that relay is to be told
/// (it closes the end that pointed here, and tells its owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The name that held this end.
    pub name: Name,
    /// Its address.
    pub to: SocketAddr,
    /// Its number for the channel.
    pub number: u32,
    /// The node to tell instead of the owner.
    pub remote: Option<Arc<str>>,
}

#[derive(Default)]
struct Index {
    /// The numbers each name sends under.
    by_name: HashMap<Name, Vec<u32>>,
    /// Pairs each name bound itself.
    bound_by: HashMap<Name, usize>,
    /// Pairs bound from each host.
    per_host: HashMap<[u8; 9], usize>,
    /// Pairs bound (a channel across relays counts once at each).
    pairs: usize,
    /// The ends of channels across relays, by their other end: its node and number.
    remote_ends: HashMap<(Arc<str>, u32), u32>,
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
                remote: h.remote.as_ref().map(|n| (n.clone(), h.peer.clone())),
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
        if let Some(b) = self.bound_already(&ix, me, peer) {
            return Ok(b);
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
            remote: None,
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

    /// Removes the pair of half `number`, returning the other end (for a channel across
    /// relays: this end, for its other relay to be told).
    fn remove_pair(&self, ix: &mut Index, number: u32) -> Option<Closed> {
        let (_, mine) = self.halves.remove(&number)?;
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
        ix.pairs -= 1;
        if let Some(node) = &mine.remote {
            ix.remote_ends.remove(&(node.clone(), mine.peer_number));
            return Some(Closed {
                name: mine.owner,
                to: mine.from,
                number,
                remote: mine.remote,
            });
        }
        let other = self.halves.remove(&mine.peer_number).map(|(_, h)| h);
        other.map(|o| {
            forget(ix, &o, mine.peer_number);
            Closed {
                name: o.owner,
                to: o.from,
                number: mine.peer_number,
                remote: None,
            }
        })
    }

    /// The numbers of `me`'s channel to `peer`, if there is one.
    fn bound_already(&self, ix: &Index, me: &Name, peer: &Name) -> Option<Bound> {
        let &mine = ix
            .by_name
            .get(me)?
            .iter()
            .find(|n| self.halves.get(n, |_, h| h.peer == *peer).unwrap_or(false))?;
        let theirs = self.halves.get(&mine, |_, h| h.peer_number).unwrap_or(0);
        Some(Bound {
            mine,
            theirs,
            new: false,
        })
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
            // The other end of a channel across relays lives there: it sends to this relay.
            let peer = self.halves.get_mut(&n, |h| {
                h.from = to;
                h.remote.is_none().then_some(h.peer_number)
            });
            if let Some(peer) = peer.flatten() {
                self.halves.get_mut(&peer, |p| p.to = to);
            }
        }
        Vec::new()
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
mod tests;
