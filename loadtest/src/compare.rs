//! `loadtest compare`: the same load against several targets in turn, summarised as medians,
//! ratios to the first target, and a chart.
//!
//! Rounds interleave the targets (A B A B …) so that drift on a shared machine (frequency,
//! another tenant, a warming cache) lands on all of them alike rather than on whichever ran last.

use std::net::SocketAddr;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::drive::{self, LoadConfig, Shape};
use crate::proto;
use crate::report::{Latency, Report};
use crate::turn::{self, Credentials};

/// One thing to drive: a relay speaking the JSON protocol, a reflector, or a TURN server.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its label in the table and chart.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A reflector (echo mode) rather than a relay.
    pub echo: bool,
    /// Channel frames (Part 4) rather than JSON relays (to a reflector: frames of that size).
    pub channels: bool,
    /// A TURN server, driven with these credentials (allocations, channels, ChannelData).
    pub turn: Option<Credentials>,
    /// A second relay of the same cluster: every other peer registers there, so that each
    /// pair's datagrams cross from one relay to the other (a forward between relays).
    pub via: Option<SocketAddr>,
    /// Its pids (a cluster's relays: their CPU times are summed), for CPU time per datagram.
    pub pids: Vec<u32>,
}

/// The syntax of a target, for messages.
pub const TARGET_SYNTAX: &str =
    "NAME=HOST:PORT[,echo][,channels][,turn=USER:PASS][,via=HOST:PORT][,pid=N]...";

/// Parses `NAME=HOST:PORT[,echo][,channels][,turn=USER:PASS][,via=HOST:PORT][,pid=N]...`
/// (`turn` alone of the first three; `pid` repeated for the relays of a cluster).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not {TARGET_SYNTAX}"))?;
    if name.is_empty() {
        return Err(format!("`{s}`: the target needs a name before `=`"));
    }
    let mut parts = rest.split(',');
    let addr = proto::parse_addr(parts.next().unwrap_or_default())?;
    let mut t = Target {
        name: name.to_string(),
        addr,
        echo: false,
        channels: false,
        turn: None,
        via: None,
        pids: Vec::new(),
    };
    for p in parts {
        match p.split_once('=') {
            None if p == "echo" => t.echo = true,
            None if p == "channels" => t.channels = true,
            // The password runs to the next comma: one with a comma cannot be given here.
            Some(("turn", v)) => t.turn = Some(turn::parse_credentials(v)?),
            Some(("pid", v)) => t.pids.push(
                v.parse()
                    .map_err(|_| format!("`{s}`: pid `{v}` is not a number"))?,
            ),
            Some(("via", v)) => t.via = Some(proto::parse_addr(v)?),
            _ => {
                return Err(format!(
                    "`{s}`: unknown option `{p}` (expected `echo`, `channels`, \
                     `turn=USER:PASS`, `via=HOST:PORT` or `pid=N`)"
                ));
            }
        }
    }
    if t.via.is_some() && (t.echo || t.turn.is_some()) {
        return Err(format!(
            "`{s}`: `via` names a second relay of a cluster: not for a reflector or TURN server"
        ));
    }
    if t.turn.is_some() && (t.echo || t.channels) {
        return Err(format!(
            "`{s}`: a TURN server (`turn=USER:PASS`) is driven with ChannelData: it takes \
             neither `echo` nor `channels`"
        ));
    }
    Ok(t)
}

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The targets; ratios are relative to the first.
    pub targets: Vec<Target>,
    /// Runs per target and phase.
    pub rounds: usize,
    /// The load of one run; `target`, `echo`, `shape`, `via` and `target_pids` are set per run.
    pub load: LoadConfig,
    /// Closed-loop window of the capacity phase.
    pub window: usize,
    /// Offered rate of the latency phase; by default `rate_fraction` of the slowest capacity.
    pub rate: Option<f64>,
    /// Fraction of the slowest target's median capacity offered in the latency phase.
    pub rate_fraction: f64,
}

