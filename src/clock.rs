//! The relay's clock: read by the shells (a worker once a loop turn, the reaper once a sweep)
//! and handed to the core as a `Now`; it may resume where a handed-over state left it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use relay_core::clock::Now;

/// The relay's clock, shared by all threads so their `ms` values compare.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    /// What the clock read at `start`: 0, or where a relay that handed its state over left it,
    /// so that every time in that state (liveness, trust, token buckets) keeps its meaning.
    at_start_ms: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::resumed(0)
    }
}

impl Clock {
    /// A clock that reads `ms` now and goes on from there.
    pub fn resumed(ms: u64) -> Clock {
        Clock {
            start: Instant::now(),
            at_start_ms: ms,
        }
    }

    /// Reads the clock.
    pub fn now(&self) -> Now {
        Now {
            ms: self
                .at_start_ms
                .saturating_add(self.start.elapsed().as_millis() as u64),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}
