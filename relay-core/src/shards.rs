//! The registry's hash tables: sharded, and sized for the most entries they are meant to hold.
//!
//! A hash table's buckets come in powers of two and it doubles at 7/8 full, so at a million
//! entries any table, or any power-of-two number of shards of one (as `dashmap` requires), is
//! less than half full: 2^21 buckets, the next doubling at 1,835,008. These tables take a
//! number of shards that is not a power of two, chosen so that at the expected size each shard
//! is about 70% full (a million peers: 345 shards of 4,096 buckets, 1.41 million buckets in
//! all; the 524,288 halves of the most channels: 362 of 2,048). The hash is computed once, for
//! both the shard and the bucket.
//!
//! Removals leave tombstones, which use up a table's room as entries do. A table out of room
//! grows when more than half of it is in use, so at 70% a table that only churns (as the
//! registry does at a steady million) would double within a few thousand removals and never
//! come back. A shard out of room is rebuilt instead, at the size its entries need, one eighth
//! more: without tombstones, and at the same size unless it is truly fuller.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use crate::keyed::Keyed;
pub use hashbrown::hash_table::Entry;

/// Fewest shards, whatever the expected size: enough that workers rarely meet on a lock.
const MIN_SHARDS: usize = 256;
/// Most shards (128 bytes each, resident from the start, however large `--max-peers` is):
/// beyond 4,096 x 2,900 (11.9 million) entries, shards are fuller and double as any table does.
const MAX_SHARDS: usize = 4096;
/// Buckets of a shard at the expected size, at most.
const SHARD_BUCKETS: usize = 4096;
/// Entries a shard of [`SHARD_BUCKETS`] holds on average at the expected size: 70.8% full, and
/// 5.3 standard deviations below where a rebuild would double it (3,185: 7/8 of the buckets,
/// less the eighth a rebuild leaves free). Smaller shards are as full, with less margin.
const SHARD_ENTRIES: usize = 2900;
const _: () = assert!(SHARD_ENTRIES + SHARD_ENTRIES / 8 < SHARD_BUCKETS * 7 / 8);

/// Shards for `expected` entries: as many as make each about 70.8% full at the largest shard
/// size (4,096, 2,048 or 1,024 buckets) that gives at least [`MIN_SHARDS`]; below that
/// (under 185,600 entries), [`MIN_SHARDS`], filled as the table's doublings fall.
fn shard_count(expected: usize) -> usize {
    [1, 2, 4]
        .into_iter()
        .map(|div| expected.div_ceil(SHARD_ENTRIES / div))
        .find(|&n| n >= MIN_SHARDS)
        .map_or(MIN_SHARDS, |n| n.min(MAX_SHARDS))
}

/// One shard, on cache lines of its own so that workers locking neighbours do not contend.
#[repr(align(128))]
struct Shard<K, V>(RwLock<HashTable<(K, V)>>);

