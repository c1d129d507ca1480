//! One peer we talk to: the Noise handshake (through the relay, roles by name order so that both
//! sides may start at once), the open session, the ordered stream, and which path each packet
//! takes: the chosen direct path first, the relay otherwise, and a retransmission by both.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::noise::{Handshake, HandshakeError, Identity, Refused, Session};
use crate::packet::{self, Frame, Packet};
use crate::path::{Paths, Switch};
use crate::relay::Link;
use crate::rng::Rng;
use crate::stream::Stream;
use crate::{Config, Event, PeerStatus, SendError, Transmit, Via};

/// After the relay said a peer is unavailable, when to ask again.
const OFFLINE_RETRY: Duration = Duration::from_secs(2);
/// Handshakes a responder keeps answered at once: a first message forged in the peer's name
/// (anyone can write the relay's address as a source) must not push the peer's own out, or the
/// peer, whose session opened on our answer, would talk to a responder that has none.
const ANSWERED: usize = 4;
/// How often a responder sends an answer again unasked (for a third message lost; the
/// initiator's own resends are answered each): an answer to a forged first message is not sent
/// for ever.
const ANSWER_RESENDS: u32 = 5;

/// Where one packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Relay,
    Direct(SocketAddr),
}

/// A handshake under way, and what to send again until it is answered.
struct Pending {
    hs: Handshake,
    /// The peer's session id (0 until its first message).
    peer_id: u32,
    /// The last message sent, whole.
    last: Vec<u8>,
    /// The first message a responder answered (its Noise bytes): a new handshake may come under
    /// the same session id (ours started over), a repeat comes with the same bytes.
    first: Vec<u8>,
    next: Instant,
    /// How often it was sent again.
    resends: u32,
}

/// The connection to one peer.
pub struct Conn {
    /// The peer's name.
    pub name: String,
    /// Our session id with it.
    pub id: u32,
    initiator: bool,
    /// The initiator's handshake under way; a responder's answered ones, newest last.
    pending: Vec<Pending>,
    session: Option<Session>,
    /// The initiator's last handshake message, for a responder that did not get it.
    last_sent: Option<Vec<u8>>,
    /// The key the handshake proved, for the endpoint to check against `known_peers`.
    pub proved: Option<[u8; 32]>,
    trusted: bool,
    just_trusted: bool,
    refused: bool,
    stream: Stream,
    /// The direct path.
    pub paths: Paths,
    /// Our candidates as last advertised.
    pub local: Vec<SocketAddr>,
    /// Whether to advertise them again.
    pub candidates_changed: bool,
    /// When a connection the peer asked for is dropped unless the handshake proved the peer by
    /// then; `None` for ours, and once proved.
    pub expires: Option<Instant>,
    ack_due: Option<Route>,
    /// Whether to handshake anew while the session is open (the peer may have lost it).
    rekey: bool,
    /// Answers to probes, sent at the next poll.
    probe_acks: Vec<Transmit>,
    /// Whether the relay showed the peer there (it joined, asked, was introduced, bound or
    /// sent): only then does a first handshake message go through the relay, whose refusal of
    /// a `relay` to an absent name would be taken for another request's.
    seen: bool,
    /// Whether the relay link was ready at the last poll: sends through the relay wait for it,
    /// the direct path does not.
    relay_ready: bool,
    retry_at: Option<Instant>,
}

impl Conn {
    /// A connection to `name` with our session id `id`.
    pub fn new(name: &str, id: u32, initiator: bool, cfg: &Config) -> Conn {
        Conn {
            name: name.to_string(),
            id,
            initiator,
            pending: Vec::new(),
            session: None,
            last_sent: None,
            proved: None,
            trusted: false,
            just_trusted: false,
            refused: false,
            stream: Stream::default(),
            paths: Paths::new(
                cfg.paths.clone(),
                cfg.stun2.into_iter().chain([cfg.relay]).collect(),
                cfg.local.iter().any(|a| a.ip().is_loopback()),
            ),
            local: Vec::new(),
            candidates_changed: false,
            expires: None,
            ack_due: None,
            rekey: false,
            probe_acks: Vec::new(),
            seen: false,
            relay_ready: false,
            retry_at: None,
        }
    }

    /// Queues a message.
    pub fn queue(&mut self, text: &[u8]) -> Result<(), SendError> {
        if self.refused {
            return Err(SendError::Refused);
        }
        if self.stream.push(text.to_vec()) {
            Ok(())
        } else {
            Err(SendError::Full)
        }
    }

