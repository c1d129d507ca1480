//! The load loop: virtual peers register, pair up and relay stamped datagrams to each other
//! (or, in echo mode, to a reflector that returns them), closed-loop or at a fixed rate.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use udp_peer::relay::{Link, LinkEvent, Timers};

use crate::net::{BATCH, RecvBatch, peer_socket, send_batch};
use crate::proto::{self, Received, Template};
use crate::report::{Latency, Report};
use crate::sys;
use crate::turn::{self, Credentials, Keeper};

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// Closed loop: at most `window` datagrams in flight in all, so the target runs at its own
    /// capacity instead of being drowned.
    Capacity {
        /// Datagrams in flight at most.
        window: usize,
    },
    /// Open loop at `per_sec` datagrams a second, whatever the target does.
    Rate {
        /// Offered datagrams per second.
        per_sec: f64,
    },
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The relay (or reflector) to drive.
    pub target: SocketAddr,
    /// A second relay of its cluster, where every other peer registers (see
    /// `compare::Target::via`).
    pub via: Option<SocketAddr>,
    /// Drive a reflector: every datagram returns to its sender; no registration.
    pub echo: bool,
    /// Send channel frames (Part 4) instead of JSON relays: the pairs bind channels first (to
    /// a reflector, frames of the same size are sent).
    pub channels: bool,
    /// Drive a TURN server with these credentials instead of a relay: each peer allocates and
    /// binds a channel to its partner's relayed address, and sends ChannelData.
    pub turn: Option<Credentials>,
    /// Pairs of virtual peers; each peer relays to its partner.
    pub pairs: usize,
    /// Payload bytes per datagram.
    pub payload: usize,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Closed loop or fixed rate.
    pub shape: Shape,
    /// Each turn of the loop sends one datagram per flow, round-robin, instead of a burst per
    /// flow: consecutive datagrams reaching the target come from different peers and go to
    /// different destinations, so a relay's segmentation (runs to one destination) rarely
    /// applies. With at least as many flows as the window, bursts are one datagram anyway.
    pub interleave: bool,
    /// The target's pids (a cluster's relays), for their CPU time, summed.
    pub target_pids: Vec<u32>,
    /// How long to wait for registration acks.
    pub register_timeout: Duration,
    /// Draw a progress bar (only where stderr is a terminal).
    pub progress: bool,
}

/// A datagram not back after this long is presumed lost and no longer holds the window.
const LOSS_TIMEOUT: Duration = Duration::from_millis(200);
/// How long after the window stragglers may still arrive.
const DRAIN: Duration = Duration::from_millis(500);

/// What the receive side counted.
#[derive(Default)]
struct Tally {
    /// Datagrams sent in the measured window that arrived intact.
    delivered: u64,
    /// Stamped datagrams whose payload was not what was sent.
    corrupt: u64,
    /// Datagrams of a flow at or below its highest sequence number yet: late or twice.
    out_of_order: u64,
}

struct Flow {
    tx: usize,
    tmpl: Template,
    seq: u64,
    outstanding: usize,
    /// When the flow last heard back, or sent with nothing outstanding (ns since the start):
    /// what its loss timeout counts from.
    last_progress: u64,
    /// Its datagrams sent in the measured window that arrived.
    delivered: u64,
    /// The highest sequence number of its received so far.
    received: Option<u64>,
}

/// How long an unanswered registration or bind waits before it goes again (the link doubles
/// it on each try, to 8×).
const RETRY: Duration = Duration::from_millis(500);

