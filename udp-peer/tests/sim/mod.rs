//! A simulated network with a virtual clock, in quinn's `Pair` style: peers (the real
//! [`udp_peer::Peer`]) behind NAT models, the real relay's sans-IO core, and links that lose,
//! duplicate and reorder datagrams from a seeded generator. The same seed, the same run.

// Each test crate uses a part of it.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use relay_core::settings::Settings;
use relay_core::testing::Harness;
use udp_peer::{Config, Event, Peer};

/// How a NAT's mapping or filtering depends on the remote endpoint (RFC 4787).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dep {
    /// Endpoint-independent.
    Ei,
    /// Address-dependent.
    Ad,
    /// Address-and-port-dependent.
    Apd,
}

/// A NAT model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatKind {
    /// How it maps.
    pub mapping: Dep,
    /// How it filters.
    pub filtering: Dep,
}

impl NatKind {
    pub const FULL_CONE: NatKind = NatKind {
        mapping: Dep::Ei,
        filtering: Dep::Ei,
    };
    pub const RESTRICTED: NatKind = NatKind {
        mapping: Dep::Ei,
        filtering: Dep::Ad,
    };
    pub const PORT_RESTRICTED: NatKind = NatKind {
        mapping: Dep::Ei,
        filtering: Dep::Apd,
    };
    pub const ADDRESS_DEPENDENT: NatKind = NatKind {
        mapping: Dep::Ad,
        filtering: Dep::Ad,
    };
    pub const SYMMETRIC: NatKind = NatKind {
        mapping: Dep::Apd,
        filtering: Dep::Apd,
    };
    pub const ALL: [(&'static str, NatKind); 5] = [
        ("full-cone", NatKind::FULL_CONE),
        ("restricted", NatKind::RESTRICTED),
        ("port-restricted", NatKind::PORT_RESTRICTED),
        ("address-dependent", NatKind::ADDRESS_DEPENDENT),
        ("symmetric", NatKind::SYMMETRIC),
    ];

    /// Whether a direct path can open between peers behind `a` and `b` (different NATs) when
    /// both check at once: an endpoint-independent mapping on both sides, or on one side whose
    /// filter lets the other side's fresh port in (it sent to that address already).
    pub fn direct_possible(a: NatKind, b: NatKind) -> bool {
        let open_to_new_ports = |k: NatKind| k.mapping == Dep::Ei && k.filtering != Dep::Apd;
        (a.mapping == Dep::Ei && b.mapping == Dep::Ei)
            || open_to_new_ports(a)
            || open_to_new_ports(b)
    }
}

struct Nat {
    kind: NatKind,
    hairpin: bool,
    public: Ipv4Addr,
    /// (private source, remote key) → public port.
    map: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Public port → private address.
    back: HashMap<u16, SocketAddr>,
    /// (public port, remote) sent to.
    sent_to: HashSet<(u16, SocketAddr)>,
    next_port: u16,
}

/// Link behaviour.
#[derive(Debug, Clone, Copy)]
pub struct Links {
    /// One-way latency between networks.
    pub latency: Duration,
    /// Extra random delay up to this (reorders).
    pub jitter: Duration,
    /// Chance of a datagram lost, in percent.
    pub loss: u32,
    /// Chance of a datagram duplicated, in percent.
    pub dup: u32,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0,
            dup: 0,
        }
    }
}

/// A host: a peer at a private (or public) address, maybe behind a NAT.
pub struct Host {
    pub peer: Peer,
    pub addr: SocketAddr,
    pub nat: Option<usize>,
    pub events: Vec<(Duration, Event)>,
}

/// A datagram on its way.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Duration,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    /// Put there by the tap (which does not see its own).
    injected: bool,
}

/// A tap on the network: sees every datagram as it is delivered, may add its own.
pub type Tap =
    Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)>>;

