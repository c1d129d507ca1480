//! Bounded-memory token buckets: what each source, each network prefix and the relay as a whole
//! may send in (datagrams and bytes), and how many error replies the relay volunteers.
//!
//! Keys hash into fixed tables of buckets, so a flood from many addresses cannot grow memory;
//! keys sharing a bucket only share its allowance. Each worker owns its tables: `SO_REUSEPORT`
//! steers a source to one worker, so no locking is needed (a prefix spread over several workers
//! gets each worker's allowance; the relay-wide cap is shared out evenly).

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::addr::prefix;
use crate::keyed::Keyed;
use crate::refusal::Reason;
use crate::settings::Settings;

/// Buckets per table: at a million peers, a few dozen sources share one (32 bytes each).
const SLOTS: usize = 1 << 16;
/// Prefix tables are smaller: there are fewer prefixes than sources.
const PREFIX_SLOTS: usize = 1 << 14;

/// A bucket as two words: the tokens used (an `f64`'s bits) and when it was last refilled. All
/// zero is a full bucket, so a table is zeroed memory that becomes resident only where used.
type Bucket = [u64; 2];

/// A table of token buckets: `rate` tokens a second per key, up to `burst`; a rate of 0 admits
/// everything.
pub struct Buckets {
    slots: Box<[Bucket]>,
    hasher: Keyed,
    rate: f64,
    burst: f64,
}

impl Buckets {
    /// A table of `slots` buckets.
    pub fn new(slots: usize, rate: f64, burst: f64) -> Buckets {
        Buckets {
            slots: vec![[0u64; 2]; if rate > 0.0 { slots } else { 0 }].into_boxed_slice(),
            hasher: Keyed::random(),
            rate,
            burst,
        }
    }

    /// Takes `cost` tokens for `key` at `now_ms`; false (taking nothing) when there are fewer.
    pub fn take(&mut self, key: impl Hash, cost: f64, now_ms: u64) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let h = self.hasher.hash_one(key) as usize;
        self.take_at(h, cost, now_ms)
    }

    /// Takes `cost` tokens from the bucket of hash `h`, if the table limits anything.
    fn take_at(&mut self, h: usize, cost: f64, now_ms: u64) -> bool {
        if self.available_at(h, now_ms) >= cost {
            self.spend_at(h, cost);
            true
        } else {
            false
        }
    }

    /// The tokens in the bucket of hash `h` at `now_ms` (infinite where nothing is limited).
    pub fn available_at(&mut self, h: usize, now_ms: u64) -> f64 {
        if self.slots.is_empty() {
            return f64::INFINITY;
        }
        let n = self.slots.len();
        let [used, at_ms] = &mut self.slots[h % n];
        let elapsed = now_ms.saturating_sub(*at_ms) as f64 / 1000.0;
        let left = (f64::from_bits(*used) - elapsed * self.rate).max(0.0);
        *used = left.to_bits();
        *at_ms = now_ms.max(*at_ms);
        self.burst - left
    }

    /// Takes `cost` tokens from the bucket of hash `h` (after [`Buckets::available_at`]).
    pub fn spend_at(&mut self, h: usize, cost: f64) {
        let n = self.slots.len();
        if let Some([used, _]) = self.slots.get_mut(h % n.max(1)) {
            *used = (f64::from_bits(*used) + cost).to_bits();
        }
    }

    /// The hash of `key` in this table.
    pub fn hash(&self, key: impl Hash) -> usize {
        self.hasher.hash_one(key) as usize
    }
}

/// A table of buckets as a handover image holds it.
#[derive(Serialize, Deserialize)]
pub struct BucketsImage {
    slots: Vec<Bucket>,
    hasher: Keyed,
}

impl Buckets {
    fn export(&self) -> BucketsImage {
        BucketsImage {
            slots: self.slots.to_vec(),
            hasher: self.hasher,
        }
    }

    /// Takes up the buckets of `image` if it is a table of this size (else this one stays as
    /// it is: full), with any value no bucket could hold made full, no bucket more used than
    /// this table's burst (a relay of higher rates, or a crafted image, would otherwise leave
    /// it refusing for as long as this rate takes to refill that: for ever, for `f64::MAX`),
    /// and no refill time later than `now_ms`.
    fn restore(&mut self, image: BucketsImage, now_ms: u64) {
        if image.slots.len() != self.slots.len() {
            return;
        }
        self.hasher = image.hasher;
        for (slot, [used, at]) in self.slots.iter_mut().zip(image.slots) {
            let u = f64::from_bits(used);
            let used = if u.is_finite() && u >= 0.0 {
                u.min(self.burst).to_bits()
            } else {
                0
            };
            *slot = [used, at.min(now_ms)];
        }
    }
}

/// Per-source token buckets for replies the relay volunteers (errors).
pub struct SourceLimiter(Buckets);

