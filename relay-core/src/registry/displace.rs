//! The room a full registry makes for a newcomer, taken from forgeries before peers in use.

use std::sync::atomic::Ordering::Relaxed;

use super::packed::Packed;
use super::{Name, Registry, Removed};

/// Most registrations [`Registry::displace`] looks at: the cost of a newcomer to a full
/// registry stays a few microseconds, whatever the registry holds.
const DISPLACE_SCAN: usize = 1024;

impl Registry {
    /// Makes room in a full registry, as a SYN cache drops its oldest half-open entry: removes,
    /// of the next `DISPLACE_SCAN` registrations in shard order (from where the last call
    /// stopped), the one heard from least recently among those gone stale or never proven
    /// where they are. A forged registration is heard from once; a peer in use is heard from
    /// every keepalive, so a flood of new names displaces the forgeries before the peers.
    /// `None` if none such was found.
    pub fn displace(&self, now_ms: u64) -> Option<Removed> {
        let shards = self.peers.shard_count();
        let first = self.displace_at.fetch_add(1, Relaxed);
        let (mut looked, mut best): (usize, Option<(u64, Name, u64, Packed)>) = (0, None);
        for i in 0..shards {
            if looked >= DISPLACE_SCAN {
                break;
            }
            self.peers.in_shard((first + i) % shards, |table| {
                for (name, e) in table.iter().take(DISPLACE_SCAN - looked) {
                    looked += 1;
                    let older = best.as_ref().is_none_or(|b| e.last_heard() < b.0);
                    if older && (!e.proven() || !self.live(e, now_ms)) {
                        best = Some((e.last_heard(), name.clone(), e.seq, e.addr));
                    }
                }
            });
        }
        let (_, name, seq, addr) = best?;
        // Reserved before it is removed, so that no claim on another worker finds the name
        // free in between.
        let until = now_ms + self.timeout_ms;
        self.reservations.keep(&name, addr.get(), until, now_ms);
        // The same registration, still unproven or stale: one that proved itself or was
        // replaced since it was looked at stays.
        let gone = self.remove_if(&name, |e| {
            e.seq == seq && (!e.proven() || !self.live(e, now_ms))
        });
        if gone.is_none() {
            self.reservations.release(&name);
        }
        gone
    }
}
