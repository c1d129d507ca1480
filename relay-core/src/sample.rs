//! A recent sample of live peers, which the lists and announcements of a large registry name.

use std::sync::{Arc, Mutex};

use crate::clock::Now;
use crate::registry::{Live, Registry};

/// How long a sample of live peers serves the lists of a large registry before it is rebuilt.
pub const SAMPLE_MS: u64 = 1000;

/// A registry at most this large is cheap to walk, so a sample short of the budget is rebuilt
/// as soon as the registry changes rather than after [`SAMPLE_MS`].
const EAGER_REBUILD: usize = 16_384;

/// A recent sample of live peers, listed in every `peer_list` and announcement beyond
/// `announce_max`. Building one walks the registry until enough live peers are found, which at a
/// million peers (most of them stale, after an outage) must not happen per registration or per
/// reaped peer; so a large registry's sample is rebuilt at most once every [`SAMPLE_MS`].
#[derive(Default)]
pub struct Sample(Mutex<Option<Built>>);

struct Built {
    at_ms: u64,
    registry_len: usize,
    peers: Arc<[Live]>,
}

impl Sample {
    /// The sample of `registry`'s live peers at `now`, of up to `fit` (what a list can hold).
    pub fn get(&self, registry: &Registry, fit: usize, now: Now) -> Arc<[Live]> {
        let len = registry.len();
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &*slot {
            let fresh = now.ms.saturating_sub(b.at_ms) < SAMPLE_MS;
            // A short sample would leave room in the budget unused once peers have joined.
            let short = b.peers.len() < fit && len != b.registry_len && len <= EAGER_REBUILD;
            if fresh && !short {
                return b.peers.clone();
            }
        }
        let peers: Arc<[Live]> = registry.live_peers(now.ms, fit).into();
        *slot = Some(Built {
            at_ms: now.ms,
            registry_len: len,
            peers: peers.clone(),
        });
        peers
    }
}