impl SourceLimiter {
    /// A limiter allowing `rate` events a second per source, with bursts of `burst`.
    pub fn new(rate: f32, burst: f32) -> SourceLimiter {
        SourceLimiter(Buckets::new(SLOTS, f64::from(rate), f64::from(burst)))
    }

    /// Takes one token for `ip` at `now_ms`; false when its bucket is empty.
    pub fn allow(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        self.0.take(ip, 1.0, now_ms)
    }
}

/// Two buckets per key, datagrams and bytes, found with one hash.
struct Pair {
    datagrams: Buckets,
    bytes: Buckets,
    hasher: Keyed,
}

impl Pair {
    fn new(slots: usize, datagrams: u64, bytes: u64) -> Pair {
        Pair {
            datagrams: table(slots, datagrams),
            bytes: table(slots, bytes),
            hasher: Keyed::random(),
        }
    }

    fn take(&mut self, key: impl Hash, len: f64, now_ms: u64) -> bool {
        if self.datagrams.slots.is_empty() && self.bytes.slots.is_empty() {
            return true;
        }
        let h = self.hasher.hash_one(key) as usize;
        self.datagrams.take_at(h, 1.0, now_ms) && self.bytes.take_at(h, len, now_ms)
    }

    /// Takes `n` datagrams' worth from `key`'s datagram bucket alone.
    fn charge(&mut self, key: impl Hash, n: f64, now_ms: u64) -> bool {
        if self.datagrams.slots.is_empty() {
            return true;
        }
        let h = self.hasher.hash_one(key) as usize;
        self.datagrams.take_at(h, n, now_ms)
    }
}

/// Two tables of buckets found by one hash, as a handover image holds them.
#[derive(Serialize, Deserialize)]
pub struct PairImage {
    datagrams: BucketsImage,
    bytes: BucketsImage,
    hasher: Keyed,
}

impl Pair {
    fn export(&self) -> PairImage {
        PairImage {
            datagrams: self.datagrams.export(),
            bytes: self.bytes.export(),
            hasher: self.hasher,
        }
    }

    fn restore(&mut self, image: PairImage, now_ms: u64) {
        self.hasher = image.hasher;
        self.datagrams.restore(image.datagrams, now_ms);
        self.bytes.restore(image.bytes, now_ms);
    }
}

/// Admission of incoming datagrams, before any parsing: per source address and per prefix,
/// datagrams and bytes, and this worker's share of the relay-wide datagram rate.
pub struct Ingress {
    source: Pair,
    prefix: Pair,
    global: Buckets,
}

/// Bursts allow this many seconds' worth of a rate.
const BURST_SECONDS: f64 = 2.0;

fn table(slots: usize, rate: u64) -> Buckets {
    let rate = rate as f64;
    Buckets::new(slots, rate, (rate * BURST_SECONDS).max(1.0))
}

impl Ingress {
    /// The limits of `s`, for one of `workers` workers.
    pub fn new(s: &Settings, workers: usize) -> Ingress {
        let share = s.global_rate.div_ceil(workers.max(1) as u64);
        Ingress {
            source: Pair::new(SLOTS, s.source_rate, s.source_bytes),
            prefix: Pair::new(PREFIX_SLOTS, s.prefix_rate, s.prefix_bytes),
            global: table(1, share),
        }
    }

    /// Whether a datagram of `len` bytes from `from` is admitted at `now_ms`, or why not.
    pub fn admit(&mut self, from: SocketAddr, len: usize, now_ms: u64) -> Result<(), Reason> {
        let len = len as f64;
        if !self.source.take(from, len, now_ms) {
            return Err(Reason::SourceLimited);
        }
        if !self.prefix.take(prefix(from.ip()), len, now_ms) {
            return Err(Reason::PrefixLimited);
        }
        if !self.global.take((), 1.0, now_ms) {
            return Err(Reason::GlobalLimited);
        }
        Ok(())
    }

    /// Charges `from` for `n` more datagrams' worth of work (a `watch` of many names), or says
    /// it has not that much left.
    pub fn charge(&mut self, from: SocketAddr, n: usize, now_ms: u64) -> Result<(), Reason> {
        if n == 0 || self.source.charge(from, n as f64, now_ms) {
            Ok(())
        } else {
            Err(Reason::SourceLimited)
        }
    }
}

/// One worker's limits: its admission buckets and its error replies' (`SO_REUSEPORT` steers a
/// source to one socket, so each worker's are its sources'). Kept in the shared state while
/// the worker is stopped, so that a pause, a failed takeover or a takeover that hands them
/// over never gives a flood fresh buckets.
pub struct Admission {
    /// Admission per source, prefix and relay.
    pub ingress: Ingress,
    /// Error replies per source.
    pub errors: SourceLimiter,
    /// The generation of published settings these were made for.
    pub generation: u64,
}

/// One worker's limits as a handover image holds them.
#[derive(Serialize, Deserialize)]
pub struct AdmissionImage {
    source: PairImage,
    prefix: PairImage,
    global: BucketsImage,
    errors: BucketsImage,
}