/// One target's runs and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    /// The target's label.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Whether it was driven as a reflector.
    pub echo: bool,
    /// Whether it was driven as a TURN server.
    pub turn: bool,
    /// Median delivered datagrams/s at capacity.
    pub delivered_per_sec: f64,
    /// Lowest and highest delivered/s over the rounds.
    pub delivered_range: (f64, f64),
    /// Median target CPU µs per delivered datagram at capacity, when its pid was given.
    pub cpu_us_per_datagram: Option<f64>,
    /// Median latency percentiles at the common fixed rate (µs).
    pub latency_at_rate_us: Latency,
    /// Median loss ratio at the fixed rate.
    pub loss_at_rate: f64,
    /// Every capacity run.
    pub capacity_runs: Vec<Report>,
    /// Every fixed-rate run.
    pub rate_runs: Vec<Report>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Rounds per phase.
    pub rounds: usize,
    /// Datagrams/s offered to every target in the latency phase.
    pub rate: f64,
    /// Payload bytes per datagram.
    pub payload: usize,
    /// Pairs of virtual peers.
    pub pairs: usize,
    /// The capacity phase's window.
    pub window: usize,
    /// Whether the flows were interleaved (one datagram per flow per turn).
    pub interleave: bool,
    /// Per target, in the order given.
    pub targets: Vec<TargetResult>,
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Runs both phases; `on_run` hears of each run as it finishes.
pub fn run(
    cfg: &CompareConfig,
    mut on_run: impl FnMut(&str, &Report),
) -> Result<Comparison, String> {
    if cfg.targets.is_empty() {
        return Err("give at least one --target".into());
    }
    if cfg.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if !(cfg.rate_fraction > 0.0 && cfg.rate_fraction <= 1.0) {
        return Err(format!(
            "--rate-fraction must be in (0, 1], not {}",
            cfg.rate_fraction
        ));
    }
    let one = |t: &Target, shape: Shape| -> Result<Report, String> {
        let c = LoadConfig {
            target: t.addr,
            echo: t.echo,
            channels: t.channels,
            turn: t.turn.clone(),
            shape,
            via: t.via,
            target_pids: t.pids.clone(),
            ..cfg.load.clone()
        };
        drive::run(&c).map_err(|e| format!("target {}: {e}", t.name))
    };
    let n = cfg.targets.len();
    let mut capacity: Vec<Vec<Report>> = vec![Vec::new(); n];
    for _ in 0..cfg.rounds {
        for (i, t) in cfg.targets.iter().enumerate() {
            let r = one(t, Shape::Capacity { window: cfg.window })?;
            on_run(&t.name, &r);
            capacity[i].push(r);
        }
    }
    let medians: Vec<f64> = capacity
        .iter()
        .map(|runs| median(runs.iter().map(|r| r.delivered_per_sec).collect()))
        .collect();
    let rate = match cfg.rate {
        Some(r) => r,
        None => medians.iter().copied().fold(f64::INFINITY, f64::min) * cfg.rate_fraction,
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!(
            "no rate for the latency phase: a target delivered nothing at capacity ({rate})"
        ));
    }
    let mut at_rate: Vec<Vec<Report>> = vec![Vec::new(); n];
    for _ in 0..cfg.rounds {
        for (i, t) in cfg.targets.iter().enumerate() {
            let r = one(t, Shape::Rate { per_sec: rate })?;
            on_run(&t.name, &r);
            at_rate[i].push(r);
        }
    }
    let targets = cfg
        .targets
        .iter()
        .zip(capacity.into_iter().zip(at_rate))
        .map(|(t, (cap, rr))| summarise(t, cap, rr))
        .collect();
    Ok(Comparison {
        rounds: cfg.rounds,
        rate,
        payload: cfg.load.payload.max(proto::MIN_PAYLOAD),
        pairs: cfg.load.pairs,
        window: cfg.window,
        interleave: cfg.load.interleave,
        targets,
    })
}

fn summarise(t: &Target, cap: Vec<Report>, rr: Vec<Report>) -> TargetResult {
    let of = |runs: &[Report], f: fn(&Report) -> f64| median(runs.iter().map(f).collect());
    let rates: Vec<f64> = cap.iter().map(|r| r.delivered_per_sec).collect();
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    let cpu: Vec<f64> = cap
        .iter()
        .filter_map(|r| r.target_cpu_us_per_datagram)
        .collect();
    TargetResult {
        name: t.name.clone(),
        addr: t.addr.to_string(),
        echo: t.echo,
        turn: t.turn.is_some(),
        delivered_per_sec: median(rates),
        delivered_range: (lo, hi),
        cpu_us_per_datagram: (!cpu.is_empty()).then(|| median(cpu)),
        latency_at_rate_us: Latency {
            p50: of(&rr, |r| r.latency_us.p50),
            p90: of(&rr, |r| r.latency_us.p90),
            p99: of(&rr, |r| r.latency_us.p99),
            p999: of(&rr, |r| r.latency_us.p999),
            max: of(&rr, |r| r.latency_us.max),
        },
        loss_at_rate: of(&rr, |r| r.loss_ratio),
        capacity_runs: cap,
        rate_runs: rr,
    }
}

