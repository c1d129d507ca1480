//! What the protocol logic needs to know of the configuration, as plain types: the
//! command line, the environment and the configuration file (the binary's `config`) make one;
//! the core reads it and knows nothing of where it came from.

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

/// Hands `$callback` the list of settings, each written once: its doc, its name (the key of its
/// flag, or that key's Rust field), its type, its default here, and whether a reload changes it in
/// a running relay (`live`) or it waits for a restart (`fixed`). The defaults are the protocol's
/// without any limit, for tests and embedding ([`Settings::recommended`] has the production ones,
/// which the binary's flags take as theirs); the binary makes `Settings` from its flags by the
/// same list, so that a new setting is one line here and one flag there.
#[macro_export]
macro_rules! settings_list {
    ($callback:ident) => {
        $callback! {
            /// Silence after which a peer is stale, in ms.
            peer_timeout_ms: u64 = 60_000, fixed;
            /// Keepalive interval, in ms.
            keepalive_ms: u64 = 10_000, fixed;
            /// `--announce-max`.
            announce_max: usize = 100, live;
            /// `--reply-budget`.
            reply_budget: usize = 1200, live;
            /// `--max-peers`.
            max_peers: usize = 1_000_000, live;
            /// `--max-datagram`.
            max_datagram: usize = MAX_UDP_PAYLOAD, fixed;
            /// `--max-watch`.
            max_watch: usize = 256, live;
            /// `--error-rate`.
            error_rate: u32 = 10, live;
            /// `--no-introductions`: `connect` is refused.
            no_introductions: bool = false, fixed;
            /// `--auth`.
            auth: Auth = Auth::Open, fixed;
            /// `--source-rate`.
            source_rate: u64 = 0, live;
            /// `--source-bytes`.
            source_bytes: u64 = 0, live;
            /// `--prefix-rate`.
            prefix_rate: u64 = 0, live;
            /// `--prefix-bytes`.
            prefix_bytes: u64 = 0, live;
            /// `--global-rate`.
            global_rate: u64 = 0, live;
            /// `--registration-rate`.
            registration_rate: u64 = 0, live;
            /// `--signature-rate`.
            signature_rate: u64 = 0, live;
            /// `--miss-rate`.
            miss_rate: u64 = 0, live;
            /// `--reply-credit`.
            reply_credit: u64 = 0, live;
            /// `--reply-prefix-credit`.
            reply_prefix_credit: u64 = 0, live;
            /// `--reply-global-credit`.
            reply_global_credit: u64 = 0, live;
            /// `--fanout-allowance`.
            fanout_allowance: u64 = 0, live;
            /// `--presence-rate`.
            presence_rate: u64 = 0, live;
            /// `--max-names-per-address`.
            max_names_per_address: usize = usize::MAX, live;
            /// `--max-watch-total`.
            max_watch_total: usize = usize::MAX, live;
            /// `--max-watch-per-host`.
            max_watch_per_host: usize = usize::MAX, live;
            /// `--max-channels`.
            max_channels: usize = 64, live;
            /// `--max-channels-per-host`.
            max_channels_per_host: usize = usize::MAX, live;
            /// `--max-channels-total`.
            max_channels_total: usize = usize::MAX, live;
        }
    };
}

/// Whether a setting of the list is `live`.
macro_rules! is_live {
    (live) => {
        true
    };
    (fixed) => {
        false
    };
}

/// `Settings`, its defaults, and what a reload changes, from the list.
macro_rules! define_settings {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $default:expr, $live:ident;)*) => {
        /// What the protocol logic needs to know of the configuration.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $($(#[doc = $doc])* pub $name: $ty,)*
            /// The peer addresses served: `--host`, `--allowed-peer-ip`, `--denied-peer-ip`
            /// (made of three settings; a reload changes it).
            pub peers: Policy,
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings {
                    $($name: $default,)*
                    peers: Policy::open(),
                }
            }
        }

        /// The names of the list, in its order.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// Whether a reload changes the setting `name` of the list in a running relay.
        pub fn is_live(name: &str) -> bool {
            false $(|| (is_live!($live) && name == stringify!($name)))*
        }

        impl Settings {
            /// These settings with the live ones (and `peers`) taken from `new`.
            pub fn with_live(&self, new: &Settings) -> Settings {
                let mut s = self.clone();
                $(if is_live!($live) {
                    s.$name = new.$name.clone();
                })*
                s.peers = new.peers.clone();
                s
            }
        }
    };
}

settings_list!(define_settings);

impl Settings {
    /// The settings a relay on the open internet runs with: every limit and budget in force.
    /// The command line's defaults are these (read from here), and tests that need the limits
    /// in force start from them.
    pub fn recommended() -> Settings {
        Settings {
            source_rate: 5_000,
            source_bytes: 8_000_000,
            prefix_rate: 50_000,
            prefix_bytes: 80_000_000,
            global_rate: 2_000_000,
            registration_rate: 20,
            signature_rate: 2_000,
            miss_rate: 2,
            reply_credit: 2_048,
            reply_prefix_credit: 4_096,
            reply_global_credit: 1 << 20,
            fanout_allowance: 65_536,
            presence_rate: 4_096,
            max_names_per_address: 128,
            max_watch_total: 262_144,
            max_watch_per_host: 4_096,
            max_channels_per_host: 4_096,
            max_channels_total: 262_144,
            ..Settings::default()
        }
    }

    /// Whether `other` has the same per-worker rate limits (ingress and error replies), which
    /// the workers rebuild when a reload publishes new ones.
    pub fn same_rates(&self, other: &Settings) -> bool {
        let rates = |s: &Settings| {
            (
                s.source_rate,
                s.source_bytes,
                s.prefix_rate,
                s.prefix_bytes,
                s.global_rate,
                s.error_rate,
            )
        };
        rates(self) == rates(other)
    }
}