/// Registers `names[i]` from `socks[i]` (each connected to its relay) through a
/// [`Link`] per peer, until every one is registered and has shown its session back (Part 2: a
/// channel binds only proven peers). Returns registrations acknowledged per second and the
/// links, for [`bind_all`].
pub fn register_all(
    target: SocketAddr,
    socks: &[UdpSocket],
    names: &[String],
    timeout: Duration,
) -> Result<(f64, Vec<Link>), String> {
    let start = Instant::now();
    let timers = Timers {
        // Keepalives go at a third of this after a link is ready, and binding waits `timeout`
        // at most: none falls within setup. The load's own datagrams keep the peers live after.
        relay_timeout: timeout * 6,
        retry: RETRY,
        ..Timers::default()
    };
    let mut links = socks
        .iter()
        .zip(names)
        .map(|(s, name)| {
            // The socket's own peer, not `target`: with a cluster, every other peer is at `via`.
            let relay = s.peer_addr().map_err(|e| unreachable(target, e))?;
            Ok(Link::new(relay, name, None, timers.clone(), start))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut rx = RecvBatch::new(65_536);
    // When the last ack came: the rate counts registrations, not the proofs that follow.
    let mut acked = None;
    loop {
        turn_links(target, socks, &mut links, &mut rx, |e| match e {
            LinkEvent::Refused { code, message } => Err(format!(
                "the relay at {target} refused registration: {code}: {message}"
            )),
            // Asked to come back (a cluster's claims waiting fill this host's share): the
            // link sends it again.
            LinkEvent::Error { code } if code == "rate_limited" => Ok(()),
            LinkEvent::Error { code } => Err(format!(
                "the relay at {target} refused registration: {code}"
            )),
            _ => Ok(()),
        })?;
        if acked.is_none() && links.iter().all(|l| l.session().is_some()) {
            acked = Some(start.elapsed());
        }
        let left = links.iter().filter(|l| !l.ready()).count();
        if left == 0 {
            break;
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "the relay at {target} never acknowledged registration ({left} of {} peers \
                 unanswered after {timeout:?}): is it a udp-relay, and is the address right?",
                socks.len()
            ));
        }
        std::hint::spin_loop();
    }
    let seconds = acked.unwrap_or_else(|| start.elapsed()).as_secs_f64();
    Ok((socks.len() as f64 / seconds, links))
}

/// Each peer binds its partner (`i ^ 1`) over its link (from [`register_all`]); binding from
/// both sides gives each its own number. Returns the numbers, by peer.
pub fn bind_all(
    target: SocketAddr,
    socks: &[UdpSocket],
    links: &mut [Link],
    timeout: Duration,
) -> Result<Vec<u32>, String> {
    let start = Instant::now();
    let partners: Vec<String> = (0..links.len())
        .map(|i| links[i ^ 1].name().to_string())
        .collect();
    for (l, p) in links.iter_mut().zip(&partners) {
        l.bind(p, start);
    }
    let mut rx = RecvBatch::new(65_536);
    loop {
        turn_links(target, socks, links, &mut rx, |e| match e {
            LinkEvent::PeerRefused { name, code } => Err(format!(
                "the relay at {target} refused a channel to {name}: {code}"
            )),
            LinkEvent::Refused { code, message } => Err(format!(
                "the relay at {target} refused registration: {code}: {message}"
            )),
            LinkEvent::Error { code } if code != "rate_limited" => {
                Err(format!("the relay at {target} refused a channel: {code}"))
            }
            _ => Ok(()),
        })?;
        let left = links
            .iter()
            .zip(&partners)
            .filter(|(l, p)| l.channel(p).is_none())
            .count();
        if left == 0 {
            break;
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "the relay at {target} bound no channel for {left} of {} peers after \
                 {timeout:?}: does it serve Part 4?",
                socks.len()
            ));
        }
        std::hint::spin_loop();
    }
    Ok(links
        .iter()
        .zip(&partners)
        .map(|(l, p)| l.channel(p).unwrap_or_default())
        .collect())
}

/// One turn of the links of `socks` (link `i` on socket `i`): what each has to send goes out,
/// what came back goes in, its timers run; each event goes to `on_event`.
fn turn_links(
    target: SocketAddr,
    socks: &[UdpSocket],
    links: &mut [Link],
    rx: &mut RecvBatch,
    mut on_event: impl FnMut(LinkEvent) -> Result<(), String>,
) -> Result<(), String> {
    let now = Instant::now();
    for (s, l) in socks.iter().zip(links.iter_mut()) {
        if l.poll_timeout().is_some_and(|t| now >= t) {
            l.handle_timeout(now);
        }
        while let Some(t) = l.poll_transmit() {
            // The socket is connected to the link's relay, where everything the link sends
            // goes.
            s.send(&t.bytes).map_err(|e| unreachable(target, e))?;
        }
        let n = rx.recv(s).map_err(|e| unreachable(target, e))?;
        let relay = l.relay;
        for k in 0..n {
            // A connected socket receives from its relay only.
            l.handle(now, relay, rx.get(k));
        }
        while let Some(e) = l.poll_event() {
            on_event(e)?;
        }
    }
    Ok(())
}

