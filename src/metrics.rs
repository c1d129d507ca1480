//! Counters: every datagram received is either handled or refused, and refusals by reason.
//!
//! Each worker increments its own cache-line-padded block, so counting costs no contention;
//! readers sum the blocks.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Channel frames forwarded.
    pub frames: AtomicU64,
    /// Bytes of channel frames forwarded.
    pub frame_bytes: AtomicU64,
    /// STUN Binding requests answered with a success.
    pub stun_answered: AtomicU64,
    /// STUN Binding requests answered with a 420 (unknown attributes).
    pub stun_unknown: AtomicU64,
    /// Datagrams sent (forwards, replies, announcements).
    pub sent: AtomicU64,
    /// Bytes sent.
    pub sent_bytes: AtomicU64,
    /// Sends the kernel refused.
    pub send_errors: AtomicU64,
    /// Sends that carried several datagrams as `UDP_SEGMENT` segments.
    pub segmented_sends: AtomicU64,
    /// Times the kernel refused segmentation (which is then off for that sender).
    pub gso_refused: AtomicU64,
    /// Receives that held several datagrams coalesced by the kernel (`UDP_GRO`).
    pub coalesced_receives: AtomicU64,
    /// Datagrams the kernel dropped at this worker's socket for a full receive queue, as the
    /// socket last reported (SO_RXQ_OVFL counts from the socket's creation).
    pub queue_drops: AtomicU64,
    /// Error replies withheld by the per-source error rate limit.
    pub errors_suppressed: AtomicU64,
    /// Times the io_uring receive found no free buffer (`ENOBUFS`) and had to be re-armed.
    pub recv_no_buffers: AtomicU64,
    /// Replies (and errors) withheld because their recipient's budgets could not pay them.
    pub withheld_replies: AtomicU64,
    /// Announcements withheld by their payer's fan-out or their recipient's presence budget.
    pub withheld_announcements: AtomicU64,
    /// `server_keepalive`s withheld from untrusted registrations whose budgets could not pay.
    pub withheld_keepalives: AtomicU64,
    /// `peer_list`s sent in place of withheld announcements.
    pub coalesced_lists: AtomicU64,
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
    /// both backends make at least every [`crate::io::POLL_MS`], busy or idle.
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
}

