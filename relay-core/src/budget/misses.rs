//! Buckets of misses, so that nobody learns at speed which of many guessed names are registered.

use std::net::IpAddr;

use crate::addr::{host_key, prefix};
use crate::settings::Settings;

use super::clocked::Clocked;
use super::{LIMIT_SLOTS, PREFIX_SLOTS};

/// A bucket of misses holds this many seconds of its rate: at the default of 2 a second, 512,
/// two watches of `--max-watch` names none of which is online.
const MISS_BURST_S: u64 = 256;
/// A network's bucket of misses has this many times a host's rate.
const NETWORK_MISSES: u64 = 4;

/// Lookups and watches of names that are not online (misses), per host and per network (/24,
/// /48), so that nobody learns at speed which of many guessed names are registered; names that
/// are online (hits) cost nothing. A request takes as many tokens as it names (at most a
/// bucket's burst) before they are looked up, and gives the hits back: whether it is refused
/// depends on what it asks and on what earlier answers told, never on the names it asks
/// about. Authenticated and unauthenticated requests have buckets of their own, so that what a
/// forger spends in a host's name never refuses that host's authenticated requests. Not
/// handed over: a takeover gives each a burst again.
pub struct Misses {
    host: Clocked,
    network: Clocked,
}

impl Misses {
    /// The buckets of `s` (`--miss-rate`).
    pub fn new(s: &Settings) -> Misses {
        Misses {
            host: Clocked::new(LIMIT_SLOTS, s.miss_rate, MISS_BURST_S),
            network: Clocked::new(
                PREFIX_SLOTS,
                s.miss_rate.saturating_mul(NETWORK_MISSES),
                MISS_BURST_S,
            ),
        }
    }

    /// Puts the rate of `s` in force (a reload).
    pub fn retune(&self, s: &Settings) {
        self.host.set_rate(s.miss_rate);
        self.network
            .set_rate(s.miss_rate.saturating_mul(NETWORK_MISSES));
    }

    /// Takes `n` misses (at most a burst) from `from`'s host and network at `now_ms`; false
    /// (taking none) if either has fewer left.
    pub fn reserve(&self, from: IpAddr, authed: bool, n: usize, now_ms: u64) -> bool {
        let n = (n as u64).min(self.host.burst().max(1));
        let (host, net) = ((host_key(from), authed), (prefix(from), authed));
        if !self.host.take(host, n, now_ms) {
            return false;
        }
        if !self.network.take(net, n, now_ms) {
            self.host.give(host, n);
            return false;
        }
        true
    }

    /// Gives back what [`Misses::reserve`] took for `asked` names beyond their misses: the
    /// `hits` among them.
    pub fn hits(&self, from: IpAddr, authed: bool, asked: usize, hits: usize) {
        let taken = (asked as u64).min(self.host.burst().max(1));
        let misses = asked.saturating_sub(hits) as u64;
        let back = taken.saturating_sub(misses);
        if back > 0 {
            self.host.give((host_key(from), authed), back);
            self.network.give((prefix(from), authed), back);
        }
    }
}
