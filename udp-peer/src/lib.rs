//! A peer of udp-relay, sans-IO in quinn-proto's shape: [`Peer::handle`] takes a datagram,
//! [`Peer::poll_transmit`] gives the next to send, [`Peer::poll_timeout`] and
//! [`Peer::handle_timeout`] run its timers, [`Peer::poll_event`] says what happened. No socket,
//! no clock, no thread inside: [`runner`] drives it on a real UDP socket, the tests in a
//! simulated network.
//!
//! What it does with a relay: registers (signed with its Ed25519 key, Part 5), keeps the
//! registration and the NAT mapping alive, learns its public address and the NAT's mapping type
//! over STUN ([`relay`]); connects to a peer by name through an introduction, binds a relay
//! channel from the start, and moves to a direct path when a check through the NATs is
//! answered ([`path`]); talks to the peer over Noise XX bound to both identities ([`noise`]),
//! each message in an ordered stream that loses, duplicates and reorders nothing across path
//! switches ([`stream`]).

pub(crate) mod conn;
pub mod identity;
pub mod noise;
pub mod packet;
pub mod path;
pub mod relay;
pub(crate) mod replay;
pub mod rng;
pub mod runner;
pub(crate) mod stream;
pub(crate) mod stun;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use crate::conn::Conn;
use crate::noise::{Identity, Refused};
use crate::packet::Packet;
use crate::path::PathTimers;
use crate::relay::{Link, LinkEvent, Mapping, Timers};
use crate::rng::Rng;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Which way a message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight from the peer.
    Direct,
    /// Through the relay.
    Relay,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Direct => "direct",
            Via::Relay => "relay",
        })
    }
}

/// What the peer is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name to register.
    pub name: String,
    /// The Ed25519 identity: signs the registration and the Noise static key.
    pub key: SigningKey,
    /// Whether to register signed (Part 5). Signed by default; an open relay takes it too.
    pub signed: bool,
    /// The relay.
    pub relay: SocketAddr,
    /// A second STUN server (another relay, or another port of it), to tell the mapping type.
    pub stun2: Option<SocketAddr>,
    /// This host's own addresses (the socket's port on each interface): candidates for a peer
    /// on the same network.
    pub local: Vec<SocketAddr>,
    /// Whether a peer that asks to connect is answered (introduced and its handshake taken): at
    /// most [`MAX_HALF_OPEN`] at once until their handshakes prove them.
    pub accept: bool,
    /// The relay link's timers.
    pub timers: Timers,
    /// The direct path's timers.
    pub paths: PathTimers,
    /// The least retransmission timeout of a message.
    pub min_rto: Duration,
    /// Between two sends of a handshake message not yet answered.
    pub handshake_retry: Duration,
    /// Seeds the probe ids (not the keys, session ids or STUN transactions, which come from the
    /// OS): the same seed, the same simulated run.
    pub seed: u64,
}

impl Config {
    /// A configuration with the default timers.
    pub fn new(name: &str, key: SigningKey, relay: SocketAddr, seed: u64) -> Config {
        Config {
            name: name.to_string(),
            key,
            signed: true,
            relay,
            stun2: None,
            local: Vec::new(),
            accept: true,
            timers: Timers::default(),
            paths: PathTimers::default(),
            min_rto: Duration::from_millis(200),
            handshake_retry: Duration::from_secs(1),
            seed,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Registered (again) at the relay, which sees us at `public`.
    Registered {
        /// Our public address.
        public: SocketAddr,
    },
    /// The relay refused our registration (told once per code; it is asked again every few
    /// seconds, since a refusal may be forged and a name in use comes free when its holder goes).
    RegistrationRefused {
        /// Its error code.
        code: String,
        /// Its text, control characters replaced.
        message: String,
    },
    /// The relay does not answer.
    RelayUnreachable,
    /// Our public address changed.
    AddressChanged {
        /// The old one.
        old: SocketAddr,
        /// The new one.
        new: SocketAddr,
    },
    /// A peer asks to connect.
    ConnectRequest {
        /// Who.
        name: String,
    },
    /// The end-to-end session with a peer is open (over the relay at first); again with each
    /// new session (the peer restarted).
    Connected {
        /// The peer.
        name: String,
    },
    /// Messages to a peer now go this way.
    PathChanged {
        /// The peer.
        name: String,
        /// Which way.
        via: Via,
        /// The peer's address on the direct path.
        addr: Option<SocketAddr>,
        /// The direct path's round-trip time.
        rtt: Option<Duration>,
    },
    /// A message from a peer, in order, once.
    Message {
        /// The peer.
        from: String,
        /// Its text.
        text: Vec<u8>,
        /// Which way it came.
        via: Via,
    },
    /// A peer's key was seen for the first time and pinned (to be saved in `known_peers`).
    KeyPinned {
        /// The peer.
        name: String,
        /// Its Ed25519 public key.
        key: [u8; 32],
    },
    /// A peer showed another key than the one pinned: refused, the session not opened.
    KeyMismatch {
        /// The peer.
        name: String,
        /// The key pinned.
        pinned: [u8; 32],
        /// The key shown.
        presented: [u8; 32],
    },
    /// The relay refused a request about a peer (it is offline, or introductions are off);
    /// asked again later.
    PeerUnavailable {
        /// The peer.
        name: String,
        /// The relay's error code.
        code: String,
    },
}

/// Why a connection was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Not a name the relay takes (1-64 bytes of UTF-8, no control characters).
    InvalidName,
    /// Our own name.
    Yourself,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectError::InvalidName => {
                "not a valid name (1-64 bytes of UTF-8 without control characters)"
            }
            ConnectError::Yourself => "that is our own name",
        })
    }
}

