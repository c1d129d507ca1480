//! Counters: every datagram received is either handled or refused, and refusals by reason.
//!
//! Each worker increments its own cache-line-padded block, so counting costs no contention;
//! readers sum the blocks.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! reasons {
    ($($variant:ident => $label:literal, $doc:literal;)*) => {
        /// Why a datagram was refused (dropped without being served).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            /// Every reason, in counter order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The reason's label in metrics and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)*
                }
            }
        }
    };
}

reasons! {
    UnknownFamily => "unknown_family", "First bytes match no datagram family.";
    Unsupported => "unsupported_family", "A STUN or channel datagram, not served yet.";
    TooLarge => "too_large", "Longer than `--max-datagram`.";
    NotUtf8 => "not_utf8", "A JSON datagram that is not valid UTF-8.";
    Syntax => "malformed_json", "Not well-formed JSON, or not an object.";
    TooDeep => "too_deep", "Nested deeper than the scanner allows.";
    Duplicate => "duplicate_field", "A routing field given twice.";
    WrongType => "wrong_field_type", "A routing field of the wrong JSON type.";
    MissingField => "missing_field", "A required field is absent.";
    UnknownType => "unknown_type", "A `type` this relay does not serve.";
    BadRequest => "bad_request", "A control message whose fields do not parse.";
    InvalidName => "invalid_name", "A name that breaks the naming rules.";
    NameInUse => "name_in_use", "A live name claimed from another address.";
    NotRegistered => "not_registered", "A sender without the registration it needs.";
    UnknownTarget => "unknown_target", "A relay or connect to a name that is not live.";
    RegistryFull => "registry_full", "A new name beyond `--max-peers`.";
    Disabled => "disabled", "A request for a feature the operator switched off.";
    WatchLimit => "watch_limit", "A watch beyond the per-peer limit.";
    SourceLimited => "rate_limited_source", "Over the per-source datagram or byte rate.";
    PrefixLimited => "rate_limited_prefix", "Over the per-prefix (/24, /56) datagram or byte rate.";
    GlobalLimited => "rate_limited_global", "Over the relay-wide datagram rate (per worker share).";
    RegistrationLimited => "rate_limited_registrations", "New names from one source too fast.";
    AuthRequired => "auth_required", "An unsigned claim where signed registration is required.";
    BadSignature => "bad_signature", "A signed registration whose cookie or signature fails.";
    UnprovenTarget => "unproven_target", "A forward (signed mode) to an address that never proved it receives.";
}

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
    /// Datagrams sent (forwards, replies, announcements).
    pub sent: AtomicU64,
    /// Bytes sent.
    pub sent_bytes: AtomicU64,
    /// Sends the kernel refused.
    pub send_errors: AtomicU64,
    /// Error replies withheld by the per-source error rate limit.
    pub errors_suppressed: AtomicU64,
    /// Times the io_uring receive found no free buffer (`ENOBUFS`) and had to be re-armed.
    pub recv_no_buffers: AtomicU64,
    /// Replies and announcements withheld from unproven addresses beyond their credit.
    pub unproven_withheld: AtomicU64,
    refused: [AtomicU64; Reason::ALL.len()],
}

impl Counters {
    /// Counts one refusal.
    pub fn refuse(&self, r: Reason) {
        self.refused[r as usize].fetch_add(1, Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
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

    /// Refusals for `r` across all workers.
    pub fn refused(&self, r: Reason) -> u64 {
        self.sum(|c| &c.refused[r as usize])
    }

    /// Renders all counters in the Prometheus text format.
    pub fn prometheus(&self, peers: usize) -> String {
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
        counter("sent_total", "Datagrams sent.", self.sum(|c| &c.sent));
        counter(
            "sent_bytes_total",
            "Bytes sent.",
            self.sum(|c| &c.sent_bytes),
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
            "unproven_withheld_total",
            "Replies withheld from addresses that have not proven they receive, beyond their credit.",
            self.sum(|c| &c.unproven_withheld),
        );
        counter(
            "recv_no_buffers_total",
            "io_uring receives that found every buffer in use (ENOBUFS).",
            self.sum(|c| &c.recv_no_buffers),
        );
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
        let _ = writeln!(s, "# HELP udp_relay_peers Registered peers.");
        let _ = writeln!(s, "# TYPE udp_relay_peers gauge");
        let _ = writeln!(s, "udp_relay_peers {peers}");
        s
    }
}
