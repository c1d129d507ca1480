//! Token buckets refilled by the clock, for what no datagram can pay for: rates per key.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::table::Table;

/// Token buckets refilled by the clock: a slot packs the units used (high half) and when it was
/// last refilled (low half, in tenths of a second).
pub(super) struct Clocked {
    pub(super) table: Table<AtomicU64>,
    /// Tokens a second (0: no limit); a reload may change it, so the table is always full size.
    rate: AtomicU64,
    burst_s: u64,
}

impl Clocked {
    pub(super) fn new(slots: usize, rate: u64, burst_s: u64) -> Clocked {
        Clocked {
            table: Table::new(slots),
            rate: AtomicU64::new(rate),
            burst_s,
        }
    }

    /// The most units a bucket of `rate` holds.
    fn burst_of(&self, rate: u64) -> u64 {
        rate.saturating_mul(self.burst_s)
            .clamp(1, u64::from(u32::MAX))
    }

    /// The most units a bucket of the rate in force holds (0: none, without a limit).
    pub(super) fn burst(&self) -> u64 {
        match self.rate.load(Relaxed) {
            0 => 0,
            rate => self.burst_of(rate),
        }
    }

    pub(super) fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Relaxed);
    }

    /// Gives back `n` units just taken from `key`'s bucket.
    pub(super) fn give(&self, key: impl Hash, n: u64) {
        let _ = self
            .table
            .slot(key)
            .fetch_update(Relaxed, Relaxed, |state| {
                Some(((state >> 32).saturating_sub(n) << 32) | (state & u64::from(u32::MAX)))
            });
    }

    pub(super) fn take(&self, key: impl Hash, cost: u64, now_ms: u64) -> bool {
        let rate = self.rate.load(Relaxed);
        if rate == 0 {
            return true;
        }
        let burst = self.burst_of(rate);
        let now_ds = (now_ms / 100) as u32;
        self.table
            .slot(key)
            .fetch_update(Relaxed, Relaxed, |state| {
                let (used, at) = (state >> 32, state as u32);
                let refill = u64::from(now_ds.saturating_sub(at)).saturating_mul(rate) / 10;
                let used = used.saturating_sub(refill);
                (used + cost <= burst).then(|| ((used + cost) << 32) | u64::from(now_ds.max(at)))
            })
            .is_ok()
    }
}
