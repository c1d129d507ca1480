//! The link to the relay, sans-IO: registration (open, or signed with the relay's challenge,
//! Part 5), the session token shown back, keepalives at a third of the relay's timeout,
//! re-registration when the relay forgot us (a restart) or our address changed, STUN to the
//! relay (and a second server) for the public address and the NAT's mapping type, and the
//! requests that act on the registration: `connect` (introductions) and `bind` (channels).
//! It carries peer packets over the relay too: in a channel frame once bound, in a JSON `relay`
//! (base64) before. `loadtest` registers and binds its virtual peers with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use relay_wire::read;
use relay_wire::{Family, classify, frame, peer, valid_name};

mod answers;

use crate::Transmit;
pub use crate::stun::Mapping;
use crate::stun::Stun;

/// What a registration request is padded to, so that the relay answers it in full (3× its
/// size pays for the full `register_ack` or the `challenge`).
const PAD: usize = 240;

/// The link's timers.
#[derive(Debug, Clone)]
pub struct Timers {
    /// The relay's peer timeout (its `--peer-timeout`): keepalives go at a third of it.
    pub relay_timeout: Duration,
    /// The first wait for an answer before a request is sent again (doubled each time, to 8×).
    pub retry: Duration,
    /// Silence of the relay after which it is reported unreachable.
    pub unreachable: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            relay_timeout: Duration::from_secs(60),
            retry: Duration::from_millis(500),
            unreachable: Duration::from_secs(5),
        }
    }
}

/// What the link tells the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Registered and proven: requests and channels work now. Again after a re-registration.
    Ready {
        /// The public address the relay sees.
        public: SocketAddr,
    },
    /// The relay refused the registration (`name_in_use`, `bad_signature`, …): told once per
    /// code. The link tries again every few seconds: a refusal may be forged (nothing
    /// authenticates a datagram from the relay's address), and a name in use comes free when its
    /// holder goes.
    Refused {
        /// The relay's error code.
        code: String,
        /// Its text, control characters replaced.
        message: String,
    },
    /// The relay has not answered for a while (reported once per silence).
    Unreachable,
    /// Our public address changed (the NAT rebound us, or the network changed).
    AddressChanged {
        /// The old one.
        old: SocketAddr,
        /// The new one.
        new: SocketAddr,
    },
    /// A peer packet arrived over the relay from `from`.
    FromPeer {
        /// The sender's registered name.
        from: String,
        /// The packet.
        data: Vec<u8>,
    },
    /// The relay introduced `name` at `address` (both asked).
    Introduced {
        /// The peer.
        name: String,
        /// Its public address.
        address: SocketAddr,
    },
    /// `name`, watched, joined (again: it may have restarted).
    Joined {
        /// The peer.
        name: String,
    },
    /// `name`, watched, is online (the watch's answer).
    Online {
        /// The peer.
        name: String,
    },
    /// An error of the relay's that the link has nothing to do about (`rate_limited`, a limit).
    Error {
        /// Its code, control characters shown as `?`.
        code: String,
    },
    /// `name` asks to be introduced.
    ConnectRequest {
        /// Who asks.
        name: String,
    },
    /// A channel to `name` is bound (or bound again).
    Bound {
        /// The peer.
        name: String,
    },
    /// A request about `name` was refused: it is not online (`unknown_target`), or introductions
    /// are off.
    PeerRefused {
        /// The peer.
        name: String,
        /// The relay's error code.
        code: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Sending `register` (or the key, for a challenge).
    Registering,
    /// The challenge answered, waiting for the ack.
    Signed { cookie: String },
    /// Acked: showing the session back until the relay answers.
    Proving,
    /// Registered and proven.
    Ready,
}

/// A request sent until answered.
#[derive(Debug, Clone)]
struct Pending {
    next: Instant,
    tries: u32,
}

impl Pending {
    /// Due at `now`, not tried yet.
    fn at(now: Instant) -> Pending {
        Pending {
            next: now,
            tries: 0,
        }
    }
}

