//! `loadtest`: drive a udp-relay (or anything speaking its JSON protocol) and measure it.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use loadtest::compare::{self, CompareConfig};
use loadtest::drive::{self, LoadConfig, Shape};
use loadtest::storm::{self, StormConfig};
use loadtest::{proto, reflector, sys};

#[derive(Parser)]
#[command(name = "loadtest", version, about = "Load tests for udp-relay")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Virtual peers register, pair up and relay to their partners; reports rate, loss, latency.
    Run(RunArgs),
    /// Returns every datagram to its sender: the cost floor to compare a relay with.
    Reflector(ReflectorArgs),
    /// A registration storm: N distinct peers register; reports registrations/s and relay memory.
    Register(RegisterArgs),
    /// The same load against several targets in turn (A B A B …): a table of medians and ratios,
    /// and a chart.
    Compare(CompareArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// A target as NAME=HOST:PORT[,echo][,channels][,turn=USER:PASS][,via=HOST:PORT][,pid=N]...; give it once per
    /// target (ratios are to the first). Plain, a relay driven with JSON relays; `channels`, the
    /// relay with channel frames; `echo`, a reflector (with `channels`, sent frames' sizes);
    /// `turn=USER:PASS` alone, a TURN server (coturn) driven with long-term credentials, each
    /// pair two allocations with channels bound to each other's relayed address, sending
    /// ChannelData (no comma in the password). `pid` adds its CPU time per datagram.
    #[arg(long = "target", required = true, value_parser = compare::parse_target)]
    targets: Vec<compare::Target>,
    /// Runs per target in each phase.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pairs of virtual peers.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Interleave the flows: each turn sends one datagram per pair member, round-robin, instead
    /// of a burst per flow, so consecutive datagrams reaching the target go to different
    /// destinations (a relay's segmentation of runs to one destination rarely applies). With
    /// at least as many flows (2 x --pairs) as the window, every turn is one datagram per flow
    /// anyway, and at most the window is in flight, flows taking turns.
    #[arg(long)]
    interleave: bool,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Measured window of each run, in seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Load before each measured window, in seconds.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Datagrams in flight at most in the capacity phase.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Offered rate of the latency phase [default: --rate-fraction of the slowest capacity].
    #[arg(long)]
    rate: Option<f64>,
    /// Fraction of the slowest target's capacity offered in the latency phase.
    #[arg(long, default_value_t = 0.5)]
    rate_fraction: f64,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Seconds to wait for registration acks.
    #[arg(long, default_value_t = 5.0)]
    register_timeout: f64,
    /// Draw the comparison to this SVG file.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Write every run and the medians as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct RegisterArgs {
    /// The relay as HOST:PORT.
    #[arg(long, value_parser = proto::parse_addr)]
    relay: std::net::SocketAddr,
    /// Distinct peers to register.
    #[arg(long, default_value_t = 100_000)]
    peers: usize,
    /// Sockets to spread the peers over [default: one per peer, within the fd limit, at most 20000].
    #[arg(long)]
    sockets: Option<usize>,
    /// Registrations awaiting their ack at most.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Give every peer an address of its own, as real peers have (127.1.0.0 onward, one socket
    /// each, closed once acknowledged; a relay on IPv4 loopback only).
    #[arg(long, conflicts_with = "sockets")]
    distinct_addresses: bool,
    /// The relay's pid, to report its resident memory before and after.
    #[arg(long)]
    pid: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The relay (or, with --echo, the reflector; with --turn, the TURN server) as HOST:PORT.
    #[arg(long, value_parser = proto::parse_addr)]
    relay: std::net::SocketAddr,
    /// Drive a reflector instead of a relay (no registration; datagrams come back to the sender).
    #[arg(long)]
    echo: bool,
    /// Send channel frames (Part 4) instead of JSON relays: each pair binds a channel first
    /// (with --echo, frames of the same size go to the reflector).
    #[arg(long)]
    channels: bool,
    /// Drive a TURN server (coturn) with these long-term credentials, USER:PASS: each peer
    /// allocates, binds a channel to its partner's relayed address and sends ChannelData, which
    /// the server carries from one allocation to the other; refreshed as runs outlast lifetimes.
    #[arg(long, value_parser = loadtest::turn::parse_credentials, conflicts_with_all = ["echo", "channels"])]
    turn: Option<loadtest::turn::Credentials>,
    /// Pairs of virtual peers.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Interleave the flows: each turn sends one datagram per pair member, round-robin, instead
    /// of a burst per flow, so consecutive datagrams reaching the target go to different
    /// destinations (a relay's segmentation of runs to one destination rarely applies). With
    /// at least as many flows (2 x --pairs) as the window, every turn is one datagram per flow
    /// anyway, and at most the window is in flight, flows taking turns.
    #[arg(long)]
    interleave: bool,
    /// Payload bytes per datagram (at least 37: sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Measured window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Load before the measured window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Closed loop: datagrams in flight at most (the default shape).
    #[arg(long, default_value_t = 256, conflicts_with = "rate")]
    window: usize,
    /// Open loop at this many datagrams per second instead of the closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// The target's pid, to report its CPU time per datagram.
    #[arg(long)]
    pid: Option<u32>,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Seconds to wait for registration acks.
    #[arg(long, default_value_t = 5.0)]
    register_timeout: f64,
}

