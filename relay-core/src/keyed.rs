//! The keyed hash of the relay's fixed tables (the limits' token buckets and the budgets):
//! SipHash-1-3, as std's `RandomState`, under keys drawn at start, so that nobody can choose
//! which keys share a slot. Unlike `RandomState`'s, the keys can be handed over with the
//! tables at a takeover, so that every key finds its slot, and its balance, again.

use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

/// A SipHash-1-3 key.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct Keyed {
    k0: u64,
    k1: u64,
}

impl Keyed {
    /// A fresh random key.
    #[cfg(not(test))]
    pub fn random() -> Keyed {
        Keyed {
            k0: rand::random(),
            k1: rand::random(),
        }
    }

    /// In the crate's unit tests, a key drawn from a sequence of the test's own thread: distinct
    /// per table, the same from run to run, so that a test's slots (and any two keys that share
    /// one) do not change between runs.
    #[cfg(test)]
    pub fn random() -> Keyed {
        use std::cell::Cell;
        thread_local!(static NEXT: Cell<u64> = const { Cell::new(1) });
        let n = NEXT.with(|c| {
            let n = c.get();
            c.set(n + 1);
            n
        });
        Keyed {
            k0: n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            k1: n.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ 0x5851_F42D_4C95_7F2D,
        }
    }
}

impl BuildHasher for Keyed {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}
