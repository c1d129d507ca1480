//! Watch lists, bounded per peer, host, network and watched name, so that none can fill them all.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use dashmap::mapref::entry::Entry as MapEntry;

use crate::addr::{host_key, prefix};

use super::{
    Live, MAX_WATCHERS, MAX_WATCHERS_PER_NETWORK, Name, Registry, WATCH_HOST_SLOTS,
    WATCH_RESERVE_PARTS,
};

/// What one registration watches, and the host and network slots its watch entries were
/// counted under.
#[derive(Debug, Default)]
pub(super) struct Watching {
    pub(super) names: Vec<Name>,
    host: usize,
    net: usize,
}

/// A watcher of a name, with the network slot it was counted under there: one network may hold
/// at most [`MAX_WATCHERS_PER_NETWORK`] of a name's watchers.
#[derive(Debug, Clone)]
pub(super) struct Watcher {
    name: Name,
    net: u32,
}

impl Registry {
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
    pub(super) fn watch_held(
        &self,
        key: &Name,
        addr: SocketAddr,
        names: &[Name],
        max: usize,
    ) -> usize {
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

    pub(super) fn drop_watcher(&self, watched: Name, watcher: &Name) {
        if let MapEntry::Occupied(mut o) = self.watchers.entry(watched) {
            o.get_mut().retain(|w| w.name != *watcher);
            if o.get().is_empty() {
                o.remove();
            }
        }
    }

    pub(super) fn uncount_watches(&self, w: &Watching, n: usize) {
        self.watch_total.fetch_sub(n, Relaxed);
        self.watch_hosts[w.host].fetch_sub(n as u32, Relaxed);
        self.watch_nets[w.net].fetch_sub(n as u32, Relaxed);
    }
}