    /// The key checked out: the session carries messages.
    pub fn trust(&mut self) {
        self.expires = None;
        self.trusted = true;
        self.just_trusted = true;
    }

    /// The key did not match: nothing more to or from this peer.
    pub fn refuse(&mut self) {
        self.refused = true;
        self.session = None;
        self.pending.clear();
        self.stream = Stream::default();
    }

    /// The relay said the peer is not there: ask again later.
    pub fn unavailable(&mut self, now: Instant) {
        self.retry_at = Some(now + OFFLINE_RETRY);
    }

    /// The relay says the peer is online: if we were waiting for it, ask at once.
    pub fn online(&mut self, now: Instant) {
        self.seen();
        if self.retry_at.is_some() {
            self.retry_at = Some(now);
        }
        for p in &mut self.pending {
            p.next = now;
        }
    }

    /// The relay showed the peer there.
    pub fn seen(&mut self) {
        self.seen = true;
    }

    /// The peer asks to connect again, or joined again, while we hold a session: it may have
    /// restarted, and lost it. The initiator handshakes anew (the session carries on until the
    /// new one opens; a peer that kept its session ignores a first message from the session it
    /// has, so a forged ask costs a few datagrams and nothing else). The responder waits:
    /// handshakes are the initiator's to start.
    pub fn asked_again(&mut self) {
        self.rekey = self.initiator && self.session.is_some();
    }

    /// The state to show.
    pub fn status(&self) -> PeerStatus {
        let direct = self.paths.direct();
        PeerStatus {
            name: self.name.clone(),
            connected: self.trusted && self.session.is_some(),
            via: if direct.is_some() {
                Via::Direct
            } else {
                Via::Relay
            },
            addr: direct,
            rtt: self.paths.rtt(),
            unacked: self.stream.pending(),
        }
    }

    /// Whether handshake message `p` may go again unasked: the initiator's until a session
    /// opens, a responder's answer a few times (a forged first message's is not sent for ever).
    fn resend(&self, p: &Pending) -> bool {
        (self.initiator && self.session.is_none()) || p.resends < ANSWER_RESENDS
    }

