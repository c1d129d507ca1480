//! The balances as a handover image, clamped on restore so that no image leaves a budget refusing.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Budgets, TableImage};

/// Every budget's balances as a handover image holds them.
#[derive(Serialize, Deserialize)]
pub struct Image {
    pub(super) reply_host: TableImage,
    reply_prefix: TableImage,
    pub(super) reply_global: TableImage,
    fanout: TableImage,
    presence: TableImage,
    pub(super) registrations: TableImage,
    owed: Vec<SocketAddr>,
}

impl Budgets {
    /// Every balance, for a relay that takes over (meant for a relay whose workers stopped).
    pub fn export(&self) -> Image {
        Image {
            reply_host: self.reply_host.table.export(),
            reply_prefix: self.reply_prefix.table.export(),
            reply_global: self.reply_global.table.export(),
            fanout: self.fanout.table.export(),
            presence: self.presence.table.export(),
            registrations: self.registrations.table.export(),
            owed: self
                .owed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect(),
        }
    }

    /// Takes up the balances of `image` at `now_ms`: tables of another size stay fresh, a
    /// bucket refilled later than `now_ms` is taken as refilled now, and no balance holds
    /// more (or less) than one of the credits and rates in force can: a crafted image, or a
    /// relay of higher limits, would otherwise leave a budget refusing for as long as these
    /// take to refill or earn that back (the relay-wide reply budget: for ever).
    pub fn restore(&mut self, image: Image, now_ms: u64) {
        let now_ds = (now_ms / 100) as u32;
        let within = |burst: u64| {
            move |state: u64| {
                let at = (state as u32).min(now_ds);
                ((state >> 32).min(burst) << 32) | u64::from(at)
            }
        };
        for (earned, image) in [
            (&mut self.reply_host, image.reply_host),
            (&mut self.reply_prefix, image.reply_prefix),
            (&mut self.reply_global, image.reply_global),
            (&mut self.fanout, image.fanout),
        ] {
            // What a balance of the credit in force can hold, within the bounds no arithmetic
            // on it overflows past.
            let (lo, hi) = earned.bounds();
            earned
                .table
                .restore(image, |v| (v as i64).clamp(lo, hi) as u64);
        }
        let burst = self.presence.burst();
        self.presence.table.restore(image.presence, within(burst));
        let burst = self.registrations.burst();
        self.registrations
            .table
            .restore(image.registrations, within(burst));
        self.keep_owed(image.owed);
    }
}
