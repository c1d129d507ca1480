//! Configuration: one definition of every setting (the clap flags of [`Args`], with their
//! defaults and `UDP_RELAY_…` variables) read from a TOML file, the environment and the command
//! line, in that order of strength; the subcommands; and the checks between settings.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use relay_core::destination::{Net, Policy};
mod load;

use clap::{Parser, ValueEnum};
pub use load::{
    Invocation, Loaded, Setting, Source, command, environment, invocation, is_live, load, reread,
};
pub use relay_core::settings::{Auth, MAX_UDP_PAYLOAD, Settings};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--auth`'s values, which make the core's [`Auth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Unsigned registration allowed (the old peers'); a signed peer still gets its protection.
    Open,
    /// Every new registration or move must be signed.
    Signed,
}

impl Core<Auth> for AuthMode {
    fn core(&self) -> Auth {
        match self {
            AuthMode::Open => Auth::Open,
            AuthMode::Signed => Auth::Signed,
        }
    }
}

/// A feature switched on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Which I/O backend the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoChoice {
    /// io_uring where the kernel allows it, else recvmmsg/sendmmsg (the choice is logged).
    Auto,
    /// io_uring, or fail at start-up.
    Uring,
    /// recvmmsg/sendmmsg batches (any Linux).
    Mmsg,
}