    /// When [`Conn::poll`] next has work: handshakes and requests wait for the relay link to be
    /// `ready` (its own timers run meanwhile), the session's stream and direct path do not.
    pub fn timeout(&self, cfg: &Config, ready: bool) -> Option<Instant> {
        if self.refused {
            return None;
        }
        [
            self.pending
                .iter()
                .filter(|p| ready && self.resend(p))
                .map(|p| p.next)
                .min(),
            self.retry_at.filter(|_| ready),
            self.trusted
                .then(|| self.stream.timeout(cfg.min_rto))
                .flatten(),
            self.trusted.then(|| self.paths.timeout()).flatten(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn send(&mut self, frame: &Frame<'_>, route: Route, link: &mut Link, out: &mut Vec<Transmit>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut plain = Vec::new();
        frame.write(&mut plain);
        let mut d = Vec::with_capacity(plain.len() + 32);
        s.seal(&plain, &mut d);
        match route {
            // Not registered there now: lost, and the stream sends it again.
            Route::Relay if !self.relay_ready => {}
            Route::Relay => link.send_to_peer(&self.name, &d),
            Route::Direct(a) => out.push(Transmit { to: a, bytes: d }),
        }
    }

    /// Does what is due: handshake messages, path checks, messages, acknowledgements.
    #[allow(clippy::too_many_arguments)]
    pub fn poll(
        &mut self,
        now: Instant,
        ready: bool,
        cfg: &Config,
        id: &Identity,
        rng: &mut Rng,
        link: &mut Link,
        out: &mut std::collections::VecDeque<Transmit>,
        events: &mut std::collections::VecDeque<Event>,
    ) {
        out.extend(self.probe_acks.drain(..));
        self.relay_ready = ready;
        if self.refused {
            return;
        }
        if ready {
            self.poll_handshake(now, cfg, id, link);
        }
        if !self.trusted || self.session.is_none() {
            return;
        }
        let mut direct_out = Vec::new();
        if self.just_trusted {
            self.just_trusted = false;
            self.candidates_changed = true;
            self.paths.activate(now);
            events.push_back(Event::Connected {
                name: self.name.clone(),
            });
        }
        if let Some(Switch::Relay) = self.paths.expire(now) {
            events.push_back(Event::PathChanged {
                name: self.name.clone(),
                via: Via::Relay,
                addr: None,
                rtt: None,
            });
        }
        if self.candidates_changed && ready {
            self.candidates_changed = false;
            let list = Frame::Candidates(self.local.clone());
            self.send(&list, Route::Relay, link, &mut direct_out);
        }
        for (addr, pid) in self.paths.due(now, || rng.u64()) {
            self.send(
                &Frame::Probe { id: pid },
                Route::Direct(addr),
                link,
                &mut direct_out,
            );
        }
        let direct = self.paths.direct();
        let due: Vec<(u64, Vec<u8>, bool)> = self
            .stream
            .due(now, cfg.min_rto)
            .into_iter()
            .map(|d| (d.seq, d.text.to_vec(), d.again))
            .collect();
        for (seq, text, again) in due {
            let f = Frame::Data { seq, text: &text };
            match (direct, again) {
                (Some(a), false) => self.send(&f, Route::Direct(a), link, &mut direct_out),
                (Some(a), true) => {
                    // A retransmission goes both ways: the direct path may have just died.
                    self.send(&f, Route::Direct(a), link, &mut direct_out);
                    self.send(&f, Route::Relay, link, &mut direct_out);
                }
                (None, _) => self.send(&f, Route::Relay, link, &mut direct_out),
            }
        }
        if let Some(r) = self.ack_due.take() {
            let next = self.stream.ack();
            self.send(&Frame::Ack { next }, r, link, &mut direct_out);
        }
        out.extend(direct_out);
    }

    /// The handshake's part of a poll, with the relay link ready: requests asked again, a
    /// handshake started, messages sent again.
    fn poll_handshake(&mut self, now: Instant, cfg: &Config, id: &Identity, link: &mut Link) {
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            link.connect(&self.name, now);
            link.bind(&self.name, now);
        }
        // A new handshake over an open session that is not answered: the peer kept its session
        // (the ask was not its own), and ours carries on.
        if self.initiator && self.session.is_some() {
            self.pending.retain(|p| p.resends < ANSWER_RESENDS);
        }
        let can_reach = self.seen || link.channel(&self.name).is_some();
        if self.initiator
            && can_reach
            && (self.session.is_none() || std::mem::take(&mut self.rekey))
            && self.pending.is_empty()
        {
            let mut hs = Handshake::new(id, &cfg.name, &self.name, true);
            let mut d = Vec::new();
            packet::handshake(&mut d, 1, self.id, 0);
            hs.write(id, &mut d);
            self.pending.push(Pending {
                hs,
                peer_id: 0,
                last: d,
                first: Vec::new(),
                next: now,
                resends: 0,
            });
        }
        let initiating = self.initiator && self.session.is_none();
        for p in &mut self.pending {
            if now >= p.next && (initiating || p.resends < ANSWER_RESENDS) {
                p.next = now + cfg.handshake_retry;
                p.resends += 1;
                link.send_to_peer(&self.name, &p.last);
            }
        }
    }

    /// A handshake message from the peer, through the relay.
    pub fn on_handshake(
        &mut self,
        now: Instant,
        p: Packet<'_>,
        id: &Identity,
        cfg: &Config,
        link: &mut Link,
    ) {
        let Packet::Handshake {
            step,
            sender,
            receiver,
            noise,
        } = p
        else {
            return;
        };
        if self.refused || sender == 0 {
            return;
        }
        match (step, self.initiator) {
            (1, false) => {
                if let Some(p) = self
                    .pending
                    .iter()
                    .find(|p| p.peer_id == sender && p.first == noise)
                {
                    // Our answer was lost: again.
                    link.send_to_peer(&self.name, &p.last);
                    return;
                }
                if self.session.as_ref().is_some_and(|s| s.peer_id == sender) {
                    return;
                }
                // A new handshake (the first, or the peer restarted).
                let mut hs = Handshake::new(id, &cfg.name, &self.name, false);
                if hs.read(noise).is_err() {
                    return;
                }
                let mut d = Vec::new();
                packet::handshake(&mut d, 2, self.id, sender);
                hs.write(id, &mut d);
                link.send_to_peer(&self.name, &d);
                if self.pending.len() >= ANSWERED {
                    self.pending.remove(0);
                }
                self.pending.push(Pending {
                    hs,
                    peer_id: sender,
                    last: d,
                    first: noise.to_vec(),
                    next: now + cfg.handshake_retry,
                    resends: 0,
                });
            }
            (2, true) if receiver == self.id => {
                if let Some(mut p) = self.pending.pop() {
                    match p.hs.read(noise) {
                        Ok(Some(key)) => {
                            let mut d = Vec::new();
                            packet::handshake(&mut d, 3, self.id, sender);
                            p.hs.write(id, &mut d);
                            link.send_to_peer(&self.name, &d);
                            self.last_sent = Some(d);
                            self.open(p.hs.into_session(sender), key);
                            return;
                        }
                        // Not for this handshake (forged, or a repeat of the answer that opened
                        // the session): it goes on as it was.
                        Err(HandshakeError::Noise) => self.pending.push(p),
                        // Read, but proving no one, or someone else: whoever saw our first
                        // message answered it. The handshake is spent (Noise moved on); the
                        // next poll starts another, which the peer answers too.
                        _ => return,
                    }
                }
                // A repeat of the answer that opened our session: our third message was lost.
                if let Some(s) = &self.session
                    && s.peer_id == sender
                    && let Some(last) = &self.last_sent
                {
                    link.send_to_peer(&self.name, last);
                }
            }
            (3, false) if receiver == self.id => {
                // The handshake it finishes: only that one's keys open it.
                let opened = self
                    .pending
                    .iter_mut()
                    .enumerate()
                    .rev()
                    .filter(|(_, p)| p.peer_id == sender)
                    .find_map(|(i, p)| match p.hs.read(noise) {
                        Ok(Some(key)) if p.hs.finished() => Some((i, key)),
                        _ => None,
                    });
                if let Some((i, key)) = opened {
                    let p = self.pending.remove(i);
                    // The others were answers to first messages never finished: stale, or forged.
                    self.pending.clear();
                    self.open(p.hs.into_session(sender), key);
                }
            }
            _ => {}
        }
    }

    /// A handshake finished: a new session (a peer that restarted starts its stream anew; what
    /// we had not got acknowledged goes again on it).
    fn open(&mut self, session: Session, key: [u8; 32]) {
        let replaced = self.session.replace(session).is_some();
        if replaced {
            let unacked = self.stream.take_unacked();
            self.stream = Stream::default();
            for m in unacked {
                self.stream.push(m);
            }
        }
        self.proved = Some(key);
        self.trusted = false;
    }

    /// A sealed packet, from `from` directly or (`None`) through the relay.
    pub fn on_transport(
        &mut self,
        now: Instant,
        from: Option<SocketAddr>,
        nonce: u64,
        sealed: &[u8],
        events: &mut std::collections::VecDeque<Event>,
    ) -> Result<(), Refused> {
        let s = match self.session.as_mut() {
            Some(s) if self.trusted => s,
            _ => return Err(Refused::Unknown),
        };
        let plain = s.open(nonce, sealed)?;
        let frame = Frame::read(&plain).ok_or(Refused::Malformed)?;
        let (via, route) = match from {
            Some(a) => {
                if self.paths.knows(a) {
                    self.paths.heard(a, now);
                } else {
                    // An authentic packet from an address we did not know: the peer as its
                    // NAT maps it towards us (peer-reflexive), or after it moved. Checked.
                    self.paths.add(a, now);
                }
                (Via::Direct, Route::Direct(a))
            }
            None => (Via::Relay, Route::Relay),
        };
        match frame {
            Frame::Data { seq, text } => {
                for (text, via) in self.stream.received(seq, text, via) {
                    events.push_back(Event::Message {
                        from: self.name.clone(),
                        text,
                        via,
                    });
                }
                self.ack_due = Some(route);
            }
            Frame::Ack { next } => self.stream.acked(next, now),
            Frame::Probe { id } => {
                // Answered where it came from, at once.
                let mut out = Vec::new();
                let mut plain = Vec::new();
                Frame::ProbeAck { id }.write(&mut plain);
                if let (Some(s), Route::Direct(a)) = (self.session.as_mut(), route) {
                    let mut d = Vec::new();
                    s.seal(&plain, &mut d);
                    out.push(Transmit { to: a, bytes: d });
                }
                self.probe_acks.extend(out);
            }
            Frame::ProbeAck { id, .. } => {
                if let Some(a) = from
                    && let Some(Switch::Direct(addr, rtt)) = self.paths.answered(a, id, now)
                {
                    events.push_back(Event::PathChanged {
                        name: self.name.clone(),
                        via: Via::Direct,
                        addr: Some(addr),
                        rtt: Some(rtt),
                    });
                }
            }
            Frame::Candidates(list) => {
                for a in list {
                    self.paths.add(a, now);
                }
            }
        }
        Ok(())
    }
}