impl Admission {
    /// Full buckets with the limits of `s`, for one of `workers` workers.
    pub fn new(s: &Settings, workers: usize, generation: u64) -> Admission {
        let rate = s.error_rate as f32;
        Admission {
            ingress: Ingress::new(s, workers),
            errors: SourceLimiter::new(rate, 2.0 * rate),
            generation,
        }
    }

    /// No buckets at all (a placeholder, which limits nothing).
    pub fn empty() -> Admission {
        Admission {
            ingress: Ingress {
                source: Pair::new(0, 0, 0),
                prefix: Pair::new(0, 0, 0),
                global: table(0, 0),
            },
            errors: SourceLimiter(Buckets::new(0, 0.0, 0.0)),
            generation: 0,
        }
    }

    /// Its buckets, for a handover.
    pub fn export(&self) -> AdmissionImage {
        AdmissionImage {
            source: self.ingress.source.export(),
            prefix: self.ingress.prefix.export(),
            global: self.ingress.global.export(),
            errors: self.errors.0.export(),
        }
    }

    /// Takes up the buckets of `image` (those of tables of the same size) at `now_ms`.
    pub fn restore(&mut self, image: AdmissionImage, now_ms: u64) {
        self.ingress.source.restore(image.source, now_ms);
        self.ingress.prefix.restore(image.prefix, now_ms);
        self.ingress.global.restore(image.global, now_ms);
        self.errors.0.restore(image.errors, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_admits_everything() {
        let mut b = Buckets::new(16, 0.0, 0.0);
        assert!((0..1000).all(|_| b.take(1, 1e9, 0)));
    }

    #[test]
    fn ingress_limits_sources_then_prefixes() {
        let s = Settings {
            source_rate: 10,
            source_bytes: 1_000_000,
            prefix_rate: 30,
            prefix_bytes: 1_000_000,
            global_rate: 0,
            ..Settings::default()
        };
        let mut i = Ingress::new(&s, 1);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // A burst of two seconds' worth, then nothing until tokens refill.
        assert!((0..20).all(|_| i.admit(a, 10, 0).is_ok()));
        assert_eq!(i.admit(a, 10, 0), Err(Reason::SourceLimited));
        assert!(i.admit(a, 10, 100).is_ok());
        // Other sources of the same /24 share the prefix's 60 (+3 refilled by 100 ms) with it.
        let others = (2..=5).map(|n| format!("10.0.0.{n}:1").parse::<SocketAddr>().unwrap());
        let admitted: usize = others
            .map(|o| (0..20).filter(|_| i.admit(o, 10, 100).is_ok()).count())
            .sum();
        assert_eq!(admitted, 60 + 3 - 21);
        let elsewhere: SocketAddr = "10.0.1.1:1".parse().unwrap();
        assert!(i.admit(elsewhere, 10, 100).is_ok());
        // Bytes count too.
        let big: SocketAddr = "10.9.9.9:1".parse().unwrap();
        assert_eq!(i.admit(big, 3_000_000, 100), Err(Reason::SourceLimited));
    }

    /// A relay that takes over with lower rates (or from a crafted image) gets buckets no
    /// fuller than its own burst: what another relay's burst allowed, or a value no bucket
    /// holds, refills within its own burst's time, not the other's (or never).
    #[test]
    fn a_restored_bucket_holds_no_more_than_its_own_burst() {
        let old = Settings {
            source_rate: 1000,
            source_bytes: 0,
            prefix_rate: 0,
            prefix_bytes: 0,
            global_rate: 0,
            ..Settings::default()
        };
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let mut before = Admission::new(&old, 1, 0);
        while before.ingress.admit(a, 10, 0).is_ok() {}
        // The new relay allows 10 a second: 20 at once, refilled in 2 s.
        let new = Settings {
            source_rate: 10,
            ..old.clone()
        };
        let mut after = Admission::new(&new, 1, 0);
        after.restore(before.export(), 0);
        assert!(after.ingress.admit(a, 10, 0).is_err(), "spent stays spent");
        assert!(
            after.ingress.admit(a, 10, 2_000).is_ok(),
            "still refused after the new burst's time: the old relay's burst was kept"
        );
        // A crafted image: the relay-wide bucket used up beyond anything a clock refills.
        let global = Settings {
            global_rate: 100,
            source_rate: 0,
            ..old
        };
        let mut image = Admission::new(&global, 1, 0).export();
        image.global.slots[0][0] = f64::MAX.to_bits();
        let mut wedged = Admission::new(&global, 1, 0);
        wedged.restore(image, 0);
        assert!(
            wedged.ingress.admit(a, 10, 2_000).is_ok(),
            "a crafted image stopped the relay for good"
        );
    }

    #[test]
    fn bursts_then_refills() {
        let mut l = SourceLimiter::new(10.0, 3.0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..3).all(|_| l.allow(ip, 0)));
        assert!(!l.allow(ip, 0));
        assert!(l.allow(ip, 100));
        assert!(!l.allow(ip, 100));
    }
}
