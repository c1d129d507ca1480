//! The one sans-IO test harness: a router over fresh shared state, fed datagrams one at a time,
//! with no socket and no clock. The unit tests, `tests/`, `benches/` and `fuzz/` all drive the
//! protocol logic through it (JSON helpers over it live with the tests, which have serde_json).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::clock::Now;
use crate::out::Out;
use crate::refusal::Reason;
use crate::registry::{Proof, Registry};
use crate::router::Router;
use crate::settings::Settings;
use crate::shared::Shared;
use crate::wire::peer;

/// Peer `i`'s address: each on a network (/24) of its own, as most peers are (news of a
/// neighbour waits for its proof, see [`crate::budget`]).
pub fn addr(i: u16) -> SocketAddr {
    let [hi, lo] = i.to_be_bytes();
    SocketAddr::from(([10, hi, lo, 1], 1000 + i))
}

/// The relay's time `ms` into a run.
pub fn at(ms: u64) -> Now {
    Now {
        ms,
        unix: 1_795_574_001.25 + ms as f64 / 1000.0,
    }
}

/// Every send of `out` as (recipient, bytes), given the datagram it was decided for.
pub fn collect(out: &Out, input: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
    out.sends
        .iter()
        .map(|s| (s.to, out.segments(s, input).concat()))
        .collect()
}

/// A router (worker 0 of one) over fresh shared state, and the sends of the last datagram.
pub struct Harness {
    /// The shared state, to look into.
    pub shared: Arc<Shared>,
    /// The router.
    pub router: Router,
    /// What the last datagram decided.
    pub out: Out,
}

impl Harness {
    /// A harness with `settings`.
    pub fn new(settings: Settings) -> Harness {
        let shared = Shared::new(settings, 1);
        Harness {
            router: Router::new(shared.clone(), 0),
            shared,
            out: Out::default(),
        }
    }

    /// Decides datagram `d` (rewritten in place, as a channel frame is) from `from` at `ms`;
    /// the sends are left in [`Harness::out`].
    pub fn handle(&mut self, d: &mut [u8], from: SocketAddr, ms: u64) {
        self.out.clear();
        self.router.handle(d, from, at(ms), &mut self.out);
    }

    /// Decides a copy of `d`; returns the sends as (recipient, bytes).
    pub fn run(&mut self, d: &[u8], from: SocketAddr, ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut d = d.to_vec();
        self.handle(&mut d, from, ms);
        collect(&self.out, &d)
    }

    /// Registers `name` at `from`, as an old peer does (nothing shown back).
    pub fn register(&mut self, name: &str, from: SocketAddr, ms: u64) {
        let mut d = Vec::new();
        peer::register(&mut d, name, None);
        self.run(&d, from, ms);
    }

    /// Registers `name` at `from` and shows its session back (an authenticated `ping`), so that
    /// the registration is trusted; returns the session.
    pub fn prove(&mut self, name: &str, from: SocketAddr, ms: u64) -> String {
        self.register(name, from, ms);
        let session = self.session(name, from);
        let mut d = Vec::new();
        peer::ping(&mut d, Some(name), Some(&session));
        self.run(&d, from, ms);
        session
    }

    /// The session of `name` at `from`, as its `register_ack` gave it.
    pub fn session(&self, name: &str, from: SocketAddr) -> String {
        self.shared
            .registry
            .session_at(name, from, 0)
            .expect("registered")
            .to_hex()
    }

    /// Datagrams refused for `r` so far.
    pub fn refused(&self, r: Reason) -> u64 {
        self.shared.metrics.refused(r)
    }
}

/// The address of peer `i` of a big registry: a distinct IPv4 address and port for each of a few million peers.
pub fn many_addr(i: usize) -> SocketAddr {
    let ip = 0x0A00_0000u32 + (i / 8) as u32;
    SocketAddr::from((ip.to_be_bytes(), 40_000 + (i % 8) as u16))
}

/// The name of peer `i`.
pub fn many_name(i: usize) -> String {
    format!("user-{i:07}")
}

/// Registers peers `range` (name [`many_name`], address [`many_addr`]) at `ms`.
pub fn fill(reg: &Registry, range: std::ops::Range<usize>, ms: u64) {
    for i in range {
        reg.claim(
            &many_name(i),
            many_addr(i),
            Proof::Token(None),
            ms,
            usize::MAX,
        );
    }
}