/// The link to one relay, for one name.
pub struct Link {
    /// The relay.
    pub relay: SocketAddr,
    name: String,
    key: Option<SigningKey>,
    timers: Timers,
    state: State,
    session: Option<String>,
    public: Option<SocketAddr>,
    stun: Stun,
    /// When the registration request (or the proof) goes again.
    retry: Pending,
    next_keepalive: Option<Instant>,
    /// Keepalives sent since the last answer.
    unanswered: u32,
    last_heard: Option<Instant>,
    since: Instant,
    told_unreachable: bool,
    /// The refusal last told, until registered.
    told_refused: Option<String>,
    /// Peers asked for (`connect`), until introduced.
    connects: BTreeMap<String, Pending>,
    /// Channels asked for (`bind`), until acknowledged; then their numbers.
    binds: BTreeMap<String, Pending>,
    /// Peers watched (to hear when they come online), and the watches not yet acknowledged.
    watched: BTreeSet<String>,
    watches: BTreeMap<String, Pending>,
    channels: HashMap<u32, String>,
    channel_of: HashMap<String, u32>,
    out: VecDeque<Transmit>,
    events: VecDeque<LinkEvent>,
}

impl Link {
    /// A link registering `name` at `relay`, signed with `key` if given; it starts at `now`.
    pub fn new(
        relay: SocketAddr,
        name: &str,
        key: Option<SigningKey>,
        timers: Timers,
        now: Instant,
    ) -> Link {
        let mut l = Link {
            relay,
            name: name.to_string(),
            key,
            timers,
            state: State::Registering,
            session: None,
            public: None,
            stun: Stun::default(),
            retry: Pending::at(now),
            next_keepalive: None,
            unanswered: 0,
            last_heard: None,
            since: now,
            told_unreachable: false,
            told_refused: None,
            connects: BTreeMap::new(),
            binds: BTreeMap::new(),
            watched: BTreeSet::new(),
            watches: BTreeMap::new(),
            channels: HashMap::new(),
            channel_of: HashMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        l.ask_stun(relay);
        l.handle_timeout(now);
        l
    }

    /// Also asks `server` (a second relay, or another port) over STUN, to tell the mapping type.
    pub fn set_second_stun(&mut self, server: SocketAddr) {
        self.stun.set_second(server);
        self.ask_stun(server);
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current session token, once registered.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Whether registered and proven.
    pub fn ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The public address the relay sees.
    pub fn public(&self) -> Option<SocketAddr> {
        self.public
    }

    /// The mapping type, from STUN to the relay and the second server.
    pub fn mapping(&self) -> Mapping {
        self.stun.mapping(self.public)
    }

    /// The channel bound to `peer`: the number this side sends under.
    pub fn channel(&self, peer: &str) -> Option<u32> {
        self.channel_of.get(peer).copied()
    }

    fn send(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        self.out.push_back(Transmit { to, bytes });
    }

    fn ask_stun(&mut self, server: SocketAddr) {
        let d = self.stun.request(server);
        self.send(server, d);
    }

    /// Asks to be introduced to `peer` (until it asks too, or the relay refuses).
    pub fn connect(&mut self, peer: &str, now: Instant) {
        self.connects.insert(peer.to_string(), Pending::at(now));
        self.handle_timeout(now);
    }

    /// Binds a channel to `peer` (sent until acknowledged).
    pub fn bind(&mut self, peer: &str, now: Instant) {
        if !self.channel_of.contains_key(peer) {
            self.binds.insert(peer.to_string(), Pending::at(now));
            self.handle_timeout(now);
        }
    }

    /// Watches `peer` (Part 2): told when it comes online, however large the relay.
    pub fn watch(&mut self, peer: &str, now: Instant) {
        if self.watched.insert(peer.to_string()) {
            self.watches.insert(peer.to_string(), Pending::at(now));
            self.handle_timeout(now);
        }
    }

    /// Forgets `peer`: no more requests about it, its channel's frames no longer taken, and the
    /// relay told (a peer's watches and channels there are bounded).
    pub fn forget(&mut self, peer: &str) {
        self.connects.remove(peer);
        self.binds.remove(peer);
        self.watches.remove(peer);
        let watched = self.watched.remove(peer);
        let channel = self.channel_of.remove(peer);
        if let Some(c) = channel {
            self.channels.remove(&c);
        }
        let Some(session) = self.session.clone().filter(|_| self.ready()) else {
            return;
        };
        if watched {
            let mut d = Vec::new();
            peer::unwatch(&mut d, [peer], Some(&self.name), &session);
            self.send(self.relay, d);
        }
        if let Some(c) = channel {
            let mut d = Vec::new();
            peer::unbind(&mut d, c, &self.name, &session);
            self.send(self.relay, d);
        }
    }

    /// Sends peer packet `data` to `peer` over the relay: in its channel, or a JSON `relay`.
    pub fn send_to_peer(&mut self, peer: &str, data: &[u8]) {
        let mut d = Vec::with_capacity(data.len() + 64);
        if let Some(&c) = self.channel_of.get(peer) {
            frame::write(&mut d, c, data);
        } else {
            let mut payload = Vec::with_capacity(data.len() * 4 / 3 + 8);
            payload.push(b'"');
            payload.extend_from_slice(B64.encode(data).as_bytes());
            payload.push(b'"');
            peer::relay(&mut d, &self.name, peer, &payload);
        }
        self.send(self.relay, d);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// When [`Link::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = match self.state {
            State::Ready => self.next_keepalive,
            _ => Some(self.retry.next),
        };
        if self.state == State::Ready {
            for p in self
                .connects
                .values()
                .chain(self.binds.values())
                .chain(self.watches.values())
            {
                t = Some(t.map_or(p.next, |t| t.min(p.next)));
            }
        }
        if !self.told_unreachable && self.awaiting() {
            let silent = self.last_heard.unwrap_or(self.since) + self.timers.unreachable;
            t = Some(t.map_or(silent, |t| t.min(silent)));
        }
        t
    }

    /// Whether an answer of the relay is awaited.
    fn awaiting(&self) -> bool {
        match self.state {
            State::Ready => self.unanswered > 1,
            _ => true,
        }
    }

    fn backoff(&self, tries: u32) -> Duration {
        self.timers.retry * (1 << tries.min(3))
    }

    fn register(&mut self) {
        let mut d = Vec::new();
        match (&self.key, &self.state) {
            (Some(k), State::Signed { cookie }) => {
                let mut msg = Vec::new();
                peer::signed_payload(&mut msg, &self.name, cookie);
                let sig = B64.encode(k.sign(&msg).to_bytes());
                let pk = B64.encode(k.verifying_key().to_bytes());
                peer::register_signed(&mut d, &self.name, &pk, cookie, &sig);
            }
            (Some(k), _) => {
                let pk = B64.encode(k.verifying_key().to_bytes());
                peer::register_key(&mut d, &self.name, &pk);
            }
            (None, _) => peer::register(&mut d, &self.name, self.session.as_deref()),
        }
        peer::pad(&mut d, PAD);
        self.send(self.relay, d);
    }

    fn prove(&mut self) {
        let mut d = Vec::new();
        peer::ping(&mut d, Some(&self.name), self.session.as_deref());
        self.send(self.relay, d);
    }

    /// Registers from scratch: the relay forgot us, or (signed) our address changed.
    fn reregister(&mut self, now: Instant) {
        self.state = State::Registering;
        self.retry = Pending::at(now);
        self.forgotten(now);
        self.handle_timeout(now);
    }

    /// The relay forgot our registration (channels die with it): channels and watches are asked
    /// for again once ready.
    fn forgotten(&mut self, now: Instant) {
        self.channels.clear();
        let again = Pending::at(now);
        for p in std::mem::take(&mut self.channel_of).into_keys() {
            self.binds.insert(p, again.clone());
        }
        for p in &self.watched {
            self.watches.insert(p.clone(), again.clone());
        }
    }

    /// Does what is due at `now`: requests sent again, keepalives, silence reported.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Silence counts while an answer is awaited: a registration, or keepalives (a peer on a
        // direct path hears the relay only every keepalive interval).
        if !self.told_unreachable
            && self.awaiting()
            && now >= self.last_heard.unwrap_or(self.since) + self.timers.unreachable
        {
            self.told_unreachable = true;
            self.events.push_back(LinkEvent::Unreachable);
        }
        match self.state {
            State::Registering | State::Signed { .. } | State::Proving => {
                if now >= self.retry.next {
                    if self.state == State::Proving {
                        self.prove();
                    } else {
                        self.register();
                    }
                    self.retry.next = now + self.backoff(self.retry.tries);
                    self.retry.tries += 1;
                    // Many tries unanswered: a challenge may have gone stale; ask again.
                    if self.retry.tries > 4 && matches!(self.state, State::Signed { .. }) {
                        self.state = State::Registering;
                    }
                }
            }
            State::Ready => {
                if self.next_keepalive.is_some_and(|t| now >= t) {
                    if self.unanswered >= 2 {
                        // Two keepalives unanswered: the relay may have restarted without
                        // our registration; register again (a keepalive would re-register
                        // an open name, but not a signed one).
                        self.unanswered = 0;
                        self.reregister(now);
                        return;
                    }
                    let mut d = Vec::new();
                    peer::keepalive(&mut d, &self.name, self.session.as_deref());
                    self.send(self.relay, d);
                    self.ask_stun(self.relay);
                    self.unanswered += 1;
                    self.next_keepalive = Some(now + self.keepalive_every());
                }
                let session = self.session.clone().unwrap_or_default();
                for (kind, map) in [
                    ("connect", &mut self.connects),
                    ("bind", &mut self.binds),
                    ("watch", &mut self.watches),
                ] {
                    for (p, pending) in map.iter_mut() {
                        if now < pending.next {
                            continue;
                        }
                        let mut d = Vec::new();
                        match kind {
                            "connect" => peer::connect(&mut d, p, Some(&self.name), &session),
                            "bind" => peer::bind(&mut d, p, &self.name, &session),
                            _ => peer::watch(&mut d, [p.as_str()], Some(&self.name), &session),
                        }
                        self.out.push_back(Transmit {
                            to: self.relay,
                            bytes: d,
                        });
                        pending.next = now + self.timers.retry * (1 << pending.tries.min(3));
                        pending.tries += 1;
                    }
                }
            }
        }
    }

