//! What the protocol logic needs to know of the configuration, as plain types: the
//! command line, the environment and the configuration file (`crate::config`) make one; the
//! core reads it and knows nothing of where it came from.

use crate::destination::Policy;

/// Largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Whether registration must be signed (Part 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Unsigned registration allowed (the old peers'); a signed peer still gets its protection.
    Open,
    /// Every new registration or move must be signed.
    Signed,
}

/// What the protocol logic needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Silence after which a peer is stale, in ms.
    pub peer_timeout_ms: u64,
    /// Keepalive interval, in ms.
    pub keepalive_ms: u64,
    /// `--announce-max`.
    pub announce_max: usize,
    /// `--reply-budget`.
    pub reply_budget: usize,
    /// `--max-peers`.
    pub max_peers: usize,
    /// `--max-datagram`.
    pub max_datagram: usize,
    /// `--max-watch`.
    pub max_watch: usize,
    /// `--error-rate`.
    pub error_rate: u32,
    /// Whether `connect` is served.
    pub introductions: bool,
    /// `--auth`.
    pub auth: Auth,
    /// `--source-rate`.
    pub source_rate: u64,
    /// `--source-bytes`.
    pub source_bytes: u64,
    /// `--prefix-rate`.
    pub prefix_rate: u64,
    /// `--prefix-bytes`.
    pub prefix_bytes: u64,
    /// `--global-rate`.
    pub global_rate: u64,
    /// `--registration-rate`.
    pub registration_rate: u64,
    /// `--signature-rate`.
    pub signature_rate: u64,
    /// `--miss-rate`.
    pub miss_rate: u64,
    /// `--reply-credit`.
    pub reply_credit: u64,
    /// `--reply-prefix-credit`.
    pub reply_prefix_credit: u64,
    /// `--reply-global-credit`.
    pub reply_global_credit: u64,
    /// `--fanout-allowance`.
    pub fanout_allowance: u64,
    /// `--presence-rate`.
    pub presence_rate: u64,
    /// `--max-names-per-address`.
    pub max_names_per_address: usize,
    /// `--max-watch-total`.
    pub max_watch_total: usize,
    /// `--max-watch-per-host`.
    pub max_watch_per_host: usize,
    /// `--max-channels`.
    pub max_channels: usize,
    /// `--max-channels-per-host`.
    pub max_channels_per_host: usize,
    /// `--max-channels-total`.
    pub max_channels_total: usize,
    /// The peer addresses served: `--host`, `--allowed-peer-ip`, `--denied-peer-ip`.
    pub peers: Policy,
}

/// The protocol's defaults, without rate limits, budgets or watch bounds (the command line sets
/// those).
impl Default for Settings {
    fn default() -> Self {
        Settings {
            peer_timeout_ms: 60_000,
            keepalive_ms: 10_000,
            announce_max: 100,
            reply_budget: 1200,
            max_peers: 1_000_000,
            max_datagram: MAX_UDP_PAYLOAD,
            max_watch: 256,
            error_rate: 10,
            introductions: true,
            auth: Auth::Open,
            source_rate: 0,
            source_bytes: 0,
            prefix_rate: 0,
            prefix_bytes: 0,
            global_rate: 0,
            registration_rate: 0,
            signature_rate: 0,
            miss_rate: 0,
            reply_credit: 0,
            reply_prefix_credit: 0,
            reply_global_credit: 0,
            fanout_allowance: 0,
            presence_rate: 0,
            max_names_per_address: usize::MAX,
            max_watch_total: usize::MAX,
            max_watch_per_host: usize::MAX,
            max_channels: 64,
            max_channels_per_host: usize::MAX,
            max_channels_total: usize::MAX,
            peers: Policy::open(),
        }
    }
}
