//! Counters: every datagram received is either handled or refused, and refusals by reason.
//!
//! Each worker increments its own cache-line-padded block, so counting costs no contention;
//! readers sum the blocks.

use std::fmt::Write;
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
    /// Sends dropped because the relay never sends to their destination.
    pub bad_destination: AtomicU64,
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

    /// Renders all counters in the Prometheus text format. Names say what they count, in
    /// Prometheus's conventions: `_total` for counters, the unit (`_bytes`) in the name.
    pub fn prometheus(&self, peers: usize, watch_entries: usize, channels: usize) -> String {
        let mut s = String::new();
        if let Some(labels) = self.info.get() {
            let _ = writeln!(
                s,
                "# HELP udp_relay_build_info The relay's version and how it runs (always 1)."
            );
            let _ = writeln!(s, "# TYPE udp_relay_build_info gauge");
            let _ = writeln!(s, "udp_relay_build_info{{{labels}}} 1");
        }
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
            let _ = writeln!(s, "# TYPE udp_relay_{name} counter");
            let _ = writeln!(s, "udp_relay_{name} {v}");
        };
        for (name, help, f) in [
            (
                "datagrams_received_total",
                "Datagrams received (each of a coalesced receive counted alone).",
                (|c: &Counters| &c.received) as fn(&Counters) -> &AtomicU64,
            ),
            (
                "received_bytes_total",
                "Bytes of the datagrams received.",
                |c| &c.received_bytes,
            ),
            (
                "datagrams_sent_total",
                "Datagrams sent: forwards, replies, announcements, keepalives.",
                |c| &c.sent,
            ),
            ("sent_bytes_total", "Bytes of the datagrams sent.", |c| {
                &c.sent_bytes
            }),
            (
                "relay_messages_forwarded_total",
                "JSON relay messages forwarded as relayed_packet.",
                |c| &c.forwarded,
            ),
            (
                "channel_frames_forwarded_total",
                "Channel frames forwarded.",
                |c| &c.frames,
            ),
            (
                "channel_frames_forwarded_bytes_total",
                "Bytes of the channel frames forwarded.",
                |c| &c.frame_bytes,
            ),
            (
                "stun_binding_successes_total",
                "STUN Binding requests answered with a success.",
                |c| &c.stun_answered,
            ),
            (
                "stun_binding_unknown_attributes_total",
                "STUN Binding requests answered 420 (unknown comprehension-required attributes).",
                |c| &c.stun_unknown,
            ),
            (
                "registrations_total",
                "Names registered that were free or held by a stale registration.",
                |c| &c.registrations,
            ),
            (
                "answers_short_total",
                "Essential answers (register_ack, pong) sent in short form: neither the request's own bytes nor the reply budgets could pay the full one.",
                |c| &c.short_answers,
            ),
            (
                "registration_moves_total",
                "Registrations that moved, with their session or signature, to a new address.",
                |c| &c.moves,
            ),
            (
                "peers_unregistered_total",
                "Registrations ended by their peer's unregister.",
                |c| &c.unregistered,
            ),
            (
                "peers_reaped_total",
                "Registrations removed for silence (--peer-timeout).",
                |c| &c.reaped,
            ),
            (
                "peers_displaced_total",
                "Registrations (stale, or never proven where they are) removed from a full registry (--max-peers) to make room for a newcomer.",
                |c| &c.displaced,
            ),
            (
                "server_keepalives_total",
                "server_keepalive messages the reaper decided (those the budgets withheld are \
                 also in udp_relay_sends_withheld_total{kind=\"keepalive\"}).",
                |c| &c.keepalives,
            ),
            (
                "segmented_sends_total",
                "Sends carrying several datagrams as UDP_SEGMENT segments (GSO).",
                |c| &c.segmented_sends,
            ),
            (
                "coalesced_receives_total",
                "Receives holding several datagrams coalesced by the kernel (UDP_GRO).",
                |c| &c.coalesced_receives,
            ),
            (
                "gso_refused_total",
                "Times the kernel refused UDP segmentation where unsegmented sends to the same \
                 destination went (then off for that sender).",
                |c| &c.gso_refused,
            ),
            (
                "bad_destination_total",
                "Sends dropped because their destination is one the relay never sends to \
                 (unspecified, multicast, broadcast, port 0) or does not serve (--allowed-peer-ip).",
                |c| &c.bad_destination,
            ),
            (
                "error_replies_suppressed_total",
                "Error replies withheld by the per-source error rate (--error-rate).",
                |c| &c.errors_suppressed,
            ),
            (
                "coalesced_peer_lists_sent_total",
                "peer_list messages sent in place of withheld announcements.",
                |c| &c.coalesced_lists,
            ),
            (
                "uring_receive_buffers_exhausted_total",
                "io_uring receives that found every buffer in use (ENOBUFS) and were re-armed.",
                |c| &c.recv_no_buffers,
            ),
        ] {
            counter(name, help, self.sum(f));
        }
        // Per worker: which worker falls behind is what an operator needs to see; a sum over
        // the label is the relay's.
        for (name, help, f) in [
            (
                "receive_queue_drops_total",
                "Datagrams the kernel dropped for a full receive queue, by worker socket.",
                (|c: &Counters| &c.queue_drops) as fn(&Counters) -> &AtomicU64,
            ),
            (
                "send_errors_total",
                "Datagrams whose send the kernel refused, by worker (the reaper's as worker=\"reaper\").",
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
            "# HELP udp_relay_datagrams_refused_total Datagrams refused, by reason."
        );
        let _ = writeln!(s, "# TYPE udp_relay_datagrams_refused_total counter");
        for &r in Reason::ALL {
            let _ = writeln!(
                s,
                "udp_relay_datagrams_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.refused(r)
            );
        }
        let _ = writeln!(
            s,
            "# HELP udp_relay_sends_withheld_total Sends withheld because their payer could not pay, by kind."
        );
        let _ = writeln!(s, "# TYPE udp_relay_sends_withheld_total counter");
        for (kind, v) in [
            ("reply", self.sum(|c| &c.withheld_replies)),
            ("announcement", self.sum(|c| &c.withheld_announcements)),
            ("keepalive", self.sum(|c| &c.withheld_keepalives)),
        ] {
            let _ = writeln!(s, "udp_relay_sends_withheld_total{{kind=\"{kind}\"}} {v}");
        }
        for (name, help, v) in [
            ("peers_registered", "Names registered now.", peers),
            ("watch_entries", "Watch entries held.", watch_entries),
            ("channels_bound", "Channels bound now (pairs).", channels),
        ] {
            let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
            let _ = writeln!(s, "# TYPE udp_relay_{name} gauge");
            let _ = writeln!(s, "udp_relay_{name} {v}");
        }
        s
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
