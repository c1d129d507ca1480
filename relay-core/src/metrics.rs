//! Counters: every datagram received is either handled or refused, and refusals by reason.
//!
//! Each worker increments its own cache-line-padded block, so counting costs no contention;
//! readers sum the blocks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use crate::refusal::Reason;

/// One worker's counters.
#[derive(Default)]
#[repr(align(128))]
pub struct Counters {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Bytes received.
    pub received_bytes: AtomicU64,
    /// `relayed_packet`s sent.
    pub forwarded: AtomicU64,
    /// `relay`s sent on to the relay their target is homed at, as mesh datagrams.
    pub mesh_sent: AtomicU64,
    /// Mesh datagrams delivered to a peer homed here.
    pub mesh_delivered: AtomicU64,
    /// Channel frames forwarded.
    pub frames: AtomicU64,
    /// Bytes of channel frames forwarded.
    pub frame_bytes: AtomicU64,
    /// STUN Binding requests answered with a success.
    pub stun_answered: AtomicU64,
    /// STUN Binding requests answered with a 420 (unknown attributes).
    pub stun_unknown: AtomicU64,
    /// Error replies withheld by the per-source error rate limit.
    pub errors_suppressed: AtomicU64,
    /// Replies (and errors) withheld because their recipient's budgets could not pay them.
    pub withheld_replies: AtomicU64,
    /// Announcements withheld by their payer's fan-out or their recipient's presence budget.
    pub withheld_announcements: AtomicU64,
    /// `server_keepalive`s withheld from untrusted registrations whose budgets could not pay.
    pub withheld_keepalives: AtomicU64,
    /// `peer_list`s sent in place of withheld announcements.
    pub coalesced_lists: AtomicU64,
    /// Names registered that were free or held by a stale registration.
    pub registrations: AtomicU64,
    /// Essential answers (`register_ack`, `pong`) sent in short form: neither the request nor
    /// the pools could pay the full one.
    pub short_answers: AtomicU64,
    /// Registrations that moved to a new address.
    pub moves: AtomicU64,
    /// Registrations ended by `unregister`.
    pub unregistered: AtomicU64,
    /// Registrations reaped for silence.
    pub reaped: AtomicU64,
    /// Registrations, stale or never proven, removed to make room for a newcomer.
    pub displaced: AtomicU64,
    /// `server_keepalive`s the reaper decided.
    pub keepalives: AtomicU64,
    /// When this worker's loop last turned, in the relay clock's ms plus one (0: never), for
    /// `/readyz` and the watchdog.
    turned: AtomicU64,
    refused: Refused,
}

/// One counter per refusal reason (more than `Default` derives for an array).
struct Refused([AtomicU64; Reason::ALL.len()]);

impl Default for Refused {
    fn default() -> Refused {
        Refused(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counters {
    /// Counts one refusal.
    pub fn refuse(&self, r: Reason) {
        self.refused.0[r as usize].fetch_add(1, Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Notes that the worker's loop turned at `ms` (the relay clock's): once a loop turn, which
    /// both backends make at least every `relay_udp::POLL_MS`, busy or idle.
    pub fn turned(&self, ms: u64) {
        self.turned.store(ms + 1, Relaxed);
    }
}

/// How long a worker's loop may go without turning before the relay is not ready: ten times
/// the longest an idle loop waits, so that only a stuck or dead worker trips it.
pub const STALL_MS: u64 = 1000;

/// Why the relay is not ready.
#[derive(Debug, PartialEq)]
pub enum NotReady {
    /// Worker `0` has not turned its loop yet (start-up).
    NotStarted(usize),
    /// Worker `0`'s loop last turned `1` ms ago.
    Stalled(usize, u64),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::NotStarted(w) => write!(f, "worker {w} has not started"),
            NotReady::Stalled(w, ms) => write!(f, "worker {w} stalled: last turn {ms} ms ago"),
        }
    }
}

/// Counters of all workers and background tasks.
pub struct Metrics {
    blocks: Vec<Arc<Counters>>,
    /// `udp_relay_build_info`'s labels, known once the relay has chosen its backend.
    info: OnceLock<String>,
}

impl Metrics {
    /// One block per worker plus one for background tasks (the reaper).
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            blocks: (0..=workers).map(|_| Arc::default()).collect(),
            info: OnceLock::new(),
        }
    }

    /// Sets `udp_relay_build_info`'s labels (`key="value"` pairs, comma-separated) once;
    /// later calls change nothing.
    pub fn set_info(&self, labels: String) {
        let _ = self.info.set(labels);
    }

    /// The block of worker `i`; the last block belongs to the background tasks.
    pub fn block(&self, i: usize) -> Arc<Counters> {
        self.blocks[i.min(self.blocks.len() - 1)].clone()
    }

