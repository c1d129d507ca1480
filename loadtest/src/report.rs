//! The report of one load run: what was sent, what arrived, how fast and how late.

use serde::{Deserialize, Serialize};

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest seen.
    pub max: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// What was driven: the relay's address, or the reflector's in echo mode.
    pub target: String,
    /// `capacity` or `rate`.
    pub shape: String,
    /// Whether the target was a reflector (echo mode).
    pub echo: bool,
    /// Whether channel frames were sent rather than JSON relays.
    #[serde(default)]
    pub channels: bool,
    /// Whether a TURN server was driven (ChannelData through two allocations per pair).
    #[serde(default)]
    pub turn: bool,
    /// TURN Refresh and ChannelBind requests sent during the run to keep sessions alive.
    #[serde(default)]
    pub turn_refreshes: u64,
    /// Of those, how many the server refused.
    #[serde(default)]
    pub turn_refused: u64,
    /// Whether each turn sent one datagram per flow, round-robin, rather than a burst per flow.
    #[serde(default)]
    pub interleave: bool,
    /// Pairs of virtual peers.
    pub pairs: usize,
    /// Payload bytes per datagram.
    pub payload: usize,
    /// Size of each datagram sent.
    pub datagram: usize,
    /// The offered rate in fixed-rate runs (datagrams/s).
    pub offered_rate: Option<f64>,
    /// The closed loop's cap on datagrams in flight (capacity runs).
    #[serde(default)]
    pub window: Option<usize>,
    /// The most datagrams in flight at the end of any turn (never above `window`).
    #[serde(default)]
    pub max_in_flight: usize,
    /// Length of the measured window, in seconds.
    pub seconds: f64,
    /// Datagrams sent in the measured window.
    pub sent: u64,
    /// Of those, how many arrived.
    pub delivered: u64,
    /// Of those, how many did not.
    pub lost: u64,
    /// `lost / sent`.
    pub loss_ratio: f64,
    /// Delivered datagrams per second.
    pub delivered_per_sec: f64,
    /// Stamped datagrams that arrived with a payload other than the one sent (not delivered).
    #[serde(default)]
    pub corrupt: u64,
    /// Datagrams that arrived after a later one of their flow, or twice.
    #[serde(default)]
    pub out_of_order: u64,
    /// Flows (one per virtual peer, each to its partner or, echoed, to itself).
    #[serde(default)]
    pub flows: usize,
    /// Flows none of whose datagrams sent in the measured window arrived.
    #[serde(default)]
    pub starved_flows: usize,
    /// Fewest datagrams of one flow delivered in the measured window.
    #[serde(default)]
    pub flow_delivered_min: u64,
    /// Most datagrams of one flow delivered in the measured window.
    #[serde(default)]
    pub flow_delivered_max: u64,
    /// One-way latency through the relay, from the send timestamp in the payload.
    pub latency_us: Latency,
    /// Registrations acknowledged per second while the peers registered.
    pub registrations_per_sec: Option<f64>,
    /// The target's CPU time per delivered datagram (µs), when its pid was given.
    pub target_cpu_us_per_datagram: Option<f64>,
    /// The target's CPU use during the window, in cores.
    pub target_cpu_cores: Option<f64>,
    /// The generator's own CPU time per delivered datagram (µs).
    pub generator_cpu_us_per_datagram: f64,
}

impl Report {
    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} {} ({} pairs, {} B payload, {} B datagrams, {:.1} s)\n\
             sent {}  delivered {}  lost {} ({:.3}%)\n\
             delivered/s {:.0}\n\
             flows {}{}: delivered {} to {} each, {} with none\n\
             latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            match (self.echo, self.channels, self.turn) {
                (true, _, _) => "reflector",
                (_, _, true) => "TURN server (ChannelData)",
                (false, true, _) => "relay (channel frames)",
                (false, false, _) => "relay",
            },
            self.target,
            self.pairs,
            self.payload,
            self.datagram,
            self.seconds,
            self.sent,
            self.delivered,
            self.lost,
            self.loss_ratio * 100.0,
            self.delivered_per_sec,
            self.flows,
            if self.interleave { " interleaved" } else { "" },
            self.flow_delivered_min,
            self.flow_delivered_max,
            self.starved_flows,
            self.latency_us.p50,
            self.latency_us.p90,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
        );
        if let Some(r) = self.offered_rate {
            s += &format!("offered/s {r:.0}\n");
        }
        if self.corrupt > 0 || self.out_of_order > 0 {
            s += &format!(
                "corrupt {}  out of order {}\n",
                self.corrupt, self.out_of_order
            );
        }
        if self.turn_refreshes > 0 {
            s += &format!(
                "TURN refreshes {} ({} refused)\n",
                self.turn_refreshes, self.turn_refused
            );
        }
        if let Some(w) = self.window {
            s += &format!("window {w}, most in flight {}\n", self.max_in_flight);
        }
        if let Some(r) = self.registrations_per_sec {
            s += &format!("registrations/s {r:.0}\n");
        }
        if let (Some(c), Some(cores)) = (self.target_cpu_us_per_datagram, self.target_cpu_cores) {
            s += &format!("target CPU {c:.2} µs/datagram ({cores:.2} cores)\n");
        }
        s += &format!(
            "generator CPU {:.2} µs/datagram\n",
            self.generator_cpu_us_per_datagram
        );
        s
    }
}