impl std::error::Error for ConnectError {}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Not connecting to that peer: [`Peer::connect`] first.
    UnknownPeer,
    /// Its queue is full.
    Full,
    /// Longer than [`MAX_MESSAGE`].
    TooLong,
    /// Its key did not match the pinned one: nothing goes to it.
    Refused,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendError::UnknownPeer => "not connected to that peer",
            SendError::Full => "too many messages waiting",
            SendError::TooLong => "message too long",
            SendError::Refused => "the peer's key does not match the pinned one",
        })
    }
}

impl std::error::Error for SendError {}

/// The longest message: sealed, about 1,050 bytes direct or in a channel frame, about 1,450 as
/// a JSON `relay` (base64) before the channel is bound.
pub const MAX_MESSAGE: usize = 1000;

/// Most connections that peers asked for (with `accept` on) and that have not proved their peer
/// yet. Each costs requests at the relay and a handshake sent again every second, and whoever
/// forges the relay's address can name any number of peers.
pub const MAX_HALF_OPEN: usize = 16;
/// How long a connection a peer asked for has to prove its peer before it is dropped.
pub const HALF_OPEN_FOR: Duration = Duration::from_secs(30);

/// A peer's state at a glance (`/status`).
#[derive(Debug, Clone)]
pub struct Status {
    /// Registered and proven at the relay.
    pub registered: bool,
    /// Our public address.
    pub public: Option<SocketAddr>,
    /// The NAT's mapping type.
    pub mapping: Mapping,
    /// Each peer.
    pub peers: Vec<PeerStatus>,
}

/// One peer's state.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Whether the session is open.
    pub connected: bool,
    /// Which way messages go.
    pub via: Via,
    /// Its direct address, if direct.
    pub addr: Option<SocketAddr>,
    /// The round-trip time of the path in use.
    pub rtt: Option<Duration>,
    /// Messages sent and not yet acknowledged.
    pub unacked: usize,
}

/// The peer endpoint.
pub struct Peer {
    cfg: Config,
    identity: Identity,
    link: Link,
    conns: HashMap<String, Conn>,
    /// Each session id of ours, by the peer it is with.
    ids: HashMap<u32, String>,
    known: HashMap<String, [u8; 32]>,
    rng: Rng,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    refused: BTreeMap<Refused, u64>,
}

impl Peer {
    /// A peer starting at `now`, with the keys pinned so far (`known_peers`).
    pub fn new(cfg: Config, known: HashMap<String, [u8; 32]>, now: Instant) -> Peer {
        let rng = Rng::new(cfg.seed);
        let key = cfg.signed.then(|| cfg.key.clone());
        let mut link = Link::new(cfg.relay, &cfg.name, key, cfg.timers.clone(), now);
        if let Some(s) = cfg.stun2 {
            link.set_second_stun(s);
        }
        let mut p = Peer {
            identity: Identity::new(&cfg.key, &cfg.name),
            cfg,
            link,
            conns: HashMap::new(),
            ids: HashMap::new(),
            known,
            rng,
            out: VecDeque::new(),
            events: VecDeque::new(),
            refused: BTreeMap::new(),
        };
        // The registration's first datagrams go at once.
        p.pump(now);
        p
    }

    /// Connects to `name`: asks the relay for an introduction and a channel, and opens the
    /// session once both sides are there (however long the peer takes to come online).
    pub fn connect(&mut self, name: &str, now: Instant) -> Result<(), ConnectError> {
        if !relay_wire::valid_name(name) {
            return Err(ConnectError::InvalidName);
        }
        if name == self.cfg.name {
            return Err(ConnectError::Yourself);
        }
        // Ours now, if the peer asked first: kept however long it takes.
        self.conn(name, now).expires = None;
        self.pump(now);
        Ok(())
    }