fn unreachable(target: SocketAddr, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        format!("the relay at {target} is unreachable: nothing listens on that port")
    } else {
        format!("talking to {target}: {e}")
    }
}

/// A name prefix unique to this run, so that runs never collide in a long-lived relay.
pub fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("lt{:x}{:x}", std::process::id(), t)
}

/// Runs the load and reports on the measured window.
pub fn run(cfg: &LoadConfig) -> Result<Report, String> {
    if cfg.pairs == 0 {
        return Err("--pairs must be at least 1".into());
    }
    if cfg.turn.is_some() && (cfg.echo || cfg.channels) {
        return Err(
            "a TURN server is driven with ChannelData: not with --echo or --channels".into(),
        );
    }
    let n = 2 * cfg.pairs;
    let limit = sys::raise_fd_limit();
    if n as u64 + sys::FD_RESERVE > limit {
        return Err(format!(
            "--pairs {} needs {n} sockets but the file-descriptor limit is {limit}: raise it \
             (ulimit -n {}) or use fewer pairs",
            cfg.pairs,
            n as u64 + sys::FD_RESERVE
        ));
    }
    // Every other peer at the cluster's second relay, if there is one.
    let relay_of = |i: usize| match cfg.via {
        Some(via) if i % 2 == 1 => via,
        _ => cfg.target,
    };
    let mut socks = (0..n)
        .map(|i| peer_socket(relay_of(i)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot open peer sockets: {e}"))?;
    let id = run_id();
    // Fixed-width names keep every datagram the same size, so batches slice evenly.
    let names: Vec<String> = (0..n).map(|i| format!("{id}-{i:06}")).collect();
    let mut keeper = None;
    let (registrations_per_sec, channels) = if cfg.echo {
        (None, vec![0; n])
    } else if let Some(creds) = &cfg.turn {
        let sessions = turn::setup(cfg.target, &mut socks, creds, cfg.register_timeout)?;
        keeper = Some(Keeper::new(cfg.target, sessions));
        (None, vec![0; n])
    } else {
        let timeout = cfg.register_timeout;
        let (rate, mut links) = register_all(cfg.target, &socks, &names, timeout)?;
        let channels = if cfg.channels {
            bind_all(cfg.target, &socks, &mut links, timeout)?
        } else {
            vec![0; n]
        };
        (Some(rate), channels)
    };
    // Flow i sends from socket i to its partner (relay) or back to itself (echo).
    let partner = |i: usize| if cfg.echo { i } else { i ^ 1 };
    let template = |i: usize| {
        if cfg.turn.is_some() {
            Template::channel_data(turn::CHANNEL, cfg.payload)
        } else if cfg.channels {
            Template::frame(channels[i], cfg.payload)
        } else {
            Template::new(&names[i], &names[partner(i)], cfg.payload)
        }
    };
    let mut flows: Vec<Flow> = (0..n)
        .map(|i| Flow {
            tx: i,
            tmpl: template(i),
            seq: 0,
            outstanding: 0,
            last_progress: 0,
            delivered: 0,
            received: None,
        })
        .collect();
    let dlen = flows[0].tmpl.bytes.len();
    debug_assert!(flows.iter().all(|f| f.tmpl.bytes.len() == dlen));
    let mut rx = RecvBatch::new(dlen + 1024);
    // Whatever registration left queued (peer lists, joins) is not load.
    for s in &socks {
        while rx.recv(s).map_err(|e| unreachable(cfg.target, e))? > 0 {}
    }

    let bar = progress_bar(cfg);
    let base = Instant::now();
    let ns = || base.elapsed().as_nanos() as u64;
    let warm_end = cfg.warmup.as_nanos() as u64;
    let end = warm_end + cfg.duration.as_nanos() as u64;
    let measured = |t: u64| t >= warm_end && t < end;
    let loss_timeout = LOSS_TIMEOUT.as_nanos() as u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let (mut sent, mut offered) = (0u64, 0u64);
    let mut tally = Tally::default();
    let mut out = Vec::with_capacity(dlen * BATCH);
    let mut cpu_start = None;
    // The next flow to send: kept across turns, so that when the window (not a flow's share of
    // it) is what stops a turn, the next one resumes after the last flow served.
    let mut cursor = 0usize;
    let mut last_bar = 0u64;
    let mut max_in_flight = 0usize;
    // Interleaved, a flow sends one datagram per turn; otherwise a burst of up to a batch.
    let burst = if cfg.interleave { 1 } else { BATCH };

    // `all`: read every socket; otherwise only those whose sender has datagrams in flight. A
    // thousand peers with a window of 256 would otherwise cost a thousand empty reads a turn,
    // and the generator, not the target, would set the pace. (An epoll set would spare them
    // too, but its wake-ups are charged to whoever delivers: the target's CPU per datagram.)
    let payload = cfg.payload;
    let mut receive = |flows: &mut [Flow],
                       hist: &mut Histogram<u64>,
                       t: &mut Tally,
                       keeper: &mut Option<Keeper>,
                       all: bool| {
        let mut got = 0;
        for s in 0..socks.len() {
            let awaits = keeper.as_ref().is_some_and(|k| k.awaits(s));
            if !all && !awaits && flows[partner(s)].outstanding == 0 {
                continue;
            }
            for _ in 0..4 {
                let k = rx.recv(&socks[s]).unwrap_or_default();
                if k == 0 {
                    break;
                }
                let now = ns();
                for j in 0..k {
                    let f = &mut flows[partner(s)];
                    let (seq, sent_at) = match proto::check(rx.get(j), payload) {
                        Received::Intact { seq, ns } => (seq, ns),
                        Received::Corrupt => {
                            // Not trusted, so not delivered; but it was the flow's, and frees
                            // its place in the window.
                            f.outstanding = f.outstanding.saturating_sub(1);
                            t.corrupt += 1;
                            continue;
                        }
                        Received::Other => {
                            // A TURN server's answers to the refreshes.
                            if let Some(k) = keeper {
                                k.on_datagram(s, rx.get(j));
                            }
                            continue;
                        }
                    };
                    got += 1;
                    f.outstanding = f.outstanding.saturating_sub(1);
                    f.last_progress = now;
                    // Each flow's numbers leave in order: one at or below the highest seen
                    // came late or twice.
                    if f.received.is_some_and(|h| seq <= h) {
                        t.out_of_order += 1;
                    } else {
                        f.received = Some(seq);
                    }
                    if measured(sent_at) {
                        t.delivered += 1;
                        f.delivered += 1;
                        let _ = hist.record(now.saturating_sub(sent_at).max(1));
                    }
                }
            }
        }
        got
    };

    loop {
        let now = ns();
        if now >= end {
            break;
        }
        if cpu_start.is_none() && now >= warm_end {
            cpu_start = Some(cpu_sample(&cfg.target_pids));
        }
        if let Some(k) = &mut keeper {
            k.tick(&socks)?;
        }
        let mut send = |f: &mut Flow, k: usize, out: &mut Vec<u8>| -> Result<usize, String> {
            out.clear();
            let t = ns();
            for _ in 0..k {
                f.tmpl.stamp(f.seq + (out.len() / dlen) as u64, t);
                out.extend_from_slice(&f.tmpl.bytes);
            }
            let r = send_batch(&socks[f.tx], out, dlen).map_err(|e| unreachable(cfg.target, e))?;
            if f.outstanding == 0 {
                // Its loss timeout counts from now, not from its last reply long ago.
                f.last_progress = t;
            }
            f.seq += r as u64;
            f.outstanding += r;
            if measured(t) {
                sent += r as u64;
            }
            Ok(r)
        };
        match cfg.shape {
            Shape::Capacity { window } => {
                let mut in_flight = 0;
                for f in flows.iter_mut() {
                    if f.outstanding > 0 && now.saturating_sub(f.last_progress) > loss_timeout {
                        f.outstanding = 0;
                    }
                    in_flight += f.outstanding;
                }
                in_flight +=
                    capacity_turn(&mut flows, window, burst, in_flight, &mut cursor, |f, k| {
                        send(f, k, &mut out)
                    })?;
                max_in_flight = max_in_flight.max(in_flight);
            }
            Shape::Rate { per_sec } => {
                let due = (per_sec * now as f64 / 1e9) as u64;
                let mut owed = due.saturating_sub(offered);
                while owed > 0 {
                    let k = owed.min(8.min(burst) as u64) as usize;
                    let f = &mut flows[cursor];
                    cursor = (cursor + 1) % n;
                    let r = send(f, k, &mut out)?;
                    if r == 0 {
                        break;
                    }
                    owed -= r as u64;
                    offered += r as u64;
                }
                max_in_flight = max_in_flight.max(flows.iter().map(|f| f.outstanding).sum());
            }
        }
        receive(&mut flows, &mut hist, &mut tally, &mut keeper, false);
        if now - last_bar > 100_000_000 {
            last_bar = now;
            bar.set_position((now / 1_000_000).min(end / 1_000_000));
            if now > warm_end {
                let secs = (now - warm_end) as f64 / 1e9;
                bar.set_message(format!("{:.0} delivered/s", tally.delivered as f64 / secs));
            }
        }
    }
    let cpu_end = cpu_sample(&cfg.target_pids);
    let drain_until = Instant::now() + DRAIN;
    while tally.delivered < sent && Instant::now() < drain_until {
        if receive(&mut flows, &mut hist, &mut tally, &mut keeper, true) == 0 {
            std::thread::yield_now();
        }
    }
    bar.finish_and_clear();
    let (turn_refreshes, turn_refused) = match keeper {
        Some(k) => {
            let counts = (k.refreshes, k.refused);
            // Free the allocations, so that rounds do not pile them up on the server.
            turn::close(&socks, &k.into_sessions(), Duration::from_millis(500));
            counts
        }
        None => (0, 0),
    };

    let seconds = cfg.duration.as_secs_f64();
    let (target_cpu, generator_cpu) = match cpu_start {
        Some(start) => (
            start.0.zip(cpu_end.0).map(|(a, b)| b.saturating_sub(a)),
            cpu_end.1.saturating_sub(start.1),
        ),
        None => (None, Duration::ZERO),
    };
    let delivered = tally.delivered;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / delivered.max(1) as f64;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let lost = sent.saturating_sub(delivered);
    Ok(Report {
        target: cfg.target.to_string(),
        shape: match cfg.shape {
            Shape::Capacity { .. } => "capacity".into(),
            Shape::Rate { .. } => "rate".into(),
        },
        echo: cfg.echo,
        channels: cfg.channels,
        turn: cfg.turn.is_some(),
        turn_refreshes,
        turn_refused,
        interleave: cfg.interleave,
        pairs: cfg.pairs,
        payload: cfg.payload.max(proto::MIN_PAYLOAD),
        datagram: dlen,
        offered_rate: match cfg.shape {
            Shape::Rate { per_sec } => Some(per_sec),
            Shape::Capacity { .. } => None,
        },
        window: match cfg.shape {
            Shape::Capacity { window } => Some(window),
            Shape::Rate { .. } => None,
        },
        max_in_flight,
        seconds,
        sent,
        delivered: sent - lost,
        lost,
        loss_ratio: if sent == 0 {
            0.0
        } else {
            lost as f64 / sent as f64
        },
        delivered_per_sec: (sent - lost) as f64 / seconds,
        corrupt: tally.corrupt,
        out_of_order: tally.out_of_order,
        flows: n,
        starved_flows: flows.iter().filter(|f| f.delivered == 0).count(),
        flow_delivered_min: flows.iter().map(|f| f.delivered).min().unwrap_or(0),
        flow_delivered_max: flows.iter().map(|f| f.delivered).max().unwrap_or(0),
        latency_us: if hist.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: hist.max() as f64 / 1000.0,
            }
        },
        registrations_per_sec,
        target_cpu_us_per_datagram: target_cpu.map(per),
        target_cpu_cores: target_cpu.map(|d| d.as_secs_f64() / seconds),
        generator_cpu_us_per_datagram: per(generator_cpu),
    })
}

