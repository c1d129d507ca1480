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

/// Relays of a cluster in one process, for the cluster's tests: each a [`Harness`] whose claims
/// the test settles as the directory would, and whose mesh datagrams it carries by hand.
pub mod cluster {
    use std::net::SocketAddr;

    use super::{Harness, at, collect};
    use crate::cluster::{Cluster, Op};
    use crate::mesh::Keys;
    use crate::out::Out;
    use crate::settings::Settings;
    use crate::wire::peer;

    /// The cluster's mesh key.
    pub const KEY: &[u8] = b"the cluster's shared secret, at least 32 bytes";

    /// Node `i`'s mesh address (relay-a is 1, relay-b 2).
    pub fn mesh_addr(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 7000))
    }

    /// `h` as node `me` of a cluster keyed by `key`, knowing at most `max_remote` names of each
    /// other node, with node `other` listed (relay-b at mesh address 2, any other at 1).
    pub fn join(h: Harness, me: &str, other: &str, key: &[u8], max_remote: usize) -> Harness {
        let keys = Keys::new(key).expect("a long enough key");
        let cluster = Cluster::new(me, keys, max_remote, Box::new(|| {}));
        let mesh = mesh_addr(if other == "relay-b" { 2 } else { 1 });
        cluster.nodes.add(other, mesh, 0);
        assert!(h.shared.cluster.set(cluster).is_ok());
        h
    }

    /// A relay of `settings` as node `me` of a cluster of two with `other`.
    pub fn relay(me: &str, other: &str, settings: Settings) -> Harness {
        join(Harness::new(settings), me, other, KEY, 1_000)
    }

    /// Settles every claim `h` queued as the directory would a free name's (epoch 1), deciding
    /// each registration again: what that sent.
    pub fn settle_claims(h: &mut Harness) -> Vec<(SocketAddr, Vec<u8>)> {
        let c = h.shared.cluster.get().expect("a relay of a cluster");
        let mut sent = Vec::new();
        for op in c.take(usize::MAX) {
            if let Op::Claim(p) = op {
                c.homed(&p.name, 1, p.key.clone());
                c.remote.forget(&p.name);
                let mut out = Out::default();
                h.router.settle(&p, at(p.at_ms), &mut out);
                sent.extend(collect(&out, &p.datagram));
            }
        }
        sent
    }

    /// Registers `name` at `from` at `ms` (its claim settled) and shows its session back, so
    /// that it may bind and be bound: its session.
    pub fn prove(h: &mut Harness, name: &str, from: SocketAddr, ms: u64) -> String {
        h.register(name, from, ms);
        settle_claims(h);
        let session = h.session(name, from);
        let mut d = Vec::new();
        peer::ping(&mut d, Some(name), Some(&session));
        h.run(&d, from, ms);
        session
    }

    /// Mesh datagram `d` decided by `h`, from `from` at `ms`: what it sent.
    pub fn mesh(
        h: &mut Harness,
        d: &[u8],
        from: SocketAddr,
        ms: u64,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Out::default();
        h.router.mesh(d, from, at(ms), &mut out);
        collect(&out, d)
    }
}