    /// Closes the connection to `name`: its session, its messages not yet acknowledged, and
    /// what the relay keeps for it (watch, channel). A key refused is forgotten too, until the
    /// next connection checks it again.
    pub fn close(&mut self, name: &str) {
        if let Some(c) = self.conns.remove(name) {
            self.ids.remove(&c.id);
            self.link.forget(name);
        }
    }

    /// The connection to `name`, made if new.
    fn conn(&mut self, name: &str, now: Instant) -> &mut Conn {
        if !self.conns.contains_key(name) {
            // From the OS, not the seed: a peer restarted with the same seed must not reuse
            // its session id, which its peer would take for the session it has.
            let id = loop {
                let id = rng::unguessable_id();
                if !self.ids.contains_key(&id) {
                    break id;
                }
            };
            self.ids.insert(id, name.to_string());
            let initiator = self.cfg.name.as_str() < name;
            let mut c = Conn::new(name, id, initiator, &self.cfg);
            for a in self.candidates() {
                c.local.push(a);
            }
            self.link.connect(name, now);
            self.link.bind(name, now);
            self.link.watch(name, now);
            self.conns.insert(name.to_string(), c);
        }
        self.conns.get_mut(name).expect("just made")
    }

    /// A connection `name` asked for (its connect, or its first handshake message), unless
    /// [`MAX_HALF_OPEN`] such wait to prove their peer already; it is dropped if its peer is not
    /// proved within [`HALF_OPEN_FOR`]. Returns whether it was made.
    fn asked(&mut self, name: &str, now: Instant) -> bool {
        let waiting = self.conns.values().filter(|c| c.expires.is_some()).count();
        if waiting >= MAX_HALF_OPEN {
            return false;
        }
        let c = self.conn(name, now);
        c.expires = Some(now + HALF_OPEN_FOR);
        // It asked: it is there.
        c.seen();
        true
    }

    /// Where we may be reached directly: our public address first (an advertisement holds
    /// [`packet::MAX_CANDIDATES`]; a host with many interfaces must not crowd it out), then our
    /// interfaces.
    fn candidates(&self) -> Vec<SocketAddr> {
        let mut local = self.cfg.local.clone();
        local.sort();
        local.dedup();
        let public = self.link.public();
        public
            .into_iter()
            .chain(local.into_iter().filter(|a| Some(*a) != public))
            .collect()
    }

    /// Queues `text` to `name`, in order after what was queued before.
    pub fn send(&mut self, name: &str, text: &[u8], now: Instant) -> Result<(), SendError> {
        if text.len() > MAX_MESSAGE {
            return Err(SendError::TooLong);
        }
        let c = self.conns.get_mut(name).ok_or(SendError::UnknownPeer)?;
        c.queue(text)?;
        self.pump(now);
        Ok(())
    }

