//! Fixed tables of atomics by keyed hash, so that memory is bounded whatever the input.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::keyed::Keyed;

/// A fixed array of atomics indexed by a keyed hash.
pub(super) struct Table<T> {
    slots: Box<[T]>,
    hasher: Keyed,
}

impl<T: Default> Table<T> {
    pub(super) fn new(n: usize) -> Table<T> {
        Table {
            slots: (0..n).map(|_| T::default()).collect(),
            hasher: Keyed::random(),
        }
    }

    pub(super) fn slot(&self, key: impl Hash) -> &T {
        let h = self.hasher.hash_one(key) as usize;
        &self.slots[h % self.slots.len()]
    }
}

/// A table of balances as a handover image holds it.
#[derive(Serialize, Deserialize)]
pub struct TableImage {
    pub(super) slots: Vec<u64>,
    hasher: Keyed,
}

/// A slot of a table, as an image holds it: its bits.
pub(super) trait Bits {
    fn bits(&self) -> u64;
    fn set_bits(&self, v: u64);
}

impl Bits for AtomicU64 {
    fn bits(&self) -> u64 {
        self.load(Relaxed)
    }
    fn set_bits(&self, v: u64) {
        self.store(v, Relaxed);
    }
}

impl Bits for AtomicI64 {
    fn bits(&self) -> u64 {
        self.load(Relaxed) as u64
    }
    fn set_bits(&self, v: u64) {
        self.store(v as i64, Relaxed);
    }
}

impl<T: Bits> Table<T> {
    pub(super) fn export(&self) -> TableImage {
        TableImage {
            slots: self.slots.iter().map(Bits::bits).collect(),
            hasher: self.hasher,
        }
    }

    /// Takes up `image` if it is a table of this size, each slot made what `valid` makes it.
    pub(super) fn restore(&mut self, image: TableImage, valid: impl Fn(u64) -> u64) {
        if image.slots.len() != self.slots.len() {
            return;
        }
        self.hasher = image.hasher;
        for (slot, v) in self.slots.iter().zip(image.slots) {
            slot.set_bits(valid(v));
        }
    }
}
