//! The replay window of a session's received nonces (RFC 6479's sliding bitmap, as WireGuard
//! keeps it): a datagram may arrive late or out of order, by the other path, but each nonce is
//! taken once, and nothing older than the window is.

/// How far behind the highest nonce seen a datagram may still arrive.
pub const WINDOW: u64 = 2048;
// One word more than the window spans, so that the word the top is in never holds a nonce the
// window still covers from the cycle before.
const WORDS: usize = (WINDOW / 64) as usize + 1;

/// The nonces seen, as a bitmap behind the highest.
#[derive(Debug, Clone)]
pub struct Window {
    /// One above the highest nonce taken (0: none yet).
    top: u64,
    bits: [u64; WORDS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            top: 0,
            bits: [0; WORDS],
        }
    }
}

impl Window {
    /// Whether `nonce` may be taken: new, and within the window. Check before opening (cheap),
    /// [`Window::take`] after (only an authentic datagram moves the window).
    pub fn fresh(&self, nonce: u64) -> bool {
        if nonce >= self.top {
            return nonce != u64::MAX;
        }
        self.top - nonce <= WINDOW && !self.has(nonce)
    }

    fn slot(nonce: u64) -> (usize, u64) {
        (((nonce / 64) as usize) % WORDS, 1 << (nonce % 64))
    }

    fn has(&self, nonce: u64) -> bool {
        let (w, b) = Self::slot(nonce);
        self.bits[w] & b != 0
    }

    /// Takes `nonce`, which [`Window::fresh`] accepted; returns whether it was still fresh.
    pub fn take(&mut self, nonce: u64) -> bool {
        if !self.fresh(nonce) {
            return false;
        }
        if nonce >= self.top {
            // Clear the words the window slides past (all of them after a long jump).
            // The word the highest nonce taken is in, and the new one's.
            let from = self.top.saturating_sub(1) / 64;
            let to = nonce / 64;
            if self.top == 0 || to - from >= WORDS as u64 {
                self.bits = [0; WORDS];
            } else {
                for w in from + 1..=to {
                    self.bits[(w as usize) % WORDS] = 0;
                }
            }
            self.top = nonce + 1;
        }
        let (w, b) = Self::slot(nonce);
        self.bits[w] |= b;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_nonce_once_late_ones_within_the_window() {
        let mut w = Window::default();
        assert!(w.take(0));
        assert!(!w.take(0), "replayed");
        assert!(w.take(5));
        assert!(w.take(3), "late, within the window");
        assert!(!w.take(3));
        assert!(w.take(5000));
        assert!(!w.fresh(5000 - WINDOW - 1), "older than the window");
        assert!(w.fresh(5000 - WINDOW + 1));
        assert!(w.take(4999));
        assert!(!w.take(5), "slid out");
        assert!(!w.fresh(u64::MAX), "the last nonce is never used");
    }

    #[test]
    fn matches_a_set_over_random_arrivals() {
        let mut w = Window::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut top = 0u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (top + 64).saturating_sub(x % 3000);
            let want = !seen.contains(&n) && (n >= top || top - n <= WINDOW);
            assert_eq!(w.take(n), want, "nonce {n}, top {top}");
            if want {
                seen.insert(n);
                top = top.max(n + 1);
            }
        }
    }
}
