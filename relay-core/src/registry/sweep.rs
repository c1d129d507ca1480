//! The reaper's pass, shard by shard, so that a sweep of a million peers holds no lock for long.

use std::net::SocketAddr;

use super::entry::Entry;
use super::{Name, Registry, Removed};

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

impl Registry {
    /// Removes `name` if it is stale.
    pub fn reap(&self, name: &str, now_ms: u64) -> Option<Removed> {
        self.remove_if(name, |e| !self.live(e, now_ms))
    }

    /// Removes `name` whatever its state: its cluster's directory homed it at another relay.
    pub fn evict(&self, name: &str) -> Option<Removed> {
        self.remove_if(name, |_| true)
    }

    /// `name`'s registration `e` as a scan sees it.
    pub(super) fn seen(&self, name: &Name, e: &Entry, now_ms: u64) -> Live {
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