/// The relay's command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "udp-relay",
    version,
    about = "UDP relay for peer-to-peer encrypted chat"
)]
pub struct Args {
    /// TOML file of settings (keys are the flags' long names in snake_case, e.g.
    /// `peer_timeout = "60s"`); the environment and flags override it.
    #[arg(long, env = "UDP_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (`::` for dual stack IPv6 + IPv4).
    #[arg(long, env = "UDP_RELAY_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// UDP port to listen on (0 picks a free one, logged at start-up).
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "UDP_RELAY_PORT",
        default_value_t = 8000
    )]
    pub port: u16,
    /// Worker threads, each with its own socket on the port [default: number of CPUs].
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Silence after which a peer is removed (e.g. `60`, `60s`, `1.5s`, `500ms`, `2m`).
    #[arg(id = "peer_timeout", long = "peer-timeout", allow_hyphen_values = true, env = "UDP_RELAY_PEER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub peer_timeout_ms: Duration,
    /// How often live peers are sent `server_keepalive`.
    #[arg(id = "keepalive_interval", long = "keepalive-interval", allow_hyphen_values = true, env = "UDP_RELAY_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_ms: Duration,
    /// Largest registry for which everyone hears of every join and leave and gets every name.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "UDP_RELAY_ANNOUNCE_MAX",
        default_value_t = Settings::recommended().announce_max
    )]
    pub announce_max: usize,
    /// Size limit of a `peer_list` (and of other name lists) beyond `--announce-max`, in bytes.
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_REPLY_BUDGET", default_value_t = Settings::recommended().reply_budget as u32, value_parser = clap::value_parser!(u32).range(256..=MAX_UDP_PAYLOAD as i64))]
    pub reply_budget: u32,
    /// Most names registered at once.
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_MAX_PEERS", default_value_t = Settings::recommended().max_peers as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_peers: u64,
    /// Largest datagram accepted, in bytes.
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_MAX_DATAGRAM", default_value_t = MAX_UDP_PAYLOAD as u32, value_parser = clap::value_parser!(u32).range(64..=MAX_UDP_PAYLOAD as i64))]
    pub max_datagram: u32,
    /// Most names one peer may watch.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "UDP_RELAY_MAX_WATCH",
        default_value_t = Settings::recommended().max_watch
    )]
    pub max_watch: usize,
    /// Datagrams per second one source address may send (bursts of two seconds' worth; 0: no
    /// limit).
    #[arg(long, env = "UDP_RELAY_SOURCE_RATE", default_value_t = Settings::recommended().source_rate)]
    pub source_rate: u64,
    /// Bytes per second one source address may send (0: no limit).
    #[arg(long, env = "UDP_RELAY_SOURCE_BYTES", default_value_t = Settings::recommended().source_bytes)]
    pub source_bytes: u64,
    /// Datagrams per second one /24 (IPv4) or /48 (IPv6) may send (0: no limit).
    #[arg(long, env = "UDP_RELAY_PREFIX_RATE", default_value_t = Settings::recommended().prefix_rate)]
    pub prefix_rate: u64,
    /// Bytes per second one /24 or /48 may send (0: no limit).
    #[arg(long, env = "UDP_RELAY_PREFIX_BYTES", default_value_t = Settings::recommended().prefix_bytes)]
    pub prefix_bytes: u64,
    /// Datagrams per second the whole relay accepts, shared evenly by the workers (0: no limit).
    #[arg(long, env = "UDP_RELAY_GLOBAL_RATE", default_value_t = Settings::recommended().global_rate)]
    pub global_rate: u64,
    /// New names per second one source address (IP and port: one NAT mapping) may register, and
    /// signature checks per second one IPv6 /56 or IPv4 address may cost, eight times that per
    /// /48 or /24 (bursts of ten seconds' worth; 0: no limit).
    #[arg(long, env = "UDP_RELAY_REGISTRATION_RATE", default_value_t = Settings::recommended().registration_rate)]
    pub registration_rate: u64,
    /// Ed25519 signature checks per second in the whole relay (about 50 µs of CPU each; bursts of
    /// ten seconds' worth; 0: no limit).
    #[arg(long, env = "UDP_RELAY_SIGNATURE_RATE", default_value_t = Settings::recommended().signature_rate)]
    pub signature_rate: u64,
    /// Lookups and watches of names that are not online, per second, one host (IPv4 address,
    /// IPv6 /64) may make, and four times that one /24 (IPv4) or /48 (IPv6) (bursts of 256
    /// seconds' worth; beyond, `rate_limited`; names online cost nothing; 0: no limit).
    #[arg(long, env = "UDP_RELAY_MISS_RATE", default_value_t = Settings::recommended().miss_rate)]
    pub miss_rate: u64,
    /// Bytes of replies a host (IP address) may be sent for requests that do not authenticate,
    /// beyond what it has sent itself (0: no limit); see SECURITY.md.
    #[arg(long, env = "UDP_RELAY_REPLY_CREDIT", default_value_t = Settings::recommended().reply_credit)]
    pub reply_credit: u64,
    /// The same per /24 (IPv4) or /48 (IPv6): the most a forger can make the relay send a
    /// victim network beyond what was sent in its name (0: no limit).
    #[arg(long, env = "UDP_RELAY_REPLY_PREFIX_CREDIT", default_value_t = Settings::recommended().reply_prefix_credit)]
    pub reply_prefix_credit: u64,
    /// The same for the whole relay (0: no limit).
    #[arg(long, env = "UDP_RELAY_REPLY_GLOBAL_CREDIT", default_value_t = Settings::recommended().reply_global_credit)]
    pub reply_global_credit: u64,
    /// Bytes of announcements one host's datagrams may cause beyond twice what it sent
    /// (0: no limit).
    #[arg(long, env = "UDP_RELAY_FANOUT_ALLOWANCE", default_value_t = Settings::recommended().fanout_allowance)]
    pub fanout_allowance: u64,
    /// Bytes of announcements per second one recipient address may be sent (bursts of four
    /// seconds' worth; beyond, it gets a `peer_list` later; 0: no limit).
    #[arg(long, env = "UDP_RELAY_PRESENCE_RATE", default_value_t = Settings::recommended().presence_rate)]
    pub presence_rate: u64,
    /// Most names registered at one address (what a request naming none, or a reap of the
    /// address, walks).
    #[arg(long, env = "UDP_RELAY_MAX_NAMES_PER_ADDRESS", default_value_t = Settings::recommended().max_names_per_address as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_names_per_address: u64,
    /// Watch entries held in all, over every peer (each costs about 300 bytes); the peers of one
    /// /24 (IPv4) or /48 (IPv6) hold at most a sixteenth of three quarters of it (or
    /// `--max-watch-per-host`, if more), the last quarter kept for networks holding few.
    #[arg(long, env = "UDP_RELAY_MAX_WATCH_TOTAL", default_value_t = Settings::recommended().max_watch_total)]
    pub max_watch_total: usize,
    /// Watch entries held by the peers of one host (IPv4 address, IPv6 /64).
    #[arg(long, env = "UDP_RELAY_MAX_WATCH_PER_HOST", default_value_t = Settings::recommended().max_watch_per_host)]
    pub max_watch_per_host: usize,
    /// Channels (Part 4) one peer may hold.
    #[arg(long, env = "UDP_RELAY_MAX_CHANNELS", default_value_t = Settings::recommended().max_channels as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels: u32,
    /// Channels held by the peers of one host (IPv4 address, IPv6 /64).
    #[arg(long, env = "UDP_RELAY_MAX_CHANNELS_PER_HOST", default_value_t = Settings::recommended().max_channels_per_host as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels_per_host: u32,
    /// Channels held in all (each pair costs about 300 bytes).
    #[arg(long, env = "UDP_RELAY_MAX_CHANNELS_TOTAL", default_value_t = Settings::recommended().max_channels_total as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels_total: u32,
    /// I/O backend of the workers.
    #[arg(long, env = "UDP_RELAY_IO", value_enum, default_value = "auto")]
    pub io: IoChoice,
    /// UDP segmentation offload on send (`UDP_SEGMENT`): runs of datagrams to one destination
    /// leave as one send (turned off by itself where the kernel refuses it).
    #[arg(long, env = "UDP_RELAY_GSO", value_enum, default_value = "on")]
    pub gso: OnOff,
    /// UDP receive offload (`UDP_GRO`): a burst from one sender may arrive as one coalesced
    /// receive, split by its segment size before each datagram is decided alone.
    #[arg(long, env = "UDP_RELAY_GRO", value_enum, default_value = "on")]
    pub gro: OnOff,
    /// Pin worker i to CPU i (modulo the CPUs this process may use).
    #[arg(long, env = "UDP_RELAY_PIN_WORKERS")]
    pub pin_workers: bool,
    /// Error replies allowed per source address per second (bursts of twice that).
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_ERROR_RATE", default_value_t = Settings::recommended().error_rate, value_parser = clap::value_parser!(u32).range(1..))]
    pub error_rate: u32,
    /// Registration: `open` serves the old unsigned peers; `signed` requires Ed25519 signatures.
    #[arg(long, env = "UDP_RELAY_AUTH", value_enum, default_value = "open")]
    pub auth: AuthMode,
    /// Serve peers in these ranges (CIDR, repeatable or comma-separated) though they are
    /// private or internal or in `--denied-peer-ip`; the range of `--host` is served unless
    /// `--host` is unspecified.
    #[arg(long, env = "UDP_RELAY_ALLOWED_PEER_IP", value_name = "CIDR", value_delimiter = ',', value_parser = parse_net)]
    pub allowed_peer_ip: Vec<Net>,
    /// Refuse peers in these ranges (CIDR, repeatable or comma-separated) beyond the private
    /// and internal ones (RFC 1918, 100.64/10, link-local, fc00::/7, …), refused by default.
    #[arg(long, env = "UDP_RELAY_DENIED_PEER_IP", value_name = "CIDR", value_delimiter = ',', value_parser = parse_net)]
    pub denied_peer_ip: Vec<Net>,
    /// Refuse `connect` (no introductions for hole punching).
    #[arg(long, env = "UDP_RELAY_NO_INTRODUCTIONS")]
    pub no_introductions: bool,
    /// Serve Prometheus metrics over HTTP on this address (e.g. `127.0.0.1:9100`).
    #[arg(long, env = "UDP_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Which log lines are written, as a `RUST_LOG` filter (e.g. `info`, `debug`,
    /// `udp_relay=debug`) [default: `RUST_LOG`, else `info`]; a reload changes it.
    #[arg(long, env = "UDP_RELAY_LOG_LEVEL", value_parser = parse_log_level)]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, env = "UDP_RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The Unix socket of takeovers (e.g. `/run/udp-relay/takeover`): a relay started while
    /// another listens there takes over its sockets and state, then listens there in its turn.
    #[arg(long, env = "UDP_RELAY_TAKEOVER")]
    pub takeover: Option<PathBuf>,
    /// Write the state (peers, sessions, channels) here on SIGTERM, and restore it at start.
    #[arg(long, env = "UDP_RELAY_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Join the cluster whose directory is this Redis (`redis://HOST:PORT`): names unique
    /// across its relays, presence shared, relays forwarded in one hop (docs/cluster.md). Needs
    /// `--node-id`, `--mesh-listen` and `--mesh-key-file`.
    #[arg(long, env = "UDP_RELAY_CLUSTER", value_name = "URL", value_parser = parse_redis_url)]
    pub cluster: Option<String>,
    /// This relay's id in its cluster: 1 to 64 of A-Z a-z 0-9 . _ - (a takeover keeps it).
    #[arg(long, env = "UDP_RELAY_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// The UDP address the cluster's other relays send mesh datagrams to: one they reach (not
    /// 0.0.0.0 or ::), on the operator's own network.
    #[arg(long, env = "UDP_RELAY_MESH_LISTEN", value_parser = parse_mesh_listen)]
    pub mesh_listen: Option<SocketAddr>,
    /// A file holding the cluster's shared secret (at least 32 bytes, e.g. `head -c 32
    /// /dev/urandom`): every mesh datagram's MAC is under it.
    #[arg(long, env = "UDP_RELAY_MESH_KEY_FILE")]
    pub mesh_key_file: Option<PathBuf>,
    /// How long a relay that stopped renewing stays in the cluster's directory, its names with
    /// it (it renews every quarter of this).
    #[arg(long, allow_hyphen_values = true, env = "UDP_RELAY_NODE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub node_ttl: Duration,
}