impl Metrics {
    /// One block per worker plus one for background tasks (the reaper).
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            blocks: (0..=workers).map(|_| Arc::default()).collect(),
        }
    }

    /// The block of worker `i`; the last block belongs to the background tasks.
    pub fn block(&self, i: usize) -> Arc<Counters> {
        self.blocks[i.min(self.blocks.len() - 1)].clone()
    }

    /// The background tasks' block.
    pub fn background(&self) -> Arc<Counters> {
        self.blocks[self.blocks.len() - 1].clone()
    }

    fn sum(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
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

    /// Renders all counters in the Prometheus text format.
    pub fn prometheus(&self, peers: usize, watch_entries: usize, channels: usize) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
            let _ = writeln!(s, "# TYPE udp_relay_{name} counter");
            let _ = writeln!(s, "udp_relay_{name} {v}");
        };
        counter(
            "received_total",
            "Datagrams received.",
            self.sum(|c| &c.received),
        );
        counter(
            "received_bytes_total",
            "Bytes received.",
            self.sum(|c| &c.received_bytes),
        );
        counter(
            "forwarded_total",
            "Relayed packets forwarded.",
            self.sum(|c| &c.forwarded),
        );
        counter(
            "frames_forwarded_total",
            "Channel frames forwarded.",
            self.sum(|c| &c.frames),
        );
        counter(
            "frame_bytes_forwarded_total",
            "Bytes of channel frames forwarded.",
            self.sum(|c| &c.frame_bytes),
        );
        counter(
            "stun_answered_total",
            "STUN Binding requests answered (success).",
            self.sum(|c| &c.stun_answered),
        );
        counter(
            "stun_unknown_attributes_total",
            "STUN Binding requests answered 420 (unknown comprehension-required attributes).",
            self.sum(|c| &c.stun_unknown),
        );
        counter("sent_total", "Datagrams sent.", self.sum(|c| &c.sent));
        counter(
            "sent_bytes_total",
            "Bytes sent.",
            self.sum(|c| &c.sent_bytes),
        );
        counter(
            "segmented_sends_total",
            "Sends carrying several datagrams as UDP_SEGMENT segments (GSO).",
            self.sum(|c| &c.segmented_sends),
        );
        counter(
            "coalesced_receives_total",
            "Receives holding several datagrams coalesced by the kernel (UDP_GRO).",
            self.sum(|c| &c.coalesced_receives),
        );
        counter(
            "gso_refused_total",
            "Times the kernel refused UDP segmentation (then off for that sender).",
            self.sum(|c| &c.gso_refused),
        );
        counter(
            "send_errors_total",
            "Sends refused by the kernel.",
            self.sum(|c| &c.send_errors),
        );
        counter(
            "errors_suppressed_total",
            "Error replies withheld by the per-source limit.",
            self.sum(|c| &c.errors_suppressed),
        );
        counter(
            "coalesced_lists_total",
            "Peer lists sent in place of withheld announcements.",
            self.sum(|c| &c.coalesced_lists),
        );
        counter(
            "recv_no_buffers_total",
            "io_uring receives that found every buffer in use (ENOBUFS).",
            self.sum(|c| &c.recv_no_buffers),
        );
        // Per worker: which worker falls behind is what an operator needs to see.
        for (name, help, f) in [
            (
                "receive_queue_drops_total",
                "Datagrams the kernel dropped for a full receive queue, by worker socket.",
                (|c: &Counters| &c.queue_drops) as fn(&Counters) -> &AtomicU64,
            ),
            (
                "send_errors_by_worker_total",
                "Sends refused by the kernel, by worker (the reaper's as worker=\"reaper\").",
                |c: &Counters| &c.send_errors,
            ),
        ] {
            let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
            let _ = writeln!(s, "# TYPE udp_relay_{name} counter");
            let last = self.blocks.len() - 1;
            for (i, b) in self.blocks.iter().enumerate() {
                let worker = if i == last {
                    "reaper".to_string()
                } else {
                    i.to_string()
                };
                let v = f(b).load(Relaxed);
                let _ = writeln!(s, "udp_relay_{name}{{worker=\"{worker}\"}} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP udp_relay_refused_total Datagrams refused, by reason."
        );
        let _ = writeln!(s, "# TYPE udp_relay_refused_total counter");
        for &r in Reason::ALL {
            let _ = writeln!(
                s,
                "udp_relay_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.refused(r)
            );
        }
        let _ = writeln!(
            s,
            "# HELP udp_relay_withheld_total Sends withheld because their payer could not pay, by kind."
        );
        let _ = writeln!(s, "# TYPE udp_relay_withheld_total counter");
        for (kind, v) in [
            ("reply", self.sum(|c| &c.withheld_replies)),
            ("announcement", self.sum(|c| &c.withheld_announcements)),
            ("keepalive", self.sum(|c| &c.withheld_keepalives)),
        ] {
            let _ = writeln!(s, "udp_relay_withheld_total{{kind=\"{kind}\"}} {v}");
        }
        let _ = writeln!(s, "# HELP udp_relay_watch_entries Watch entries held.");
        let _ = writeln!(s, "# TYPE udp_relay_watch_entries gauge");
        let _ = writeln!(s, "udp_relay_watch_entries {watch_entries}");
        let _ = writeln!(s, "# HELP udp_relay_peers Registered peers.");
        let _ = writeln!(s, "# TYPE udp_relay_peers gauge");
        let _ = writeln!(s, "udp_relay_peers {peers}");
        let _ = writeln!(s, "# HELP udp_relay_channels Channels bound (pairs).");
        let _ = writeln!(s, "# TYPE udp_relay_channels gauge");
        let _ = writeln!(s, "udp_relay_channels {channels}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
