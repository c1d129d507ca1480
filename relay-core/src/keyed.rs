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
    pub fn random() -> Keyed {
        Keyed {
            k0: rand::random(),
            k1: rand::random(),
        }
    }
}

impl BuildHasher for Keyed {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}