    fn keepalive_every(&self) -> Duration {
        self.timers.relay_timeout / 3
    }

    /// Takes datagram `d` from `from` if it is the relay's (or the second STUN server's);
    /// returns `false` for anything else (a peer's packet).
    pub fn handle(&mut self, now: Instant, from: SocketAddr, d: &[u8]) -> bool {
        if from != self.relay && Some(from) != self.stun.second() {
            return false;
        }
        match classify(d) {
            Family::Stun => self.on_stun(now, from, d),
            Family::Channel => {
                if from == self.relay
                    && let Ok(c) = frame::channel(d)
                    && let Some(name) = self.channels.get(&c).cloned()
                {
                    self.heard(now);
                    self.events.push_back(LinkEvent::FromPeer {
                        from: name,
                        data: d[frame::HEADER..].to_vec(),
                    });
                }
            }
            Family::Json if from == self.relay => {
                if let Ok(m) = read::message(d) {
                    self.on_message(now, m);
                }
            }
            _ => {}
        }
        true
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
        self.told_unreachable = false;
    }

    fn on_stun(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        let Some(mapped) = self.stun.answer(from, d) else {
            return;
        };
        self.heard(now);
        if from == self.relay {
            // The relay answers: a keepalive's ack, paid from a budget it may lack under load,
            // is not needed to tell it is there.
            self.unanswered = 0;
            self.seen_public(now, mapped);
        }
    }

    /// The relay saw us at `mapped` (STUN or an ack): a change is a rebinding.
    fn seen_public(&mut self, now: Instant, mapped: SocketAddr) {
        match self.public.replace(mapped) {
            Some(old) if old != mapped => {
                self.events
                    .push_back(LinkEvent::AddressChanged { old, new: mapped });
                if let Some(s2) = self.stun.second() {
                    self.ask_stun(s2);
                }
                if self.key.is_some() {
                    // A signed name moves by signing a fresh challenge from the new address.
                    self.reregister(now);
                } else if self.state == State::Ready {
                    // An open one moves with its session.
                    let mut d = Vec::new();
                    peer::keepalive(&mut d, &self.name, self.session.as_deref());
                    self.send(self.relay, d);
                }
            }
            _ => {}
        }
    }
}