    /// The background tasks' block.
    pub fn background(&self) -> Arc<Counters> {
        self.blocks[self.blocks.len() - 1].clone()
    }

    /// The build labels set by [`Metrics::set_info`].
    pub fn info(&self) -> Option<&str> {
        self.info.get().map(String::as_str)
    }

    /// A counter summed over every block.
    pub fn sum(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.blocks.iter().map(|b| f(b).load(Relaxed)).sum()
    }

    /// Whether every worker is serving at `now_ms` (the relay clock's): each has turned its
    /// loop within [`STALL_MS`]; else every worker that has not.
    pub fn ready(&self, now_ms: u64) -> Result<(), Vec<NotReady>> {
        let workers = &self.blocks[..self.blocks.len() - 1];
        let not: Vec<NotReady> = workers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match b.turned.load(Relaxed) {
                0 => Some(NotReady::NotStarted(i)),
                t => {
                    let ago = now_ms.saturating_sub(t - 1);
                    (ago > STALL_MS).then_some(NotReady::Stalled(i, ago))
                }
            })
            .collect();
        if !not.is_empty() { Err(not) } else { Ok(()) }
    }

    /// Refusals for `r` across all workers.
    pub fn refused(&self, r: Reason) -> u64 {
        self.sum(|c| &c.refused.0[r as usize])
    }
}

/// How often at most one limit's refusals are warned of.
pub const WARN_EVERY_MS: u64 = 60_000;

/// Watches the refusals of limits (those with [`Reason::limit_flags`]) so that an operator
/// hears when a limit starts refusing traffic: read once a reaper sweep, so nothing is added
/// per datagram.
#[derive(Default)]
pub struct LimitWatch {
    /// Per reason: the count last seen, refusals not yet warned of, and when last warned.
    seen: Vec<(u64, u64, Option<u64>)>,
}

impl LimitWatch {
    /// The limits to warn of at `now_ms`, each with the refusals since its last warning: at
    /// most one per reason per [`WARN_EVERY_MS`].
    pub fn check(&mut self, metrics: &Metrics, now_ms: u64) -> Vec<(Reason, u64)> {
        if self.seen.is_empty() {
            self.seen = vec![(0, 0, None); Reason::ALL.len()];
        }
        let mut warn = Vec::new();
        for &r in Reason::ALL.iter().filter(|r| r.limit_flags().is_some()) {
            let (last, pending, warned) = &mut self.seen[r as usize];
            let now = metrics.refused(r);
            *pending += now.saturating_sub(*last);
            *last = now;
            let due = warned.is_none_or(|w| now_ms >= w + WARN_EVERY_MS);
            if *pending > 0 && due {
                warn.push((r, *pending));
                (*pending, *warned) = (0, Some(now_ms));
            }
        }
        warn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_refusals_are_warned_of_once_a_minute_with_the_count_since() {
        let m = Metrics::new(1);
        let mut watch = LimitWatch::default();
        assert_eq!(watch.check(&m, 0), vec![]);
        // Bad input is not a limit: never warned of.
        m.block(0).refuse(Reason::Syntax);
        m.block(0).refuse(Reason::SourceLimited);
        m.block(0).refuse(Reason::SourceLimited);
        assert_eq!(watch.check(&m, 10), vec![(Reason::SourceLimited, 2)]);
        m.block(0).refuse(Reason::SourceLimited);
        m.block(0).refuse(Reason::RegistryFull);
        // Another reason is warned of at once; the first waits for its minute.
        assert_eq!(watch.check(&m, 20), vec![(Reason::RegistryFull, 1)]);
        m.block(1).refuse(Reason::SourceLimited);
        assert_eq!(watch.check(&m, 10 + WARN_EVERY_MS - 1), vec![]);
        assert_eq!(
            watch.check(&m, 10 + WARN_EVERY_MS),
            vec![(Reason::SourceLimited, 2)]
        );
        assert_eq!(watch.check(&m, 20 * WARN_EVERY_MS), vec![]);
    }

    #[test]
    fn ready_only_while_every_worker_turned_within_the_stall_bound() {
        let m = Metrics::new(2);
        assert_eq!(
            m.ready(5),
            Err(vec![NotReady::NotStarted(0), NotReady::NotStarted(1)])
        );
        m.block(0).turned(0);
        m.block(1).turned(3000);
        // The reaper's block turns nothing and is not asked.
        assert_eq!(m.ready(STALL_MS), Ok(()));
        assert_eq!(
            m.ready(STALL_MS + 1),
            Err(vec![NotReady::Stalled(0, STALL_MS + 1)])
        );
        assert_eq!(
            m.ready(3000 + STALL_MS + 1).unwrap_err()[1].to_string(),
            "worker 1 stalled: last turn 1001 ms ago"
        );
    }
}