#[derive(Args)]
struct ReflectorArgs {
    /// UDP port to listen on.
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Pin the reflector to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Segment the returns (UDP GSO): consecutive datagrams of a batch to one sender of one size
    /// (the last may be shorter, at most 64 and 65,507 bytes, segments of at most 1,452 bytes)
    /// go back as one UDP_SEGMENT send; the floor of a relay that segments. A kernel that
    /// refuses it gets them one by one, said on stderr.
    #[arg(long)]
    gso: bool,
}

fn seconds(flag: &str, v: f64) -> Result<Duration, String> {
    if (0.0..1e6).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} must be a number of seconds, not {v}"))
    }
}

fn load_config(a: &RunArgs) -> Result<LoadConfig, String> {
    let shape = match a.rate {
        Some(r) if r.is_finite() && r > 0.0 => Shape::Rate { per_sec: r },
        Some(r) => return Err(format!("--rate must be positive, not {r}")),
        None if a.window == 0 => return Err("--window must be at least 1".into()),
        None => Shape::Capacity { window: a.window },
    };
    if a.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    Ok(LoadConfig {
        target: a.relay,
        via: None,
        echo: a.echo,
        channels: a.channels,
        turn: a.turn.clone(),
        pairs: a.pairs,
        payload: a.payload,
        warmup: seconds("--warmup", a.warmup)?,
        duration: seconds("--duration", a.duration)?,
        shape,
        interleave: a.interleave,
        target_pids: a.pid.into_iter().collect(),
        register_timeout: seconds("--register-timeout", a.register_timeout)?,
        progress: true,
    })
}

fn run(a: RunArgs) -> Result<(), String> {
    if let Some(cpu) = a.cpu {
        pin(cpu)?;
    }
    if let Some(pid) = a.pid {
        sys::process_cpu(pid).map_err(|e| format!("--pid {pid}: {e}"))?;
    }
    let report = drive::run(&load_config(&a)?)?;
    print!("{}", report.summary());
    write_json(a.json.as_deref(), &report)
}

fn storm(a: RegisterArgs) -> Result<(), String> {
    if let Some(cpu) = a.cpu {
        pin(cpu)?;
    }
    if let Some(pid) = a.pid {
        sys::process_rss(pid).map_err(|e| format!("--pid {pid}: {e}"))?;
    }
    let report = storm::run(&StormConfig {
        target: a.relay,
        peers: a.peers,
        sockets: a.sockets,
        window: a.window,
        target_pid: a.pid,
        timeout: seconds("--timeout", a.timeout)?,
        progress: true,
        distinct: a.distinct_addresses,
    })?;
    print!("{}", report.summary());
    write_json(a.json.as_deref(), &report)
}