/// A sharded hash table of `(K, V)` entries.
pub struct Sharded<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: Keyed,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// A table meant to hold up to `expected` entries.
    pub fn new(expected: usize) -> Sharded<K, V> {
        Sharded {
            shards: (0..shard_count(expected))
                .map(|_| Shard(RwLock::new(HashTable::new())))
                .collect(),
            hasher: Keyed::random(),
        }
    }

    /// Makes room for `n` more entries spread over the shards as the hash spreads them (an
    /// eighth more than the average, as a rebuild leaves), so that filling the table at once
    /// (a restore) never grows a shard on the way.
    pub fn reserve(&self, n: usize) {
        let per = n.div_ceil(self.shards.len());
        let per = per + per / 8 + 16;
        for s in &self.shards {
            let mut t = s.0.write().unwrap_or_else(|e| e.into_inner());
            t.reserve(per, |(k, _)| self.hash(k));
        }
    }

    /// The key of its hash, for a relay taking over to fill its table in this one's order.
    pub fn key(&self) -> Keyed {
        self.hasher
    }

    /// Takes up `key` for the hash; for a table that holds nothing yet.
    pub fn set_key(&mut self, key: Keyed) {
        debug_assert!(self.is_empty());
        self.hasher = key;
    }

    fn hash<Q: Hash + ?Sized>(&self, q: &Q) -> u64 {
        self.hasher.hash_one(q)
    }

    /// The shard of `hash`. Its bits 20 to 51 pick it (by multiplication, as the count is not a
    /// power of two): the table uses the low bits for the bucket and the top seven as the tag
    /// that filters comparisons, which must vary within a shard.
    fn shard(&self, hash: u64) -> &RwLock<HashTable<(K, V)>> {
        &self.shards[self.shard_index(hash)].0
    }

    fn shard_index(&self, hash: u64) -> usize {
        let mid = (hash >> 20) & u64::from(u32::MAX);
        ((mid * self.shards.len() as u64) >> 32) as usize
    }

    /// The hash of `q` and the index of its shard: filling a table in shard order (a restore)
    /// keeps each shard in the cache while it fills, where random order misses on every entry.
    pub fn locate<Q: Hash + ?Sized>(&self, q: &Q) -> (u64, usize) {
        let h = self.hash(q);
        (h, self.shard_index(h))
    }

    /// [`Sharded::entry`] for a key whose hash [`Sharded::locate`] gave.
    pub fn entry_hashed<Q, R>(&self, h: u64, q: &Q, f: impl FnOnce(Entry<'_, (K, V)>) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut t = self.write(h);
        self.make_room(&mut t);
        f(t.entry(h, |(k, _)| k.borrow() == q, |(k, _)| self.hash(k)))
    }

    fn read(&self, hash: u64) -> RwLockReadGuard<'_, HashTable<(K, V)>> {
        self.shard(hash).read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, HashTable<(K, V)>> {
        self.shard(hash).write().unwrap_or_else(|e| e.into_inner())
    }

    /// What `f` makes of the entry of `q`, if there is one, under the shard's read lock.
    pub fn get<Q, R>(&self, q: &Q, f: impl FnOnce(&K, &V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let h = self.hash(q);
        let t = self.read(h);
        t.find(h, |(k, _)| k.borrow() == q).map(|(k, v)| f(k, v))
    }

    /// What `f` makes of the value of `q`, if there is one, under the shard's write lock.
    pub fn get_mut<Q, R>(&self, q: &Q, f: impl FnOnce(&mut V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let h = self.hash(q);
        let mut t = self.write(h);
        t.find_mut(h, |(k, _)| k.borrow() == q).map(|(_, v)| f(v))
    }

    /// Whether `q` has an entry.
    pub fn contains<Q>(&self, q: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(q, |_, _| ()).is_some()
    }

    /// What `f` makes of the entry of `q`, occupied or vacant, under the shard's write lock. A
    /// key inserted into the vacant entry must be one `q` borrows from (it hashes alike).
    pub fn entry<Q, R>(&self, q: &Q, f: impl FnOnce(Entry<'_, (K, V)>) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // `make_room` left room for one more, so the table does not grow there.
        self.entry_hashed(self.hash(q), q, f)
    }

    /// Sets `k`'s value to `v`.
    pub fn insert(&self, k: K, v: V) {
        let h = self.hash(&k);
        let mut t = self.write(h);
        self.make_room(&mut t);
        match t.entry(h, |(x, _)| *x == k, |(x, _)| self.hash(x)) {
            Entry::Occupied(mut o) => o.get_mut().1 = v,
            Entry::Vacant(e) => {
                e.insert((k, v));
            }
        }
    }

    /// Removes `q`'s entry, returning it.
    pub fn remove<Q>(&self, q: &Q) -> Option<(K, V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let h = self.hash(q);
        let mut t = self.write(h);
        let found = t.find_entry(h, |(k, _)| k.borrow() == q).ok()?;
        Some(found.remove().0)
    }

    /// Shards of the table, for [`Sharded::in_shard`].
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// What `f` makes of shard `i`'s entries, under its read lock.
    pub fn in_shard<R>(&self, i: usize, f: impl FnOnce(&HashTable<(K, V)>) -> R) -> R {
        f(&self.shards[i].0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Entries in all (not a snapshot: shards are counted one after the other).
    pub fn len(&self) -> usize {
        (0..self.shard_count())
            .map(|i| self.in_shard(i, HashTable::len))
            .sum()
    }

    /// Whether no shard holds an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets in all, and bytes of table memory (for the size tests).
    #[cfg(test)]
    pub fn footprint(&self) -> (usize, usize) {
        let (mut buckets, mut bytes) = (0, size_of_val(&*self.shards));
        for i in 0..self.shard_count() {
            self.in_shard(i, |t| {
                buckets += t.num_buckets();
                bytes += t.allocation_size();
            });
        }
        (buckets, bytes)
    }

    /// Makes room for one more entry in `t`: if its room is used up (by entries or
    /// tombstones), rebuilds it for its entries and an eighth more, which keeps its size unless
    /// it is full of entries rather than tombstones.
    fn make_room(&self, t: &mut HashTable<(K, V)>) {
        if t.len() < t.capacity() {
            return;
        }
        let mut fresh = HashTable::with_capacity(t.len() + t.len() / 8 + 1);
        for e in t.drain() {
            fresh.insert_unique(self.hash(&e.0), e, |(k, _)| self.hash(k));
        }
        *t = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_fit_shards_of_4096_buckets() {
        assert_eq!(shard_count(1_000_000), 345);
        assert_eq!(shard_count(2 * 262_144), 362);
        assert_eq!(shard_count(1000), MIN_SHARDS);
        assert_eq!(shard_count(usize::MAX), MAX_SHARDS);
        assert_eq!(size_of::<Shard<u64, u64>>(), 128);
        // Where a rebuild doubles a shard, 5.3 standard deviations above its expected count.
        let doubles_at = SHARD_BUCKETS * 7 / 8 * 8 / 9;
        assert!(SHARD_ENTRIES as f64 + 5.0 * (SHARD_ENTRIES as f64).sqrt() < doubles_at as f64);
        assert_eq!(
            HashTable::<u64>::with_capacity(SHARD_ENTRIES + SHARD_ENTRIES / 8 + 1).num_buckets(),
            SHARD_BUCKETS
        );
    }

    #[test]
    fn churn_at_the_expected_size_does_not_grow_the_tables() {
        // 256 shards of about 2,900 entries (the size a million makes per shard), churned: a
        // hashbrown table at 70% doubles within a few thousand removals; rebuilt, these never.
        let n = MIN_SHARDS * SHARD_ENTRIES;
        let t = Sharded::<u64, u64>::new(n);
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut keys: Vec<u64> = (0..n).map(|_| next()).collect();
        for &k in &keys {
            t.insert(k, k);
        }
        let (buckets, _) = t.footprint();
        assert_eq!(buckets, MIN_SHARDS * SHARD_BUCKETS);
        for _ in 0..2 * n {
            let i = (next() % n as u64) as usize;
            assert!(t.remove(&keys[i]).is_some());
            keys[i] = next();
            t.insert(keys[i], 0);
        }
        assert_eq!(t.len(), n);
        assert_eq!(t.footprint().0, buckets, "churn grew the tables");
        for k in keys.iter().take(1000) {
            assert!(t.contains(k));
        }
    }

    #[test]
    fn entries_are_found_changed_and_removed() {
        let t = Sharded::<String, u32>::new(10);
        assert!(t.is_empty());
        t.insert("a".into(), 1);
        t.insert("a".into(), 2);
        assert_eq!(t.get("a", |_, v| *v), Some(2));
        let old = t.entry("b", |e| match e {
            Entry::Occupied(_) => None,
            Entry::Vacant(v) => Some(v.insert(("b".into(), 3)).get().1),
        });
        assert_eq!(old, Some(3));
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove("a"), Some(("a".into(), 2)));
        assert!(!t.contains("a"));
        assert_eq!(t.remove("a"), None);
    }
}
