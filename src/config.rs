//! Configuration: the command line (each flag also an `UDP_RELAY_…` variable) and its checks.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};

/// Largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether registration must be signed (Part 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Auth {
    /// Unsigned registration allowed (the old peers'); a signed peer still gets its protection.
    Open,
    /// Every new registration or move must be signed.
    Signed,
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
    #[arg(long, allow_hyphen_values = true, env = "UDP_RELAY_PEER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub peer_timeout: Duration,
    /// How often live peers are sent `server_keepalive`.
    #[arg(long, allow_hyphen_values = true, env = "UDP_RELAY_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// Largest registry for which everyone hears of every join and leave and gets every name.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "UDP_RELAY_ANNOUNCE_MAX",
        default_value_t = 100
    )]
    pub announce_max: usize,
    /// Size limit of a `peer_list` (and of other name lists) beyond `--announce-max`, in bytes.
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_REPLY_BUDGET", default_value_t = 1200, value_parser = clap::value_parser!(u32).range(256..=MAX_UDP_PAYLOAD as i64))]
    pub reply_budget: u32,
    /// Most names registered at once.
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_MAX_PEERS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_peers: u64,
    /// Largest datagram accepted, in bytes.
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_MAX_DATAGRAM", default_value_t = MAX_UDP_PAYLOAD as u32, value_parser = clap::value_parser!(u32).range(64..=MAX_UDP_PAYLOAD as i64))]
    pub max_datagram: u32,
    /// Most names one peer may watch.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "UDP_RELAY_MAX_WATCH",
        default_value_t = 256
    )]
    pub max_watch: usize,
    /// Datagrams per second one source address may send (bursts of two seconds' worth; 0: no
    /// limit).
    #[arg(long, env = "UDP_RELAY_SOURCE_RATE", default_value_t = 5_000)]
    pub source_rate: u64,
    /// Bytes per second one source address may send (0: no limit).
    #[arg(long, env = "UDP_RELAY_SOURCE_BYTES", default_value_t = 8_000_000)]
    pub source_bytes: u64,
    /// Datagrams per second one /24 (IPv4) or /56 (IPv6) may send (0: no limit).
    #[arg(long, env = "UDP_RELAY_PREFIX_RATE", default_value_t = 50_000)]
    pub prefix_rate: u64,
    /// Bytes per second one /24 or /56 may send (0: no limit).
    #[arg(long, env = "UDP_RELAY_PREFIX_BYTES", default_value_t = 80_000_000)]
    pub prefix_bytes: u64,
    /// Datagrams per second the whole relay accepts, shared evenly by the workers (0: no limit).
    #[arg(long, env = "UDP_RELAY_GLOBAL_RATE", default_value_t = 2_000_000)]
    pub global_rate: u64,
    /// New names per second one source address may register (bursts of ten seconds' worth;
    /// 0: no limit).
    #[arg(long, env = "UDP_RELAY_REGISTRATION_RATE", default_value_t = 20)]
    pub registration_rate: u64,
    /// Bytes of replies a host (IP address) may be sent for requests that do not authenticate,
    /// beyond what it has sent itself (0: no limit); see SECURITY.md.
    #[arg(long, env = "UDP_RELAY_REPLY_CREDIT", default_value_t = 2_048)]
    pub reply_credit: u64,
    /// The same per /24 (IPv4) or /56 (IPv6): the most a forger can make the relay send a
    /// victim network beyond what was sent in its name (0: no limit).
    #[arg(long, env = "UDP_RELAY_REPLY_PREFIX_CREDIT", default_value_t = 4_096)]
    pub reply_prefix_credit: u64,
    /// The same for the whole relay (0: no limit).
    #[arg(long, env = "UDP_RELAY_REPLY_GLOBAL_CREDIT", default_value_t = 1 << 20)]
    pub reply_global_credit: u64,
    /// Bytes of announcements one host's datagrams may cause beyond twice what it sent
    /// (0: no limit).
    #[arg(long, env = "UDP_RELAY_FANOUT_ALLOWANCE", default_value_t = 65_536)]
    pub fanout_allowance: u64,
    /// Bytes of announcements per second one recipient address may be sent (bursts of four
    /// seconds' worth; beyond, it gets a `peer_list` later; 0: no limit).
    #[arg(long, env = "UDP_RELAY_PRESENCE_RATE", default_value_t = 4_096)]
    pub presence_rate: u64,
    /// Most names registered at one address (what a request naming none, or a reap of the
    /// address, walks).
    #[arg(long, env = "UDP_RELAY_MAX_NAMES_PER_ADDRESS", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_names_per_address: u64,
    /// Watch entries held in all, over every peer (each costs about 300 bytes).
    #[arg(long, env = "UDP_RELAY_MAX_WATCH_TOTAL", default_value_t = 262_144)]
    pub max_watch_total: usize,
    /// Watch entries held by the peers of one host (IPv4 address, IPv6 /64).
    #[arg(long, env = "UDP_RELAY_MAX_WATCH_PER_HOST", default_value_t = 4_096)]
    pub max_watch_per_host: usize,
    /// Channels (Part 4) one peer may hold.
    #[arg(long, env = "UDP_RELAY_MAX_CHANNELS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels: u32,
    /// Channels held by the peers of one host (IPv4 address, IPv6 /64).
    #[arg(long, env = "UDP_RELAY_MAX_CHANNELS_PER_HOST", default_value_t = 4_096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels_per_host: u32,
    /// Channels held in all (each pair costs about 300 bytes).
    #[arg(long, env = "UDP_RELAY_MAX_CHANNELS_TOTAL", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1..))]
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
    #[arg(long, allow_negative_numbers = true, env = "UDP_RELAY_ERROR_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub error_rate: u32,
    /// Registration: `open` serves the old unsigned peers; `signed` requires Ed25519 signatures.
    #[arg(long, env = "UDP_RELAY_AUTH", value_enum, default_value = "open")]
    pub auth: Auth,
    /// Refuse `connect` (no introductions for hole punching).
    #[arg(long, env = "UDP_RELAY_NO_INTRODUCTIONS")]
    pub no_introductions: bool,
    /// Serve Prometheus metrics over HTTP on this address (e.g. `127.0.0.1:9100`).
    #[arg(long, env = "UDP_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log line format; the level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "UDP_RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
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
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 365.0 {
        return Err(format!("`{s}` must be more than zero and at most a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What the protocol logic needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Silence after which a peer is stale, in ms.
    pub peer_timeout_ms: u64,
    /// Keepalive interval, in ms.
    pub keepalive_ms: u64,
    /// See [`Args::announce_max`].
    pub announce_max: usize,
    /// See [`Args::reply_budget`].
    pub reply_budget: usize,
    /// See [`Args::max_peers`].
    pub max_peers: usize,
    /// See [`Args::max_datagram`].
    pub max_datagram: usize,
    /// See [`Args::max_watch`].
    pub max_watch: usize,
    /// See [`Args::error_rate`].
    pub error_rate: u32,
    /// Whether `connect` is served.
    pub introductions: bool,
    /// See [`Args::auth`].
    pub auth: Auth,
    /// See [`Args::source_rate`].
    pub source_rate: u64,
    /// See [`Args::source_bytes`].
    pub source_bytes: u64,
    /// See [`Args::prefix_rate`].
    pub prefix_rate: u64,
    /// See [`Args::prefix_bytes`].
    pub prefix_bytes: u64,
    /// See [`Args::global_rate`].
    pub global_rate: u64,
    /// See [`Args::registration_rate`].
    pub registration_rate: u64,
    /// See [`Args::reply_credit`].
    pub reply_credit: u64,
    /// See [`Args::reply_prefix_credit`].
    pub reply_prefix_credit: u64,
    /// See [`Args::reply_global_credit`].
    pub reply_global_credit: u64,
    /// See [`Args::fanout_allowance`].
    pub fanout_allowance: u64,
    /// See [`Args::presence_rate`].
    pub presence_rate: u64,
    /// See [`Args::max_names_per_address`].
    pub max_names_per_address: usize,
    /// See [`Args::max_watch_total`].
    pub max_watch_total: usize,
    /// See [`Args::max_watch_per_host`].
    pub max_watch_per_host: usize,
    /// See [`Args::max_channels`].
    pub max_channels: usize,
    /// See [`Args::max_channels_per_host`].
    pub max_channels_per_host: usize,
    /// See [`Args::max_channels_total`].
    pub max_channels_total: usize,
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
        }
    }
}