fn compare(a: CompareArgs) -> Result<(), String> {
    if let Some(cpu) = a.cpu {
        pin(cpu)?;
    }
    for t in &a.targets {
        for &pid in &t.pids {
            sys::process_cpu(pid).map_err(|e| format!("target {}: pid {pid}: {e}", t.name))?;
        }
    }
    if a.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    if let Some(r) = a.rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(format!("--rate must be positive, not {r}"));
    }
    if a.window == 0 {
        return Err("--window must be at least 1".into());
    }
    let cfg = CompareConfig {
        load: LoadConfig {
            target: a.targets[0].addr,
            via: None,
            echo: false,
            channels: false,
            turn: None,
            pairs: a.pairs,
            payload: a.payload,
            warmup: seconds("--warmup", a.warmup)?,
            duration: seconds("--duration", a.duration)?,
            shape: Shape::Capacity { window: a.window },
            interleave: a.interleave,
            target_pids: Vec::new(),
            register_timeout: seconds("--register-timeout", a.register_timeout)?,
            progress: true,
        },
        targets: a.targets,
        rounds: a.rounds,
        window: a.window,
        rate: a.rate,
        rate_fraction: a.rate_fraction,
    };
    let c = compare::run(&cfg, |name, r| {
        eprintln!(
            "{name:<14} {:<8} {:>10.0} delivered/s  p99 {:>8.1} µs  loss {:.3}%",
            r.shape,
            r.delivered_per_sec,
            r.latency_us.p99,
            r.loss_ratio * 100.0
        )
    })?;
    print!("{}", c.table());
    if let Some(path) = &a.chart {
        c.chart(path)?;
        eprintln!("chart written to {}", path.display());
    }
    write_json(a.json.as_deref(), &c)
}

fn write_json(path: Option<&std::path::Path>, v: &impl serde::Serialize) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("--json {}: {e}", path.display()))
}

fn reflect(a: ReflectorArgs) -> Result<(), String> {
    if let Some(cpu) = a.cpu {
        pin(cpu)?;
    }
    let addr = std::net::SocketAddr::new(a.host, a.port);
    let sock = reflector::bind(addr).map_err(|e| e.to_string())?;
    eprintln!(
        "reflecting on {}{}",
        sock.local_addr().map_err(|e| e.to_string())?,
        if a.gso { ", segmenting returns" } else { "" }
    );
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_flag(sig, &stop)?;
    }
    let r = reflector::serve(sock, stop, a.gso).map_err(|e| e.to_string())?;
    if a.gso {
        eprintln!(
            "reflected {} datagrams, {} segmented sends{}",
            r.datagrams,
            r.segmented_sends,
            if r.gso_refused {
                " (segmentation refused)"
            } else {
                ""
            }
        );
    } else {
        eprintln!("reflected {} datagrams", r.datagrams);
    }
    Ok(())
}

/// Pins the calling thread to CPU `cpu` exactly: one this process may not run on is an error,
/// not another CPU (which could be the target's).
fn pin(cpu: usize) -> Result<(), String> {
    match relay_udp::pin_to_cpu(cpu) {
        Ok(got) if got == cpu => Ok(()),
        Ok(got) => Err(format!(
            "--cpu {cpu}: this process may not run there (it would have been CPU {got})"
        )),
        Err(e) => Err(format!("--cpu {cpu}: {e}")),
    }
}

fn signal_flag(sig: i32, stop: &Arc<AtomicBool>) -> Result<(), String> {
    signal_hook::flag::register(sig, stop.clone())
        .map(|_| ())
        .map_err(|e| format!("signal handler: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Reflector(a) => reflect(a),
        Cmd::Register(a) => storm(a),
        Cmd::Compare(a) => compare(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