/// One turn of the closed loop: flows from `cursor` on send until `window` datagrams are in
/// flight or a whole round of flows could send nothing more; returns how many went. Each flow's
/// share is `window / flows`, at least one: with more flows than the window the window itself
/// binds, and the cursor, kept across turns, resumes after the last flow served, so every flow
/// progresses. A flow sends up to `burst` at once (1 interleaves the flows round-robin).
fn capacity_turn<E>(
    flows: &mut [Flow],
    window: usize,
    burst: usize,
    mut in_flight: usize,
    cursor: &mut usize,
    mut send: impl FnMut(&mut Flow, usize) -> Result<usize, E>,
) -> Result<usize, E> {
    let n = flows.len();
    let share = (window / n).max(1);
    let (mut went, mut idle) = (0, 0);
    while in_flight < window && idle < n {
        let f = &mut flows[*cursor];
        *cursor = (*cursor + 1) % n;
        let k = share
            .saturating_sub(f.outstanding)
            .min(window - in_flight)
            .min(burst);
        // Nothing sent (the flow at its share, or its socket full) counts towards the idle
        // round that ends the turn.
        let r = if k == 0 { 0 } else { send(f, k)? };
        if r == 0 {
            idle += 1;
        } else {
            idle = 0;
            in_flight += r;
            went += r;
        }
    }
    Ok(went)
}

