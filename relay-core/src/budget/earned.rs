//! Balances earned by what their owner sends, never by the clock, so that a forger earns nothing.

use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use super::table::Table;

/// Balances that start at a credit, earn what their owner sends and are spent by what it gets.
/// A slot holds what was used beyond the credit (zero: a fresh credit).
pub(super) struct Earned {
    /// Full size whatever the credit: a reload may lift a credit of 0 (no limit) to one.
    pub(super) table: Table<AtomicI64>,
    /// Bytes (0: no limit); a reload may change it, so every use reads it once.
    credit: AtomicI64,
    /// How many credits a balance may bank: its cap is this times the credit, derived from the
    /// one atomic so that a reload cannot pair a new credit with an old cap.
    cap_credits: i64,
}

impl Earned {
    pub(super) fn new(slots: usize, credit: u64, cap_credits: i64) -> Earned {
        Earned {
            table: Table::new(slots),
            credit: AtomicI64::new(Earned::clamp(credit)),
            cap_credits,
        }
    }

    /// A credit as a balance holds it: bounded, so that no balance overflows.
    fn clamp(credit: u64) -> i64 {
        i64::try_from(credit).unwrap_or(i64::MAX).min(i64::MAX / 4)
    }

    /// Puts `credit` in force. What each balance used stays: lowered below it, a balance has
    /// nothing to spend until its owner earns it back.
    pub(super) fn set_credit(&self, credit: u64) {
        self.credit.store(Earned::clamp(credit), Relaxed);
    }

    /// The credit in force (0: no limit).
    pub(super) fn credit(&self) -> i64 {
        self.credit.load(Relaxed)
    }

    pub(super) fn earn(&self, key: impl Hash, n: i64) {
        let credit = self.credit();
        if credit == 0 {
            return;
        }
        let floor = credit - credit.saturating_mul(self.cap_credits);
        let slot = self.table.slot(key);
        // A busy host's balance sits at its cap: reading it costs no cache line's ownership.
        if slot.load(Relaxed) <= floor {
            return;
        }
        let _ = slot.fetch_update(Relaxed, Relaxed, |used| Some((used - n).max(floor)));
    }

    /// What a balance of the credit in force holds: used at most the credit (`spend` keeps it
    /// there), banked at most its cap (`earn` stops there); nothing without a credit.
    pub(super) fn bounds(&self) -> (i64, i64) {
        let credit = self.credit();
        (credit - credit.saturating_mul(self.cap_credits), credit)
    }

    pub(super) fn available(&self, key: impl Hash) -> i64 {
        let credit = self.credit();
        if credit == 0 {
            return i64::MAX;
        }
        credit - self.table.slot(key).load(Relaxed)
    }

    /// Spends `n` if at least `n + reserve` is available.
    pub(super) fn spend(&self, key: impl Hash, n: i64, reserve: i64) -> bool {
        self.spend_from(key, n, reserve).is_some()
    }

    /// Spends `n` if at least `n + reserve` is available; how much of it went beyond what the
    /// balance had earned (into its credit): all of it, without a limit.
    pub(super) fn spend_from(&self, key: impl Hash, n: i64, reserve: i64) -> Option<i64> {
        let credit = self.credit();
        if credit == 0 {
            return Some(n);
        }
        let before = self
            .table
            .slot(key)
            .fetch_update(Relaxed, Relaxed, |used| {
                (credit - used - reserve >= n).then_some(used + n)
            })
            .ok()?;
        Some((before + n).max(0) - before.max(0))
    }

    /// What a balance has earned beyond its credit (a forger's networks have none).
    pub(super) fn banked(&self, key: impl Hash) -> i64 {
        if self.credit() == 0 {
            return 0;
        }
        (-self.table.slot(key).load(Relaxed)).max(0)
    }

    /// Gives back `n` just spent (when another budget of the same send refused it). A reload
    /// between the two may leave one send's bytes on a balance, or give them: no more.
    pub(super) fn refund(&self, key: impl Hash, n: i64) {
        if self.credit() != 0 {
            self.table.slot(key).fetch_sub(n, Relaxed);
        }
    }
}