pub struct Sim {
    pub t0: Instant,
    pub now: Duration,
    pub relay: Harness,
    pub relay_addr: SocketAddr,
    pub stun2: SocketAddr,
    nats: Vec<Nat>,
    pub hosts: Vec<Host>,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    rng: u64,
    pub links: Links,
    /// Pairs of NATs whose traffic to each other is dropped (a cut direct path).
    pub cut: HashSet<(usize, usize)>,
    /// Pairs (from, to) of NATs whose traffic that way only is dropped.
    pub cut_one_way: HashSet<(usize, usize)>,
    /// Whether the relay is away: nothing reaches it.
    pub relay_down: bool,
    pub tap: Option<Tap>,
    /// Datagrams the relay sent or received, for a privacy check.
    pub relay_bytes: Vec<Vec<u8>>,
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Sim {
    pub fn new(seed: u64, links: Links) -> Sim {
        Sim {
            t0: Instant::now(),
            now: Duration::ZERO,
            relay: Harness::new(Settings::recommended()),
            relay_addr: "203.0.113.1:3478".parse().unwrap(),
            stun2: "203.0.113.2:3478".parse().unwrap(),
            nats: Vec::new(),
            hosts: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: seed | 1,
            links,
            cut: HashSet::new(),
            cut_one_way: HashSet::new(),
            relay_down: false,
            tap: None,
            relay_bytes: Vec::new(),
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub fn nat(&mut self, kind: NatKind, hairpin: bool) -> usize {
        let i = self.nats.len();
        self.nats.push(Nat {
            kind,
            hairpin,
            public: Ipv4Addr::new(198, 51, 100 + i as u8, 1),
            map: HashMap::new(),
            back: HashMap::new(),
            sent_to: HashSet::new(),
            next_port: 40_000 + (i as u16) * 1000,
        });
        i
    }

    /// A config for a peer named `name` with key seed `seed`, fast timers for tests.
    pub fn config(&self, name: &str, seed: u8) -> Config {
        let mut c = Config::new(
            name,
            SigningKey::from_bytes(&[seed; 32]),
            self.relay_addr,
            u64::from(seed),
        );
        c.stun2 = Some(self.stun2);
        c
    }

    /// Adds a host behind `nat` (or on the open internet) running `cfg`.
    pub fn host(&mut self, nat: Option<usize>, mut cfg: Config) -> usize {
        let i = self.hosts.len();
        let addr = match nat {
            Some(n) => SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(192, 168, n as u8, i as u8 + 2)),
                5000,
            ),
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8 + 2)), 5000),
        };
        cfg.local = vec![addr];
        let peer = Peer::new(cfg, HashMap::new(), self.t0 + self.now);
        self.hosts.push(Host {
            peer,
            addr,
            nat,
            events: Vec::new(),
        });
        self.flush(i);
        i
    }

    /// Alice (host 0, key seed 1) behind a NAT of kind `a` and bob (host 1, seed 2) behind
    /// one of kind `b`, `tune` adjusting both configurations.
    pub fn alice_and_bob(&mut self, a: NatKind, b: NatKind, tune: impl Fn(&mut Config)) {
        let (na, nb) = (self.nat(a, false), self.nat(b, false));
        let (mut ca, mut cb) = (self.config("alice", 1), self.config("bob", 2));
        tune(&mut ca);
        tune(&mut cb);
        self.host(Some(na), ca);
        self.host(Some(nb), cb);
    }

    /// The NAT forgets every mapping of host `h`'s (a rebinding: its next datagram gets a new
    /// port).
    pub fn rebind(&mut self, h: usize) {
        let Some(n) = self.hosts[h].nat else { return };
        let addr = self.hosts[h].addr;
        let nat = &mut self.nats[n];
        let gone: Vec<u16> = nat
            .map
            .iter()
            .filter(|((a, _), _)| *a == addr)
            .map(|(_, p)| *p)
            .collect();
        nat.map.retain(|(a, _), _| *a != addr);
        for p in gone {
            nat.back.remove(&p);
        }
        nat.next_port += 100;
    }

    fn push(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>, local: bool) {
        let copies = if self.rand() % 100 < u64::from(self.links.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.rand() % 100 < u64::from(self.links.loss) {
                continue;
            }
            let jitter = if self.links.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(self.rand() % self.links.jitter.as_micros() as u64)
            };
            let lat = if local { ms(1) } else { self.links.latency };
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                at: self.now + lat + jitter,
                seq: self.seq,
                from,
                to,
                bytes: bytes.clone(),
                injected: false,
            }));
        }
    }

    fn nat_of_ip(&self, ip: IpAddr) -> Option<usize> {
        self.nats.iter().position(|n| IpAddr::V4(n.public) == ip)
    }

    /// Host `h` sends `bytes` to `to`: through its NAT, onto the wire.
    fn send(&mut self, h: usize, to: SocketAddr, bytes: Vec<u8>) {
        let src = self.hosts[h].addr;
        let Some(n) = self.hosts[h].nat else {
            self.push(src, to, bytes, false);
            return;
        };
        // Same LAN: straight there.
        if self.hosts.iter().any(|o| o.addr == to && o.nat == Some(n)) {
            self.push(src, to, bytes, true);
            return;
        }
        let nat = &mut self.nats[n];
        let key = match nat.kind.mapping {
            Dep::Ei => None,
            Dep::Ad => Some(SocketAddr::new(to.ip(), 0)),
            Dep::Apd => Some(to),
        };
        let port = match nat.map.get(&(src, key)) {
            Some(p) => *p,
            None => {
                let p = nat.next_port;
                nat.next_port += 1;
                nat.map.insert((src, key), p);
                nat.back.insert(p, src);
                p
            }
        };
        nat.sent_to.insert((port, to));
        let public = SocketAddr::new(IpAddr::V4(nat.public), port);
        if to.ip() == IpAddr::V4(nat.public) {
            // Hairpin: back in through the NAT's own public address, or dropped.
            if nat.hairpin {
                self.push(public, to, bytes, true);
            }
            return;
        }
        self.push(public, to, bytes, false);
    }

    /// Delivers a datagram that arrived at `to` from `from`.
    fn deliver(&mut self, d: InFlight) {
        let InFlight {
            from,
            to,
            bytes,
            injected,
            ..
        } = d;
        if !injected && let Some(tap) = self.tap.as_mut() {
            for (f, t, b) in tap(from, to, &bytes) {
                self.seq += 1;
                self.queue.push(Reverse(InFlight {
                    at: self.now,
                    seq: self.seq,
                    from: f,
                    to: t,
                    bytes: b,
                    injected: true,
                }));
            }
        }
        if to == self.relay_addr || to == self.stun2 {
            if self.relay_down {
                return;
            }
            self.relay_bytes.push(bytes.clone());
            let sends = self.relay.run(&bytes, from, self.now.as_millis() as u64);
            for (dst, b) in sends {
                self.relay_bytes.push(b.clone());
                // A STUN answer comes from the address asked.
                self.push(to, dst, b, false);
            }
            return;
        }
        let (src_nat, dst_nat) = (self.nat_of_ip(from.ip()), self.nat_of_ip(to.ip()));
        if let (Some(a), Some(b)) = (src_nat, dst_nat)
            && (self.cut.contains(&(a, b))
                || self.cut.contains(&(b, a))
                || self.cut_one_way.contains(&(a, b)))
        {
            return;
        }
        let target = match dst_nat {
            Some(n) => {
                let nat = &self.nats[n];
                let Some(&private) = nat.back.get(&to.port()) else {
                    return;
                };
                let allowed = match nat.kind.filtering {
                    Dep::Ei => true,
                    Dep::Ad => nat
                        .sent_to
                        .iter()
                        .any(|(p, r)| *p == to.port() && r.ip() == from.ip()),
                    Dep::Apd => nat.sent_to.contains(&(to.port(), from)),
                };
                // A hairpinned datagram comes from the NAT itself.
                let hairpinned = from.ip() == IpAddr::V4(nat.public);
                if !allowed && !hairpinned {
                    return;
                }
                private
            }
            None => to,
        };
        if let Some(h) = self.hosts.iter().position(|o| o.addr == target) {
            let now = self.t0 + self.now;
            self.hosts[h].peer.handle(now, from, &bytes);
            self.flush(h);
        }
    }

    /// Puts `bytes` on the wire now, from any source (a forger's, an attacker's own host),
    /// unseen by the tap.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at: self.now,
            seq: self.seq,
            from,
            to,
            bytes,
            injected: true,
        }));
    }

    fn flush(&mut self, h: usize) {
        while let Some(t) = self.hosts[h].peer.poll_transmit() {
            self.send(h, t.to, t.bytes);
        }
        while let Some(e) = self.hosts[h].peer.poll_event() {
            self.hosts[h].events.push((self.now, e));
        }
    }

    /// Runs until `until` (virtual time from the start), or until `done` holds.
    pub fn run(&mut self, until: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let next_packet = self.queue.peek().map(|Reverse(d)| d.at);
            let next_timer = self
                .hosts
                .iter()
                .filter_map(|h| h.peer.poll_timeout())
                .map(|t| t.saturating_duration_since(self.t0))
                .min();
            let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
                return false;
            };
            if next > until {
                self.now = until;
                return done(self);
            }
            self.now = self.now.max(next);
            while self.queue.peek().is_some_and(|Reverse(d)| d.at <= self.now) {
                let Reverse(d) = self.queue.pop().unwrap();
                self.deliver(d);
            }
            for h in 0..self.hosts.len() {
                let now = self.t0 + self.now;
                if self.hosts[h].peer.poll_timeout().is_some_and(|t| t <= now) {
                    self.hosts[h].peer.handle_timeout(now);
                }
                self.flush(h);
            }
        }
    }

    pub fn at(&self) -> Instant {
        self.t0 + self.now
    }

    /// Host `h` connects to `name`.
    pub fn connect(&mut self, h: usize, name: &str) {
        let now = self.at();
        self.hosts[h].peer.connect(name, now).expect("a valid name");
        self.flush(h);
    }

    /// Host `h` sends `text` to `name`.
    pub fn say(&mut self, h: usize, name: &str, text: &str) {
        let now = self.at();
        self.hosts[h]
            .peer
            .send(name, text.as_bytes(), now)
            .expect("queued");
        self.flush(h);
    }

    /// The messages host `h` received, in order, with the path each came by.
    pub fn received(&self, h: usize) -> Vec<(String, udp_peer::Via)> {
        self.hosts[h]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Message { text, via, .. } => {
                    Some((String::from_utf8_lossy(text).into_owned(), *via))
                }
                _ => None,
            })
            .collect()
    }

    /// When host `h` first went direct, if it did.
    pub fn direct_at(&self, h: usize) -> Option<Duration> {
        self.hosts[h].events.iter().find_map(|(t, e)| {
            matches!(
                e,
                Event::PathChanged {
                    via: udp_peer::Via::Direct,
                    ..
                }
            )
            .then_some(*t)
        })
    }

    pub fn is_direct(&self, h: usize) -> bool {
        self.hosts[h]
            .peer
            .status()
            .peers
            .iter()
            .any(|p| p.via == udp_peer::Via::Direct)
    }

    pub fn connected(&self, h: usize) -> bool {
        self.hosts[h]
            .peer
            .status()
            .peers
            .iter()
            .any(|p| p.connected)
    }
}

/// Alice behind `a` and bob behind `b` (see [`Sim::alice_and_bob`]), alice connecting; runs until
/// both hold an open session.
pub fn pair(seed: u64, a: NatKind, b: NatKind, links: Links, tune: impl Fn(&mut Config)) -> Sim {
    let mut s = Sim::new(seed, links);
    s.alice_and_bob(a, b, tune);
    s.connect(0, "bob");
    assert!(
        s.run(ms(20_000), |s| s.connected(0) && s.connected(1)),
        "the session opens over the relay"
    );
    s
}

/// Timers for tests of path changes: heartbeats every 500 ms, consent lapsing after 3 s, a 2 s
/// hold-down, keepalives every 2 s.
pub fn fast(c: &mut Config) {
    c.paths = udp_peer::path::PathTimers {
        check_every: ms(50),
        checks: 40,
        heartbeat: ms(500),
        consent: ms(3_000),
        reprobe: ms(2_000),
        hold_down: ms(2_000),
    };
    c.timers.relay_timeout = Duration::from_secs(6);
}
