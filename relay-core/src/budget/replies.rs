//! The reply pools, earned per host, prefix and relay so that a forged flood spends only credit.

use std::net::IpAddr;

use crate::addr::prefix;

use super::{ANSWER_FACTOR, Budgets};

impl Budgets {
    /// Credits what is left of an unauthenticated request of `len` bytes, once its replies used
    /// `used` of its own allowance, to its host's, prefix's and the relay's reply budgets: at
    /// most `len`, so that what the request paid for itself and what it banked together stay
    /// within [`ANSWER_FACTOR`] times its size. An authenticated request earns nothing here:
    /// its replies are free, and it must not bank credit a forger could spend.
    pub fn earn_replies(&self, from: IpAddr, len: usize, used: usize) {
        let n = len.min((len * ANSWER_FACTOR).saturating_sub(used)) as i64;
        if n > 0 {
            self.reply_host.earn(from, n);
            self.reply_prefix.earn(prefix(from), n);
            self.reply_global.earn((), n);
        }
    }

    /// How many bytes of replies `to` could be sent now (for choosing an error's short form).
    pub fn reply_available(&self, to: IpAddr) -> i64 {
        let a = self.reply_host.available(to);
        let net = prefix(to);
        let p = self.reply_prefix.available(net);
        let earned = self.reply_prefix.banked(net);
        a.min(p)
            .min(earned.saturating_add(self.reply_global.available(())))
    }

    /// Pays a reply of `n` bytes to `to` from the pools now, while its request is decided, so
    /// that its form can follow what was paid; the send then goes out as settled.
    pub fn prepay(&self, to: IpAddr, n: usize) -> bool {
        self.spend_reply(to, n as i64, 0)
    }

    /// Spends `n` bytes of `to`'s host and prefix reply budgets, keeping `reserve`, and of the
    /// relay's for what the prefix had not earned: what a network earned is its own, and only
    /// its credit, the part a forger can spend in its name, is drawn from the relay-wide pool,
    /// so that a flood forged from many networks cannot take what others paid for.
    pub(super) fn spend_reply(&self, to: IpAddr, n: i64, reserve: i64) -> bool {
        if !self.reply_host.spend(to, n, reserve) {
            return false;
        }
        let Some(unearned) = self.reply_prefix.spend_from(prefix(to), n, reserve) else {
            self.reply_host.refund(to, n);
            return false;
        };
        if unearned > 0 && !self.reply_global.spend((), unearned, 0) {
            self.reply_host.refund(to, n);
            self.reply_prefix.refund(prefix(to), n);
            return false;
        }
        true
    }
}
