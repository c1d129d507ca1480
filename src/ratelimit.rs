//! A bounded-memory per-source token bucket, for replies the relay volunteers (errors).
//!
//! Sources hash into a fixed table of buckets, so a flood from many addresses cannot grow
//! memory; two sources sharing a bucket only share its allowance. Each worker owns one table:
//! `SO_REUSEPORT` steers a source to one worker, so no locking is needed.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

const SLOTS: usize = 4096;

#[derive(Clone, Copy, Default)]
struct Bucket {
    tokens: f32,
    at_ms: u64,
}

/// Per-source token buckets: `rate` per second, up to `burst`.
pub struct SourceLimiter {
    slots: Box<[Bucket]>,
    hasher: RandomState,
    rate: f32,
    burst: f32,
}

impl SourceLimiter {
    /// A limiter allowing `rate` events a second per source, with bursts of `burst`.
    pub fn new(rate: f32, burst: f32) -> SourceLimiter {
        SourceLimiter {
            slots: vec![
                Bucket {
                    tokens: burst,
                    at_ms: 0
                };
                SLOTS
            ]
            .into_boxed_slice(),
            hasher: RandomState::new(),
            rate,
            burst,
        }
    }

    /// Takes one token for `ip` at `now_ms`; false when its bucket is empty.
    pub fn allow(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let i = self.hasher.hash_one(ip) as usize % SLOTS;
        let b = &mut self.slots[i];
        let elapsed = now_ms.saturating_sub(b.at_ms) as f32 / 1000.0;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at_ms = now_ms.max(b.at_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