impl Args {
    /// Parses the command line and environment, exiting with a message naming the flag on error.
    pub fn load() -> Args {
        let args = Args::parse();
        if let Err(msg) = args.check() {
            Args::command()
                .error(clap::error::ErrorKind::ValueValidation, msg)
                .exit();
        }
        args
    }

    /// Checks what clap's per-flag parsers cannot: relations between flags.
    pub fn check(&self) -> Result<(), String> {
        if self.keepalive_interval >= self.peer_timeout {
            return Err(format!(
                "--keepalive-interval ({:?}) must be shorter than --peer-timeout ({:?}), or peers \
                 would be reaped between keepalives",
                self.keepalive_interval, self.peer_timeout
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

    /// The protocol settings.
    pub fn settings(&self) -> Settings {
        Settings {
            peer_timeout_ms: self.peer_timeout.as_millis() as u64,
            keepalive_ms: self.keepalive_interval.as_millis() as u64,
            announce_max: self.announce_max,
            reply_budget: self.reply_budget as usize,
            max_peers: usize::try_from(self.max_peers).unwrap_or(usize::MAX),
            max_datagram: self.max_datagram as usize,
            max_watch: self.max_watch,
            error_rate: self.error_rate,
            introductions: !self.no_introductions,
            auth: self.auth,
            source_rate: self.source_rate,
            source_bytes: self.source_bytes,
            prefix_rate: self.prefix_rate,
            prefix_bytes: self.prefix_bytes,
            global_rate: self.global_rate,
            registration_rate: self.registration_rate,
            reply_credit: self.reply_credit,
            reply_prefix_credit: self.reply_prefix_credit,
            reply_global_credit: self.reply_global_credit,
            fanout_allowance: self.fanout_allowance,
            presence_rate: self.presence_rate,
            max_names_per_address: usize::try_from(self.max_names_per_address)
                .unwrap_or(usize::MAX),
            max_watch_total: self.max_watch_total,
            max_watch_per_host: self.max_watch_per_host,
            max_channels: self.max_channels as usize,
            max_channels_per_host: self.max_channels_per_host as usize,
            max_channels_total: self.max_channels_total as usize,
        }
    }
}

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
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("NaN").is_err());
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
