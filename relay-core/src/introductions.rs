//! Introductions by consent: an address is handed out only when its owner asked for the asker
//! too. A `connect` records that its sender asks for its target; when the target has asked for
//! the sender within [`WINDOW_MS`], the relay introduces the two to each other at once.
//!
//! A request is bound to the registration that made it and to the registration it asks for
//! (their registration numbers, which a move or a new holder of a name changes), so that consent
//! given by or to one holder of a name is never taken as another's: a request for a name that is
//! offline stands for nobody. Requests are a fixed table of atomics indexed by a keyed hash, like the
//! budgets': a request takes one slot (a newer one takes the slot over), so the table holds at
//! most [`SLOTS`] requests in all (1 MiB), and each name may make at most [`PER_NAME`] new ones a
//! window, so that it holds at most twice that at once. A takeover does not carry them: a pair
//! asks again.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::keyed::Keyed;

/// How long a `connect` stands: the two sides of an introduction must ask within this of each
/// other.
pub const WINDOW_MS: u64 = 30_000;
/// Requests held in all (8 bytes each).
pub const SLOTS: usize = 1 << 17;
/// New requests one name may make a window (asking again for the same target only renews one).
pub const PER_NAME: u32 = 16;
/// Slots of the per-name counts.
const NAME_SLOTS: usize = 1 << 16;

const WINDOW_DS: u32 = (WINDOW_MS / 100) as u32;

/// Deciseconds of the relay's clock, which a slot's 32 bits hold for 13 years.
fn ds(now_ms: u64) -> u32 {
    (now_ms / 100) as u32
}

/// A request: a tag of its key (high half; never 0, which is an empty slot) and when it
/// expires (low half, in deciseconds).
fn pack(tag: u32, until_ds: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(until_ds)
}

/// The pending requests of every name.
pub struct Pending {
    asks: Box<[AtomicU64]>,
    /// Per name slot: new requests this window (high half) and when the window began (low).
    per_name: Box<[AtomicU64]>,
    hasher: Keyed,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            asks: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            per_name: (0..NAME_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: Keyed::random(),
        }
    }
}

/// The registration number a request for a target that is offline is bound to: none holds it.
pub const OFFLINE: u64 = u64::MAX;

/// Who asks for whom: the asker's name and registration number, and the target's.
#[derive(Hash)]
struct Ask<'a>(&'a str, u64, &'a str, u64);

impl Pending {
    /// The slot of `ask` and the tag it holds there.
    fn slot(&self, ask: Ask<'_>) -> (&AtomicU64, u32) {
        let h = self.hasher.hash_one(ask);
        (&self.asks[h as usize % SLOTS], (h >> 32) as u32 | 1)
    }

    /// Records that `asker`, of registration number `seq`, asks for `target`, of registration
    /// number `target_seq` ([`OFFLINE`]: none), at `now_ms`; false (recording nothing) when this
    /// is a new request beyond the name's [`PER_NAME`] this window. Whether the target exists
    /// plays no part: the answer tells nothing of it.
    pub fn ask(&self, asker: &str, seq: u64, target: &str, target_seq: u64, now_ms: u64) -> bool {
        let (slot, tag) = self.slot(Ask(asker, seq, target, target_seq));
        let now = ds(now_ms);
        let held = slot.load(Relaxed);
        let renewal = (held >> 32) as u32 == tag && held as u32 > now;
        if !renewal && !self.count(asker, now) {
            return false;
        }
        slot.store(pack(tag, now + WINDOW_DS), Relaxed);
        true
    }

    /// Whether `asker`, of registration number `seq`, asked for `target` while it was
    /// registration number `target_seq`, within the window before `now_ms`.
    pub fn asked(&self, asker: &str, seq: u64, target: &str, target_seq: u64, now_ms: u64) -> bool {
        let (slot, tag) = self.slot(Ask(asker, seq, target, target_seq));
        let held = slot.load(Relaxed);
        (held >> 32) as u32 == tag && held as u32 > ds(now_ms)
    }

    /// Counts one new request of `asker` in the window of `now`, if it has one left.
    fn count(&self, asker: &str, now: u32) -> bool {
        let h = self.hasher.hash_one((asker, u8::MAX)) as usize;
        self.per_name[h % NAME_SLOTS]
            .fetch_update(Relaxed, Relaxed, |state| {
                let (n, since) = ((state >> 32) as u32, state as u32);
                if now >= since.saturating_add(WINDOW_DS) {
                    Some(pack(1, now))
                } else {
                    (n < PER_NAME).then(|| pack(n + 1, since))
                }
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stands_for_its_window_and_for_its_registration() {
        let p = Pending::default();
        assert!(p.ask("alice", 7, "bob", 3, 1_000));
        assert!(p.asked("alice", 7, "bob", 3, 1_000 + WINDOW_MS - 100));
        assert!(!p.asked("alice", 7, "bob", 3, 1_000 + WINDOW_MS), "expired");
        assert!(
            !p.asked("alice", 8, "bob", 3, 1_000),
            "another registration of alice"
        );
        assert!(
            !p.asked("alice", 7, "bob", 4, 1_000),
            "another registration of bob (the name's next holder)"
        );
        assert!(!p.asked("bob", 3, "alice", 7, 1_000), "bob never asked");
        assert!(!p.asked("alice", 7, "carol", 3, 1_000));
        // Asking again renews it.
        assert!(p.ask("alice", 7, "bob", 3, 20_000));
        assert!(p.asked("alice", 7, "bob", 3, 1_000 + WINDOW_MS));
    }

    #[test]
    fn a_name_makes_at_most_its_share_of_new_requests_a_window() {
        let p = Pending::default();
        let made = (0..100)
            .filter(|i| p.ask("mallory", 1, &format!("guess-{i}"), OFFLINE, 0))
            .count();
        assert_eq!(made, PER_NAME as usize);
        // Renewing one it holds costs nothing; another name has its own.
        assert!(p.ask("mallory", 1, "guess-0", OFFLINE, 100));
        assert!(p.ask("alice", 1, "bob", 2, 100));
        // A window later it may make as many again.
        assert!(!p.ask("mallory", 1, "late", OFFLINE, WINDOW_MS - 100));
        assert!(p.ask("mallory", 1, "late", OFFLINE, WINDOW_MS));
    }
}