/// The target's (its processes', summed) and this process's CPU time now.
fn cpu_sample(pids: &[u32]) -> (Option<Duration>, Duration) {
    let times: Option<Vec<Duration>> = pids.iter().map(|&p| sys::process_cpu(p).ok()).collect();
    let target = times.filter(|t| !t.is_empty()).map(|t| t.iter().sum());
    let own = sys::process_cpu(std::process::id()).unwrap_or_default();
    (target, own)
}

fn progress_bar(cfg: &LoadConfig) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let total = (cfg.warmup + cfg.duration).as_millis() as u64;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows(n: usize) -> Vec<Flow> {
        (0..n)
            .map(|tx| Flow {
                tx,
                tmpl: Template::frame(1, 40),
                seq: 0,
                outstanding: 0,
                last_progress: 0,
                delivered: 0,
                received: None,
            })
            .collect()
    }

    /// Runs a turn whose sends all go; returns (flow, count) in the order sent.
    fn turn(
        fs: &mut [Flow],
        window: usize,
        burst: usize,
        cursor: &mut usize,
    ) -> Vec<(usize, usize)> {
        let in_flight = fs.iter().map(|f| f.outstanding).sum();
        let mut log = Vec::new();
        let went = capacity_turn(fs, window, burst, in_flight, cursor, |f, k| {
            f.outstanding += k;
            log.push((f.tx, k));
            Ok::<_, ()>(k)
        })
        .unwrap();
        assert_eq!(went, log.iter().map(|l| l.1).sum::<usize>());
        log
    }

    #[test]
    fn more_flows_than_the_window_take_turns_within_it() {
        let mut fs = flows(1024);
        let mut cursor = 0;
        for round in 0..4 {
            let log = turn(&mut fs, 256, 1, &mut cursor);
            let want: Vec<_> = (round * 256..(round + 1) * 256).map(|i| (i, 1)).collect();
            assert_eq!(log, want, "one each, resuming after the last served");
            // Nothing more while the window is full.
            assert!(turn(&mut fs, 256, 1, &mut cursor).is_empty());
            for f in &mut fs {
                f.outstanding = 0;
            }
        }
        assert_eq!(cursor, 0, "every flow had its turn");
        // Bursts change nothing when each flow's share is one.
        assert_eq!(turn(&mut fs, 256, BATCH, &mut cursor).len(), 256);
    }

    #[test]
    fn interleaved_flows_go_round_robin_and_bursts_do_not() {
        let mut fs = flows(8);
        let mut cursor = 0;
        let log = turn(&mut fs, 64, 1, &mut cursor);
        let want: Vec<_> = (0..8).flat_map(|_| (0..8).map(|i| (i, 1))).collect();
        assert_eq!(log, want);
        let mut fs = flows(8);
        let log = turn(&mut fs, 64, BATCH, &mut cursor);
        assert_eq!(log, (0..8).map(|i| (i, 8)).collect::<Vec<_>>());
        // Replies for flow 3 only: only it sends again, back to its share.
        fs[3].outstanding = 5;
        assert_eq!(turn(&mut fs, 64, 1, &mut cursor), vec![(3, 1); 3]);
    }

    #[test]
    fn a_full_socket_ends_the_turn() {
        let mut fs = flows(4);
        let mut cursor = 0;
        let went = capacity_turn(&mut fs, 16, 1, 0, &mut cursor, |_, _| Ok::<_, ()>(0));
        assert_eq!(went, Ok(0));
    }
}
