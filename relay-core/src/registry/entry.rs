//! One registration in 48 bytes, its times atomics so that the hot path takes only read locks.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use super::Session;
use super::packed::Packed;
use super::session::Tokens;

/// One registration (its name is the key it is stored under).
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) last_heard: AtomicU64,
    /// When a `server_keepalive` (or a list in its place) was last sent, in tenths of a second
    /// of the relay's clock: four bytes, so that trust fits an entry of 48 bytes.
    pub(super) last_keepalive_ds: AtomicU32,
    /// Registration number, drawn anew at every join and move: lists read in join order, as the
    /// old relay's did, and the session token derives from it, so a move issues a new token
    /// (sent only to the new address) and no token ever repeats.
    pub(super) seq: u64,
    pub(super) addr: Packed,
    /// When a request from `addr` last carried this registration's token (or a signed claim
    /// echoed a cookie there), in seconds of the relay's clock plus one (0: never). Someone at
    /// `addr` received what the relay sent it then; trust lasts one peer timeout from it, so
    /// that forged refreshes cannot keep a departed peer's address trusted.
    pub(super) trusted_s: AtomicU32,
    /// When a refreshing `register` of this name was last announced (seconds; `u32::MAX`:
    /// never), so that repeating `register` cannot make the relay broadcast at will.
    pub(super) announced_s: AtomicU32,
}

impl Entry {
    pub(super) fn new(addr: Packed, now_ms: u64, seq: u64, trusted: bool) -> Entry {
        let trusted_s = if trusted { secs(now_ms) + 1 } else { 0 };
        Entry {
            last_heard: AtomicU64::new(now_ms),
            last_keepalive_ds: AtomicU32::new(tenths(now_ms)),
            seq,
            addr,
            trusted_s: AtomicU32::new(trusted_s),
            announced_s: AtomicU32::new(u32::MAX),
        }
    }

    pub(super) fn session(&self, tokens: &Tokens) -> Session {
        tokens.of(self.seq)
    }

    /// Marks the registration trusted now; whether it is the first time (its first proof here).
    pub(super) fn trust(&self, now_ms: u64) -> bool {
        self.trusted_s.fetch_max(secs(now_ms) + 1, Relaxed) == 0
    }

    /// Whether the registration has ever shown its token (or a cookie) from its address.
    pub(super) fn proven(&self) -> bool {
        self.trusted_s.load(Relaxed) != 0
    }

    pub(super) fn last_heard(&self) -> u64 {
        self.last_heard.load(Relaxed)
    }

    pub(super) fn touch(&self, now_ms: u64) {
        self.last_heard.fetch_max(now_ms, Relaxed);
    }
}

pub(super) fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX - 1)
}

/// Tenths of a second (good for 13 years of uptime; saturating beyond).
pub(super) fn tenths(ms: u64) -> u32 {
    u32::try_from(ms / 100).unwrap_or(u32::MAX)
}

impl Entry {
    /// When the last keepalive was sent it, in ms (to a tenth of a second).
    pub(super) fn last_keepalive(&self) -> u64 {
        u64::from(self.last_keepalive_ds.load(Relaxed)) * 100
    }

    pub(super) fn keepalive_sent(&self, now_ms: u64) {
        self.last_keepalive_ds.store(tenths(now_ms), Relaxed);
    }
}