/// Checks a Redis URL as the client reads it.
pub fn parse_redis_url(s: &str) -> Result<String, String> {
    redis::Client::open(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("`{s}` is not a Redis URL ({e}); try redis://127.0.0.1:6379"))
}

/// Checks a node id.
pub fn parse_node_id(s: &str) -> Result<String, String> {
    if relay_core::wire::mesh::valid_node(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a node id: 1 to 64 of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// Checks a mesh address: one the other relays can send to.
pub fn parse_mesh_listen(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("`{s}` is not an address (try 10.0.0.5:8001)"))?;
    if a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(format!(
            "`{s}`: the other relays send here, so it must be an address they reach, not {}",
            a.ip()
        ));
    }
    Ok(a)
}

/// A log filter in which a directive for `udp_relay` (the relay's name, which operators' filters
/// use) holds for the crates the relay is made of too: `udp_relay=debug` turns on the debug lines
/// of the protocol logic (`relay_core`) and of the sockets (`relay_udp`) as well. The copies come
/// first, so that a directive the filter gives a crate itself wins over them.
pub fn whole_relay(filter: &str) -> String {
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let copies = directives
        .iter()
        .flat_map(|d| match d.strip_prefix("udp_relay") {
            Some(rest) if rest.is_empty() || rest.starts_with(['=', '[', ':']) => {
                vec![format!("relay_core{rest}"), format!("relay_udp{rest}")]
            }
            _ => Vec::new(),
        });
    copies
        .chain(directives.iter().map(|d| d.to_string()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The log filter in force: `level` (`--log-level`), else `rust_log` (`RUST_LOG`), else
/// `info`, through [`whole_relay`]; a `RUST_LOG` that is not a filter is `info` too, so that the
/// relay's lines are never silenced by a typo.
pub fn log_filter(level: Option<&str>, rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    level
        .or(rust_log)
        .and_then(|l| tracing_subscriber::EnvFilter::try_new(whole_relay(l)).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"))
}

/// Checks a log filter as `RUST_LOG` takes it.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("`{s}` is not a log filter ({e}); try info, debug or udp_relay=debug"))
}

/// Parses an address range (`10.0.0.0/8`, `fd00::/8`, or one address).
pub fn parse_net(s: &str) -> Result<Net, String> {
    s.parse()
}

/// Parses `60`, `60s`, `1.5s`, `500ms` or `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 60s, 1.5s or 500ms)"))?;
    let secs = v * scale;
    // The core counts in milliseconds: less than one would be none.
    if !(0.001..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{s}` must be at least 1ms and at most a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    /// Checks what clap's per-flag parsers cannot: relations between flags.
    pub fn check(&self) -> Result<(), String> {
        if self.keepalive_ms >= self.peer_timeout_ms {
            return Err(format!(
                "--keepalive-interval ({:?}) must be shorter than --peer-timeout ({:?}), or peers \
                 would be reaped between keepalives",
                self.keepalive_ms, self.peer_timeout_ms
            ));
        }
        let cluster_flags = [
            ("--node-id", self.node_id.is_some()),
            ("--mesh-listen", self.mesh_listen.is_some()),
            ("--mesh-key-file", self.mesh_key_file.is_some()),
        ];
        for (flag, given) in cluster_flags {
            match (self.cluster.is_some(), given) {
                (true, false) => return Err(format!("--cluster needs {flag}")),
                (false, true) => {
                    return Err(format!(
                        "{flag} is for a relay of a cluster: give --cluster too"
                    ));
                }
                _ => {}
            }
        }
        if self.node_ttl < Duration::from_millis(400) {
            return Err(format!(
                "--node-ttl ({:?}) must be at least 400ms: a relay renews every quarter of it",
                self.node_ttl
            ));
        }
        Ok(())
    }

    /// The number of workers to run.
    pub fn worker_count(&self) -> usize {
        self.workers.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        })
    }

    /// The address to bind.
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The peer addresses a relay listening on `host` serves, by these address ranges (a
    /// reload keeps the `host` in force, which takes a restart to change).
    pub fn peers(&self, host: IpAddr) -> Policy {
        Policy::new(host, &self.allowed_peer_ip, &self.denied_peer_ip)
    }
}

/// A flag's value as the core's setting of the same name takes it.
trait Core<T> {
    fn core(&self) -> T;
}

impl<T: Copy> Core<T> for T {
    fn core(&self) -> T {
        *self
    }
}

/// A duration, in the core's milliseconds.
impl Core<u64> for Duration {
    fn core(&self) -> u64 {
        u64::try_from(self.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Core<usize> for u32 {
    fn core(&self) -> usize {
        *self as usize
    }
}

impl Core<usize> for u64 {
    fn core(&self) -> usize {
        usize::try_from(*self).unwrap_or(usize::MAX)
    }
}

/// `Args::settings`, from the core's list of settings: each taken from the flag's field of its
/// name.
macro_rules! settings_from_args {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $default:expr, $live:ident;)*) => {
        impl Args {
            /// The protocol settings.
            pub fn settings(&self) -> Settings {
                Settings {
                    $($name: Core::<$ty>::core(&self.$name),)*
                    peers: self.peers(self.host),
                }
            }
        }
    };
}

relay_core::settings_list!(settings_from_args);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(
            parse_duration("0.5ms").is_err(),
            "less than the core's millisecond"
        );
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn every_live_setting_of_the_core_is_a_key() {
        let keys: Vec<_> = <Args as clap::CommandFactory>::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for name in relay_core::settings::NAMES {
            assert!(
                !relay_core::settings::is_live(name) || keys.iter().any(|k| k == name),
                "the live setting {name} is no key, so a reload would not say it changed"
            );
        }
        assert!(is_live("max_peers") && is_live("log_level") && !is_live("port"));
    }

    #[test]
    fn the_command_lines_defaults_are_the_cores_recommended_settings() {
        let mut got = Args::try_parse_from(["udp-relay"]).unwrap().settings();
        let want = Settings::recommended();
        got.peers = want.peers.clone();
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }

    #[test]
    fn udp_relay_in_a_log_filter_is_the_whole_relay() {
        assert_eq!(
            whole_relay("info,udp_relay=debug"),
            "relay_core=debug,relay_udp=debug,info,udp_relay=debug"
        );
        assert_eq!(
            whole_relay("udp_relayx=debug,warn"),
            "udp_relayx=debug,warn"
        );
        let enabled = |filter: &str, target: &str| {
            use tracing::Level;
            use tracing_subscriber::layer::SubscriberExt;
            let sub = tracing_subscriber::registry().with(log_filter(None, Some(filter)));
            tracing::subscriber::with_default(sub, || match target {
                "relay_core" => tracing::enabled!(target: "relay_core::router", Level::DEBUG),
                "relay_udp" => tracing::enabled!(target: "relay_udp::mmsg", Level::DEBUG),
                _ => tracing::enabled!(target: "udp_relay::server", Level::INFO),
            })
        };
        assert!(enabled("udp_relay=debug", "relay_core"));
        assert!(enabled("udp_relay=debug", "relay_udp"));
        // A crate's own directive wins over the copy.
        assert!(!enabled("relay_core=warn,udp_relay=debug", "relay_core"));
        assert!(enabled("relay_core=warn,udp_relay=debug", "relay_udp"));
        // A filter that is not one is `info`, never silence.
        assert!(enabled("udp_relay=verbose", "udp_relay"));
        assert!(enabled("warn,udp_relay=info", "udp_relay"));
    }

    #[test]
    fn old_command_line_still_works() {
        let a = Args::try_parse_from(["udp-relay", "--host", "0.0.0.0", "--port", "8000"]).unwrap();
        assert_eq!(a.listen(), "0.0.0.0:8000".parse().unwrap());
        assert!(a.check().is_ok());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Args::try_parse_from(["udp-relay", "--port", "70000"]).unwrap_err();
        assert!(e.to_string().contains("--port"), "{e}");
        let e = Args::try_parse_from(["udp-relay", "--peer-timeout", "x"]).unwrap_err();
        assert!(e.to_string().contains("--peer-timeout"), "{e}");
        let a = Args::try_parse_from([
            "udp-relay",
            "--peer-timeout",
            "5",
            "--keepalive-interval",
            "5",
        ])
        .unwrap();
        assert!(a.check().unwrap_err().contains("--keepalive-interval"));
    }
}