    /// Takes datagram `d` from `from` at `now`.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        if !self.link.handle(now, from, d) {
            // Not the relay's: a peer's, straight from it. Only sealed packets are taken
            // directly (handshakes go through the relay, where the name is the relay's word).
            let r = match packet::read(d) {
                Some(Packet::Transport {
                    receiver,
                    nonce,
                    sealed,
                }) => match self.ids.get(&receiver).and_then(|n| self.conns.get_mut(n)) {
                    Some(c) => c.on_transport(now, Some(from), nonce, sealed, &mut self.events),
                    None => Err(Refused::Unknown),
                },
                _ => Err(Refused::Unknown),
            };
            self.count(r);
        }
        self.pump(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Peer::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| c.timeout(&self.cfg, self.link.ready()))
            .chain(self.conns.values().filter_map(|c| c.expires))
            .chain(self.link.poll_timeout())
            .min()
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.link.handle_timeout(now);
        self.pump(now);
    }

    fn count(&mut self, r: Result<(), Refused>) {
        if let Err(why) = r {
            *self.refused.entry(why).or_default() += 1;
        }
    }

    /// The datagrams from peers refused so far, by reason.
    pub fn refused(&self) -> &BTreeMap<Refused, u64> {
        &self.refused
    }

    /// The peer's state.
    pub fn status(&self) -> Status {
        let mut peers: Vec<PeerStatus> = self.conns.values().map(Conn::status).collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            registered: self.link.ready(),
            public: self.link.public(),
            mapping: self.link.mapping(),
            peers,
        }
    }

    /// Moves everything along: the link's events, each connection's due sends, and every
    /// datagram into the queue.
    fn pump(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .conns
            .values()
            .filter(|c| c.expires.is_some_and(|t| now >= t))
            .map(|c| c.name.clone())
            .collect();
        for name in expired {
            if let Some(c) = self.conns.remove(&name) {
                self.ids.remove(&c.id);
                self.link.forget(&name);
            }
        }
        // Until quiet: a connection's poll may make the link speak (a bind, a connect).
        for _ in 0..4 {
            let mut busy = false;
            while let Some(e) = self.link.poll_event() {
                busy = true;
                self.on_link(now, e);
            }
            self.pin_keys();
            let ready = self.link.ready();
            let cands = self.candidates();
            for c in self.conns.values_mut() {
                if c.local != cands {
                    c.local.clone_from(&cands);
                    c.candidates_changed = true;
                }
                c.poll(
                    now,
                    ready,
                    &self.cfg,
                    &self.identity,
                    &mut self.rng,
                    &mut self.link,
                    &mut self.out,
                    &mut self.events,
                );
            }
            if !busy {
                break;
            }
        }
        while let Some(t) = self.link.poll_transmit() {
            self.out.push_back(t);
        }
    }

    /// Checks the keys that handshakes proved against `known_peers`.
    fn pin_keys(&mut self) {
        for c in self.conns.values_mut() {
            let Some(key) = c.proved.take() else { continue };
            match self.known.get(&c.name) {
                None => {
                    self.known.insert(c.name.clone(), key);
                    self.events.push_back(Event::KeyPinned {
                        name: c.name.clone(),
                        key,
                    });
                    c.trust();
                }
                Some(k) if *k == key => c.trust(),
                Some(k) => {
                    self.events.push_back(Event::KeyMismatch {
                        name: c.name.clone(),
                        pinned: *k,
                        presented: key,
                    });
                    c.refuse();
                }
            }
        }
    }

    fn on_link(&mut self, now: Instant, e: LinkEvent) {
        match e {
            LinkEvent::Ready { public } => self.events.push_back(Event::Registered { public }),
            LinkEvent::Refused { code, message } => self
                .events
                .push_back(Event::RegistrationRefused { code, message }),
            LinkEvent::Unreachable => self.events.push_back(Event::RelayUnreachable),
            LinkEvent::AddressChanged { old, new } => {
                self.events.push_back(Event::AddressChanged { old, new });
            }
            LinkEvent::ConnectRequest { name } => {
                if let Some(c) = self.conns.get_mut(&name) {
                    // Asked again (the relay tells the ask until both have asked, and a peer
                    // that restarted asks anew): asked back, so that the relay introduces the
                    // two, and a session the peer may have lost made again.
                    c.asked_again();
                    self.link.connect(&name, now);
                    return;
                }
                // Told as the connection is made (with `accept` off, each time the relay tells).
                if !self.cfg.accept || self.asked(&name, now) {
                    self.events.push_back(Event::ConnectRequest { name });
                }
            }
            LinkEvent::Introduced { name, address } => {
                if let Some(c) = self.conns.get_mut(&name) {
                    c.seen();
                    c.paths.add(address, now);
                }
            }
            LinkEvent::Bound { name } => {
                if let Some(c) = self.conns.get_mut(&name) {
                    c.seen();
                }
            }
            LinkEvent::Joined { name } => {
                if let Some(c) = self.conns.get_mut(&name) {
                    c.online(now);
                    // It joined anew: it may have restarted, and lost our session.
                    c.asked_again();
                }
            }
            // The relay's limits and rate limits: what they hold back is sent again.
            LinkEvent::Error { .. } => {}
            LinkEvent::Online { name } => {
                if let Some(c) = self.conns.get_mut(&name) {
                    c.online(now);
                }
            }
            LinkEvent::PeerRefused { name, code } => {
                if let Some(c) = self.conns.get_mut(&name) {
                    c.unavailable(now);
                }
                self.events.push_back(Event::PeerUnavailable { name, code });
            }
            LinkEvent::FromPeer { from, data } => {
                let Some(p) = packet::read(&data) else { return };
                let known = self.conns.contains_key(&from);
                if !(known || self.cfg.accept && self.asked(&from, now)) {
                    return;
                }
                let c = self.conns.get_mut(&from).expect("there or made above");
                c.seen();
                if let Packet::Transport {
                    receiver,
                    nonce,
                    sealed,
                } = p
                {
                    let r = if receiver == c.id {
                        c.on_transport(now, None, nonce, sealed, &mut self.events)
                    } else {
                        Err(Refused::Unknown)
                    };
                    self.count(r);
                    return;
                }
                c.on_handshake(now, p, &self.identity, &self.cfg, &mut self.link);
            }
        }
    }
}