impl Comparison {
    /// The table of medians and ratios to the first target.
    pub fn table(&self) -> String {
        let reference = &self.targets[0];
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "-".into()
            }
        };
        let mut s = format!(
            "{} pairs{}, {} B payload, window {}; medians of {} rounds; latency at {:.0} \
             datagrams/s\n\
             {:<14} {:>12} {:>7} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
            self.pairs,
            if self.interleave { " interleaved" } else { "" },
            self.payload,
            self.window,
            self.rounds,
            self.rate,
            "target",
            "delivered/s",
            "ratio",
            "CPU µs/dg",
            "ratio",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "loss %",
        );
        for t in &self.targets {
            let cpu = t
                .cpu_us_per_datagram
                .map_or("-".into(), |c| format!("{c:.2}"));
            let cpu_ratio = match (t.cpu_us_per_datagram, reference.cpu_us_per_datagram) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "-".into(),
            };
            let l = &t.latency_at_rate_us;
            s += &format!(
                "{:<14} {:>12.0} {:>7} {:>9} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.3}\n",
                t.name,
                t.delivered_per_sec,
                ratio(t.delivered_per_sec, reference.delivered_per_sec),
                cpu,
                cpu_ratio,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                t.loss_at_rate * 100.0,
            );
        }
        s
    }

    /// Draws throughput per target and latency percentiles per target to an SVG file.
    pub fn chart(&self, path: &Path) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
        let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(520);
        self.throughput_panel(&left).map_err(|e| err(&e))?;
        self.latency_panel(&right).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))
    }

    fn throughput_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let n = self.targets.len();
        let top = self
            .targets
            .iter()
            .map(|t| t.delivered_range.1)
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "Delivered datagrams/s at capacity (median of {})",
                    self.rounds
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..top)?;
        let names: Vec<String> = self.targets.iter().map(|t| t.name.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n.max(2) * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
            .draw()?;
        for (i, t) in self.targets.iter().enumerate() {
            let x = i as f64;
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, t.delivered_per_sec)],
                color.filled(),
            )))?;
            let (lo, hi) = t.delivered_range;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, hi)],
                BLACK.stroke_width(2),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{:.0}k", t.delivered_per_sec / 1000.0),
                (x - 0.28, t.delivered_per_sec + top * 0.05),
                ("sans-serif", 14),
            )))?;
        }
        Ok(())
    }

    fn latency_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        const LABELS: [&str; 4] = ["p50", "p90", "p99", "p99.9"];
        let points = |l: &Latency| [l.p50, l.p90, l.p99, l.p999];
        let hi = self
            .targets
            .iter()
            .flat_map(|t| points(&t.latency_at_rate_us))
            .fold(10.0, f64::max)
            * 2.0;
        let lo = self
            .targets
            .iter()
            .flat_map(|t| points(&t.latency_at_rate_us))
            .filter(|v| *v > 0.0)
            .fold(hi, f64::min)
            / 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("One-way latency at {:.0} datagrams/s (µs)", self.rate),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.3f64..3.3, (lo.max(1.0)..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(LABELS.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    LABELS
                        .get(i as usize)
                        .map_or(String::new(), |s| s.to_string())
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, t) in self.targets.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = points(&t.latency_at_rate_us)
                .into_iter()
                .enumerate()
                .map(|(k, v)| (k as f64, v.max(1.0)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(t.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_options_and_name_their_faults() {
        let t = parse_target("relay=127.0.0.1:8400,pid=42").unwrap();
        assert_eq!(t.name, "relay");
        assert_eq!(t.addr, "127.0.0.1:8400".parse().unwrap());
        assert_eq!((t.echo, t.pids), (false, vec![42]));
        let t = parse_target("cluster=127.0.0.1:8400,via=127.0.0.2:8400,pid=1,pid=2").unwrap();
        assert_eq!(t.via, Some("127.0.0.2:8400".parse().unwrap()));
        assert_eq!(t.pids, vec![1, 2]);
        assert!(parse_target("x=127.0.0.1:1,echo,via=127.0.0.2:1").is_err());
        assert!(parse_target("floor=127.0.0.1:8401,echo").unwrap().echo);
        let frames = parse_target("floor=127.0.0.1:8401,echo,channels").unwrap();
        assert!(frames.echo && frames.channels);
        let t = parse_target("coturn=127.0.0.1:3478,turn=u:p:w,pid=7").unwrap();
        assert_eq!(t.turn, turn::parse_credentials("u:p:w").ok());
        assert_eq!((t.echo, t.channels, t.pids), (false, false, vec![7]));
        assert!(
            parse_target("x=127.0.0.1:1,turn=u:p,echo")
                .unwrap_err()
                .contains("neither")
        );
        assert!(
            parse_target("x=127.0.0.1:1,turn=nopass")
                .unwrap_err()
                .contains("USER:PASS")
        );
        assert!(
            parse_target("127.0.0.1:8400")
                .unwrap_err()
                .contains("NAME=HOST:PORT")
        );
        assert!(
            parse_target("x=127.0.0.1:1,pid=abc")
                .unwrap_err()
                .contains("pid `abc`")
        );
        assert!(
            parse_target("x=127.0.0.1:1,fast")
                .unwrap_err()
                .contains("`fast`")
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
