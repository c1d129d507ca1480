//! The peer under attack, in the simulated network (`sim`): an off-path forger of the relay's
//! address (UDP sources are free to write), a registered peer that completes the handshake and
//! then abuses the session (its own client, built from the crate's public parts), and inputs
//! nobody meant to send. Each test names what an attacker tries and asserts what must hold.

mod sim;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use sim::{Links, NatKind, Sim, fast, ms, pair};
use udp_peer::noise::{Handshake, Identity, Session};
use udp_peer::packet::{self, Frame, Packet};
use udp_peer::relay::{Link, LinkEvent, Timers};
use udp_peer::{Event, Peer};

/// Fast path timers, as the simulated tests use.
fn public(s: &Sim, h: usize) -> SocketAddr {
    s.hosts[h].peer.status().public.expect("registered")
}

/// A datagram "from the relay", forged by anyone who knows the victim's public address.
fn forge(s: &mut Sim, to: SocketAddr, json: &str) {
    let relay = s.relay_addr;
    s.inject(relay, to, json.as_bytes().to_vec());
}

fn relayed_packet(from: &str, packet: &[u8]) -> String {
    format!(
        r#"{{"type":"relayed_packet","from_peer":"{from}","via_relay":true,"payload":"{}"}}"#,
        B64.encode(packet)
    )
}

/// A first handshake message as `me` would send it to `peer`, under session id `sender`.
fn first_message(me: &str, peer: &str, sender: u32) -> Vec<u8> {
    let id = Identity::new(&SigningKey::from_bytes(&[99; 32]), me);
    let mut hs = Handshake::new(&id, me, peer, true);
    let mut d = Vec::new();
    packet::handshake(&mut d, 1, sender, 0);
    hs.write(&id, &mut d);
    d
}

/// The peer packet inside a datagram to or from the relay: a channel frame's payload, or a JSON
/// `relay` or `relayed_packet`'s base64 payload.
fn peer_packet(d: &[u8]) -> Option<Vec<u8>> {
    if d.first() == Some(&0xD1) {
        return d.get(6..).map(<[u8]>::to_vec);
    }
    let text = std::str::from_utf8(d).ok()?;
    let start = text.find(r#""payload":""#)? + r#""payload":""#.len();
    let len = text[start..].find('"')?;
    B64.decode(&text[start..start + len]).ok()
}

/// Everything the network delivered (from, to, bytes), as the tap saw it, and what was for an
/// attacker's own host.
#[derive(Default)]
struct Wire {
    seen: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    inbox: Vec<(SocketAddr, Vec<u8>)>,
}

impl Wire {
    /// Datagrams delivered to `to`.
    fn to(&self, to: SocketAddr) -> usize {
        self.seen.iter().filter(|(_, t, _)| *t == to).count()
    }
}

fn tap(s: &mut Sim, attacker: Option<SocketAddr>) -> Rc<RefCell<Wire>> {
    let wire = Rc::new(RefCell::new(Wire::default()));
    let w = wire.clone();
    s.tap = Some(Box::new(move |from, to, d: &[u8]| {
        let mut w = w.borrow_mut();
        w.seen.push((from, to, d.to_vec()));
        if Some(to) == attacker {
            w.inbox.push((from, d.to_vec()));
        }
        Vec::new()
    }));
    wire
}

/// A registered peer with a client of its own: it registers signed, asks to connect to alice,
/// completes the Noise handshake (as the responder: "alice" sorts first) with its own key, and
/// then sends whatever frames it likes, sealed, over the relay or straight from any source
/// address it writes.
struct Mallory {
    name: String,
    addr: SocketAddr,
    link: Link,
    id: Identity,
    my_id: u32,
    hs: Option<(Handshake, u32)>,
    session: Option<Session>,
    wire: Rc<RefCell<Wire>>,
    /// Bytes it sent in all (UDP payloads).
    sent: usize,
}

impl Mallory {
    fn new(s: &mut Sim, name: &str, addr: SocketAddr) -> Mallory {
        let key = SigningKey::from_bytes(&[66; 32]);
        let now = s.at();
        let mut link = Link::new(
            s.relay_addr,
            name,
            Some(key.clone()),
            Timers::default(),
            now,
        );
        link.connect("alice", now);
        link.bind("alice", now);
        let wire = tap(s, Some(addr));
        Mallory {
            name: name.to_string(),
            addr,
            link,
            id: Identity::new(&key, name),
            my_id: 0x4d41_4c4c,
            hs: None,
            session: None,
            wire,
            sent: 0,
        }
    }

    /// Runs the network to `until`, taking mallory's turn every 10 ms.
    fn run(&mut self, s: &mut Sim, until: Duration) {
        while s.now < until {
            let step = (s.now + ms(10)).min(until);
            s.run(step, |_| false);
            self.turn(s);
        }
    }

    fn turn(&mut self, s: &mut Sim) {
        let now = s.at();
        let inbox = std::mem::take(&mut self.wire.borrow_mut().inbox);
        for (from, d) in inbox {
            self.link.handle(now, from, &d);
        }
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now);
        }
        while let Some(e) = self.link.poll_event() {
            if let LinkEvent::FromPeer { from, data } = e {
                self.on_packet(&from, &data);
            }
        }
        while let Some(t) = self.link.poll_transmit() {
            self.send(s, t.to, t.bytes);
        }
    }

    fn send(&mut self, s: &mut Sim, to: SocketAddr, bytes: Vec<u8>) {
        self.sent += bytes.len();
        s.inject(self.addr, to, bytes);
    }

    fn on_packet(&mut self, from: &str, data: &[u8]) {
        match packet::read(data) {
            Some(Packet::Handshake {
                step: 1,
                sender,
                noise,
                ..
            }) if self.session.is_none()
                && self.hs.as_ref().is_none_or(|(_, peer)| *peer != sender) =>
            {
                let mut hs = Handshake::new(&self.id, &self.name, from, false);
                if hs.read(noise).is_err() {
                    return;
                }
                let mut d = Vec::new();
                packet::handshake(&mut d, 2, self.my_id, sender);
                hs.write(&self.id, &mut d);
                self.link.send_to_peer(from, &d);
                self.hs = Some((hs, sender));
            }
            Some(Packet::Handshake { step: 3, noise, .. }) => {
                if let Some((mut hs, peer)) = self.hs.take()
                    && hs.read(noise).is_ok()
                    && hs.finished()
                {
                    self.session = Some(hs.into_session(peer));
                }
            }
            _ => {}
        }
    }

    fn connected(&self) -> bool {
        self.session.is_some()
    }

    /// `frame` sealed for alice.
    fn seal(&mut self, frame: &Frame<'_>) -> Vec<u8> {
        let mut plain = Vec::new();
        frame.write(&mut plain);
        self.seal_bytes(&plain)
    }

    /// Any bytes sealed for alice, a frame or not.
    fn seal_bytes(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        self.session
            .as_mut()
            .expect("connected")
            .seal(plain, &mut d);
        d
    }

    /// `frame` to alice through the relay.
    fn relay(&mut self, frame: &Frame<'_>) {
        let d = self.seal(frame);
        self.link.send_to_peer("alice", &d);
    }

    /// `frame` to alice's public address, from `source` (its own, or any it writes).
    fn direct(&mut self, s: &mut Sim, source: SocketAddr, frame: &Frame<'_>) {
        let d = self.seal(frame);
        let to = public(s, 0);
        self.sent += d.len();
        s.inject(source, to, d);
    }
}

/// Alice on the open internet (so that nothing filters what reaches her) and mallory, connected.
fn alice_and_mallory(tune: impl Fn(&mut udp_peer::Config)) -> (Sim, Mallory) {
    let mut s = Sim::new(31, Links::default());
    let mut ca = s.config("alice", 1);
    tune(&mut ca);
    s.host(None, ca);
    let mut m = Mallory::new(&mut s, "mallory", "192.0.2.200:7000".parse().unwrap());
    m.run(&mut s, ms(3_000));
    assert!(m.connected() && s.connected(0), "mallory has a session");
    (s, m)
}

fn events(s: &Sim, h: usize) -> Vec<Event> {
    s.hosts[h].events.iter().map(|(_, e)| e.clone()).collect()
}

// --- A forger of the relay's address --------------------------------------------------------

#[test]
fn forged_errors_cannot_end_a_registration_for_good() {
    let mut s = pair(
        41,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    let alice = public(&s, 0);
    // The first sends her back to registering (the relay forgot her, it says), the second
    // refuses the registration that follows: two datagrams, no timing.
    forge(
        &mut s,
        alice,
        r#"{"type":"error","code":"session_required","message":""}"#,
    );
    forge(
        &mut s,
        alice,
        r#"{"type":"error","code":"name_in_use","message":""}"#,
    );
    let until = s.now + ms(200);
    s.run(until, |_| false);
    s.say(0, "bob", "still here");
    let until = s.now + ms(30_000);
    assert!(
        s.run(until, |s| !s.received(1).is_empty()),
        "alice's link gave up: {:?}",
        s.hosts[0].peer.status().registered
    );
    assert!(s.hosts[0].peer.status().registered);
}

#[test]
fn a_forged_challenge_cannot_end_a_registration_for_good() {
    let mut s = pair(
        43,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    let alice = public(&s, 0);
    // Alice registers again (forced here; a rebinding or a relay restart does it too); a
    // challenge with a cookie of the forger's arrives before the relay's: she signs it, and
    // the relay answers `bad_signature`.
    forge(
        &mut s,
        alice,
        r#"{"type":"error","code":"not_registered","message":""}"#,
    );
    let cookie = B64.encode([0u8; 24]);
    forge(
        &mut s,
        alice,
        &format!(r#"{{"type":"challenge","cookie":"{cookie}"}}"#),
    );
    let until = s.now + ms(200);
    s.run(until, |_| false);
    s.say(0, "bob", "still here");
    let until = s.now + ms(30_000);
    assert!(
        s.run(until, |s| !s.received(1).is_empty()),
        "alice's link gave up"
    );
}

#[test]
fn forged_sessions_offline_peers_and_closed_channels_only_delay() {
    let mut s = pair(
        45,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    let alice = public(&s, 0);
    // A new session "from a relay restart", every request "refused", a watch answered empty:
    // each costs a registration or a request again, none ends anything.
    for json in [
        r#"{"type":"keepalive_ack","peer_name":"alice","server_time":1.0,"session":"forged"}"#,
        r#"{"type":"error","code":"unknown_target","message":""}"#,
        r#"{"type":"error","code":"denied_address","message":""}"#,
        r#"{"type":"watch_ack","online":[]}"#,
        r#"{"type":"peer_left","peer_name":"bob","peers":[]}"#,
    ] {
        forge(&mut s, alice, json);
    }
    let until = s.now + ms(100);
    s.run(until, |_| false);
    s.say(0, "bob", "still here");
    let until = s.now + ms(30_000);
    assert!(s.run(until, |s| !s.received(1).is_empty()));
    assert!(s.hosts[0].peer.status().registered);
}

#[test]
fn forged_channel_numbers_neither_blackhole_nor_misattribute_frames() {
    let mut s = pair(
        47,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    let (alice, bob) = (public(&s, 0), public(&s, 1));
    // Bob's frames reach alice under her number for him; a forger that names it for carol, and
    // names a number of its own for bob, would send alice's frames nowhere and take bob's as
    // carol's.
    let wire = tap(&mut s, None);
    s.say(1, "alice", "one");
    let until = s.now + ms(2_000);
    s.run(until, |s| s.received(0).len() == 1);
    let number = wire
        .borrow()
        .seen
        .iter()
        .find(|(_, to, d)| *to == alice && d.first() == Some(&0xD1))
        .map(|(_, _, d)| u32::from_be_bytes(d[2..6].try_into().unwrap()))
        .expect("a channel frame to alice");
    forge(
        &mut s,
        alice,
        &format!(r#"{{"type":"channel_bound","peer_name":"carol","channel":{number}}}"#),
    );
    forge(
        &mut s,
        alice,
        r#"{"type":"channel_bound","peer_name":"bob","channel":12345}"#,
    );
    forge(
        &mut s,
        alice,
        r#"{"type":"bind_ack","target":"bob","channel":54321}"#,
    );
    forge(
        &mut s,
        bob,
        r#"{"type":"bind_ack","target":"alice","channel":777}"#,
    );
    let until = s.now + ms(100);
    s.run(until, |_| false);
    s.say(0, "bob", "two");
    s.say(1, "alice", "three");
    let until = s.now + ms(20_000);
    s.run(until, |s| {
        s.received(0).len() == 2 && s.received(1).len() == 2
    });
    let texts = |h| -> Vec<String> { s.received(h).into_iter().map(|(t, _)| t).collect() };
    assert_eq!(
        texts(0),
        ["one", "three"],
        "bob's frames reach alice as his"
    );
    assert_eq!(texts(1), ["two"], "alice's frames reach bob");
    assert!(
        s.hosts[0]
            .peer
            .status()
            .peers
            .iter()
            .all(|p| p.name != "carol"),
        "no connection made for carol out of bob's frames"
    );
}

#[test]
fn forged_peer_names_make_few_connections_and_those_expire() {
    // The relay's timers as shipped: keepalives a few a minute.
    let mut s = pair(
        53,
        NatKind::FULL_CONE,
        NatKind::FULL_CONE,
        Links::default(),
        |c| {
            fast(c);
            c.timers = Timers::default();
        },
    );
    let alice = public(&s, 0);
    let wire = tap(&mut s, None);
    // A forger names 500 peers that ask to connect or send a first handshake message: with
    // `accept` on, each made a connection, three requests to the relay, a handshake sent again
    // every second, and connects asked again every two seconds, for ever.
    for i in 0..500 {
        let name = format!("ghost{i}");
        if i % 2 == 0 {
            forge(
                &mut s,
                alice,
                &format!(r#"{{"type":"connect_request","peer_name":"{name}"}}"#),
            );
        } else {
            forge(
                &mut s,
                alice,
                &relayed_packet(&name, &first_message(&name, "alice", 7)),
            );
        }
    }
    let until = s.now + ms(1_000);
    s.run(until, |_| false);
    let open = s.hosts[0].peer.status().peers.len();
    assert!(
        open <= 1 + udp_peer::MAX_HALF_OPEN,
        "{open} connections made by a forger"
    );
    let until = s.now + ms(60_000);
    s.run(until, |_| false);
    let relay = s.relay_addr;
    let mark = wire.borrow().seen.len();
    let until = s.now + ms(60_000);
    s.run(until, |_| false);
    let w = wire.borrow();
    let to_relay = w.seen[mark..]
        .iter()
        .filter(|(from, to, _)| *from == alice && *to == relay)
        .count();
    assert_eq!(
        s.hosts[0].peer.status().peers.len(),
        1,
        "the forged connections expired"
    );
    // Keepalives, STUN and the heartbeats' fallback are a few a minute.
    assert!(to_relay < 60, "{to_relay} datagrams a minute to the relay");
}

#[test]
fn names_and_texts_with_control_characters_never_reach_events() {
    let mut s = pair(
        59,
        NatKind::FULL_CONE,
        NatKind::FULL_CONE,
        Links::default(),
        fast,
    );
    let alice = public(&s, 0);
    let evil = r"\u001b]0;owned\u0007\u001b[2J";
    forge(
        &mut s,
        alice,
        &format!(r#"{{"type":"connect_request","peer_name":"x{evil}"}}"#),
    );
    // A name with a line break would write a second line into `known_peers` when pinned.
    forge(
        &mut s,
        alice,
        &relayed_packet("m\\nAAAA bob", &first_message("m\nAAAA bob", "alice", 9)),
    );
    forge(
        &mut s,
        alice,
        &format!(r#"{{"type":"error","code":"not_registered","message":"{evil}"}}"#),
    );
    forge(
        &mut s,
        alice,
        &format!(r#"{{"type":"error","code":"name_in_use","message":"{evil}"}}"#),
    );
    let until = s.now + ms(5_000);
    s.run(until, |_| false);
    let bad = |t: &str| t.chars().any(char::is_control);
    assert!(
        events(&s, 0)
            .iter()
            .any(|e| matches!(e, Event::RegistrationRefused { .. })),
        "the refusal, with its text, was told"
    );
    for e in events(&s, 0) {
        let texts: Vec<&str> = match &e {
            Event::RegistrationRefused { code, message } => vec![code, message],
            Event::ConnectRequest { name }
            | Event::Connected { name }
            | Event::KeyPinned { name, .. }
            | Event::KeyMismatch { name, .. }
            | Event::PathChanged { name, .. } => vec![name],
            Event::PeerUnavailable { name, code } => vec![name, code],
            Event::Message { from, .. } => vec![from],
            _ => vec![],
        };
        assert!(!texts.iter().any(|t| bad(t)), "{e:?}");
    }
    assert!(
        s.hosts[0].peer.status().peers.iter().all(|p| !bad(&p.name)),
        "a connection under a name no relay registers"
    );
}

#[test]
fn a_forged_pong_does_not_set_our_public_address() {
    let mut s = Sim::new(61, Links::default());
    let n = s.nat(NatKind::FULL_CONE, false);
    let relay = s.relay_addr;
    let victim: SocketAddr = "198.18.0.7:53".parse().unwrap();
    // The forger watches for the ping that proves alice's session (one round trip after the
    // ack) and answers it first, with an address of its choosing: that address is then the one
    // alice tells her peers to check.
    let fired = Rc::new(RefCell::new(false));
    let f = fired.clone();
    s.tap = Some(Box::new(move |from, to, d: &[u8]| {
        let ping = std::str::from_utf8(d).is_ok_and(|t| t.contains(r#""type":"ping""#));
        if to != relay || !ping || *f.borrow() {
            return Vec::new();
        }
        *f.borrow_mut() = true;
        let pong = format!(r#"{{"type":"pong","server_time":1.0,"your_address":"{victim}"}}"#);
        vec![(relay, from, pong.into_bytes())]
    }));
    s.host(Some(n), s.config("alice", 1));
    s.run(ms(3_000), |_| false);
    assert!(*fired.borrow(), "the forger saw the proof");
    let public = s.hosts[0].peer.status().public;
    assert_ne!(public, Some(victim), "alice believes the forger");
}

#[test]
fn a_forged_introduction_is_taken_only_for_a_pending_connect_and_costs_one_round() {
    let mut s = Sim::new(67, Links::default());
    s.alice_and_bob(NatKind::SYMMETRIC, NatKind::SYMMETRIC, |_| {});
    s.run(ms(2_000), |s| {
        s.hosts.iter().all(|h| h.peer.status().registered)
    });
    let wire = tap(&mut s, None);
    let alice = public(&s, 0);
    let (victim, other): (SocketAddr, SocketAddr) = (
        "198.18.0.1:80".parse().unwrap(),
        "198.18.0.2:80".parse().unwrap(),
    );
    forge(
        &mut s,
        alice,
        &format!(r#"{{"type":"introduce","peer_name":"carol","address":"{other}"}}"#),
    );
    s.connect(0, "bob");
    forge(
        &mut s,
        alice,
        &format!(r#"{{"type":"introduce","peer_name":"bob","address":"{victim}"}}"#),
    );
    s.run(ms(600_000), |_| false);
    assert!(s.connected(0));
    let w = wire.borrow();
    assert_eq!(
        w.to(other),
        0,
        "an introduction nobody asked for is ignored"
    );
    // One forged datagram of 70 bytes: one round of checks (40 probes of 38 bytes), not one
    // every `reprobe` for as long as the connection lives.
    let probes = w.to(victim);
    assert!(probes <= 40, "{probes} probes to the victim in ten minutes");
}

#[test]
fn a_forged_first_message_to_an_open_session_is_not_answered_for_ever() {
    let mut s = pair(
        71,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    let bob = public(&s, 1);
    let wire = tap(&mut s, None);
    let relay = s.relay_addr;
    forge(
        &mut s,
        bob,
        &relayed_packet("alice", &first_message("alice", "bob", 4242)),
    );
    let until = s.now + ms(60_000);
    s.run(until, |_| false);
    let w = wire.borrow();
    let answers = w
        .seen
        .iter()
        .filter(|(from, to, d)| {
            *from != relay
                && *to == relay
                && peer_packet(d).is_some_and(|p| p.get(..2) == Some(&[0xE0, 2]))
        })
        .count();
    assert!(answers <= 8, "{answers} answers to one forged datagram");
    assert!(s.connected(1));
}

#[test]
fn a_forged_first_message_mid_handshake_does_not_wedge_the_session() {
    let mut s = Sim::new(73, Links::default());
    s.alice_and_bob(NatKind::SYMMETRIC, NatKind::SYMMETRIC, |_| {});
    let relay = s.relay_addr;
    // When bob's answer to alice's first message passes the relay, a forged first message
    // "from alice" reaches bob before her third does.
    let fired = Rc::new(RefCell::new(None));
    let f = fired.clone();
    s.tap = Some(Box::new(move |from, to, d: &[u8]| {
        let answer = peer_packet(d).is_some_and(|p| p.get(..2) == Some(&[0xE0, 2]));
        if to != relay || !answer || f.borrow().is_some() {
            return Vec::new();
        }
        *f.borrow_mut() = Some(from);
        let forged = relayed_packet("alice", &first_message("alice", "bob", 4242));
        vec![(relay, from, forged.into_bytes())]
    }));
    s.connect(0, "bob");
    s.run(ms(5_000), |_| false);
    assert!(fired.borrow().is_some(), "the forger saw bob's answer");
    s.say(0, "bob", "hello");
    s.run(ms(60_000), |s| !s.received(1).is_empty());
    assert_eq!(s.received(1).len(), 1, "bob never opened the session");
}

/// Host `h` restarts: the same name and key, another seed (udp-chat draws one), and asks for
/// `peer` again.
fn restart(s: &mut Sim, h: usize, name: &str, key: u8, peer: &str) {
    let mut c = s.config(name, key);
    fast(&mut c);
    c.local = vec![s.hosts[h].addr];
    c.seed = 1000 + u64::from(key);
    let now = s.at();
    s.hosts[h].peer = Peer::new(c, HashMap::new(), now);
    s.connect(h, peer);
}

#[test]
fn a_peer_that_restarts_gets_a_session_again() {
    // Not an attack, but what a forged handshake must not be able to fake: a peer that lost
    // its session. The responder (bob: "alice" sorts first) restarts; alice held the old session
    // and, the initiator, had to start the new one.
    let mut s = pair(
        83,
        NatKind::FULL_CONE,
        NatKind::FULL_CONE,
        Links::default(),
        fast,
    );
    restart(&mut s, 1, "bob", 2, "alice");
    let until = s.now + ms(5_000);
    s.run(until, |_| false);
    s.say(0, "bob", "after bob's restart");
    let until = s.now + ms(60_000);
    assert!(
        s.run(until, |s| !s.received(1).is_empty()),
        "bob hears nothing from alice"
    );
    // And the initiator restarting.
    restart(&mut s, 0, "alice", 1, "bob");
    let until = s.now + ms(5_000);
    s.run(until, |_| false);
    s.say(0, "bob", "after alice's restart");
    let until = s.now + ms(60_000);
    assert!(
        s.run(until, |s| s.received(1).len() == 2),
        "bob hears nothing from alice"
    );
}

#[test]
fn forged_joins_and_asks_neither_duplicate_nor_lose_a_message() {
    // A peer that joins or asks again makes the initiator handshake anew: a forger sends both,
    // in bob's name, all along a lossy stream.
    let mut s = pair(
        89,
        NatKind::SYMMETRIC,
        NatKind::PORT_RESTRICTED,
        Links::default(),
        fast,
    );
    s.links.loss = 5;
    s.links.dup = 5;
    let alice = public(&s, 0);
    let n = 100;
    for i in 0..n {
        if i % 3 == 0 {
            forge(
                &mut s,
                alice,
                r#"{"type":"peer_joined","peer_name":"bob","peers":["bob"]}"#,
            );
            forge(
                &mut s,
                alice,
                r#"{"type":"connect_request","peer_name":"bob"}"#,
            );
        }
        s.say(0, "bob", &format!("a{i}"));
        s.say(1, "alice", &format!("b{i}"));
        let until = s.now + ms(100);
        s.run(until, |_| false);
    }
    let until = s.now + ms(60_000);
    s.run(until, |s| {
        s.received(0).len() >= n && s.received(1).len() >= n
    });
    for (h, prefix) in [(0, "b"), (1, "a")] {
        let got: Vec<String> = s.received(h).into_iter().map(|(t, _)| t).collect();
        let want: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(got, want, "in order, each once");
    }
}

#[test]
fn an_answer_from_someone_who_saw_our_first_message_does_not_wedge_the_handshake() {
    // On the relay's path (or the relay itself), an attacker reads alice's first message (its
    // ephemeral key is in the clear) and answers it first, as itself: Noise reads the answer,
    // the proof names someone else. Alice's handshake state has moved on; bob's real answer no
    // longer fits it.
    let mut s = Sim::new(97, Links::default());
    s.alice_and_bob(NatKind::SYMMETRIC, NatKind::SYMMETRIC, |_| {});
    let relay = s.relay_addr;
    let fired = Rc::new(RefCell::new(false));
    let f = fired.clone();
    s.tap = Some(Box::new(move |from, to, d: &[u8]| {
        let Some(p) = peer_packet(d) else {
            return Vec::new();
        };
        let Some(Packet::Handshake {
            step: 1,
            sender,
            noise,
            ..
        }) = packet::read(&p)
        else {
            return Vec::new();
        };
        if to != relay || *f.borrow() {
            return Vec::new();
        }
        *f.borrow_mut() = true;
        let eve = Identity::new(&SigningKey::from_bytes(&[77; 32]), "eve");
        let mut hs = Handshake::new(&eve, "bob", "alice", false);
        hs.read(noise).unwrap();
        let mut d = Vec::new();
        packet::handshake(&mut d, 2, 0xEEEE, sender);
        hs.write(&eve, &mut d);
        vec![(relay, from, relayed_packet("bob", &d).into_bytes())]
    }));
    s.connect(0, "bob");
    s.run(ms(30_000), |s| s.connected(0) && s.connected(1));
    assert!(*fired.borrow(), "the attacker saw alice's first message");
    assert!(s.connected(0) && s.connected(1), "the handshake is wedged");
}

// --- A registered peer, authenticated, abusing its session ------------------------------------

/// Addresses no peer can be at, or that reach what no peer should: alice must never send there.
fn special(relay: SocketAddr) -> Vec<SocketAddr> {
    [
        "127.0.0.1:22",
        "255.255.255.255:9",
        "[::ffff:127.0.0.1]:53",
        "[fe80::1]:5",
        "169.254.169.254:80",
        "[::1]:7",
        "224.0.0.251:5353",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .chain([relay])
    .collect()
}

#[test]
fn special_candidate_addresses_are_never_checked() {
    let (mut s, mut m) = alice_and_mallory(fast);
    let relay = s.relay_addr;
    let special = special(relay);
    let mark = m.wire.borrow().seen.len();
    for chunk in special.chunks(packet::MAX_CANDIDATES) {
        m.relay(&Frame::Candidates(chunk.to_vec()));
    }
    let until = s.now + ms(10_000);
    m.run(&mut s, until);
    let w = m.wire.borrow();
    let alice = public(&s, 0);
    let sent: Vec<SocketAddr> = w.seen[mark..]
        .iter()
        .filter(|(from, to, d)| *from == alice && special.contains(to) && d[0] == 0xE1)
        .map(|(_, to, _)| *to)
        .collect();
    assert!(sent.is_empty(), "probes to {sent:?}");
}

#[test]
fn addresses_named_by_a_peer_that_never_answer_are_checked_once_not_for_ever() {
    let (mut s, mut m) = alice_and_mallory(|c| c.paths.reprobe = ms(2_000));
    let victims: Vec<SocketAddr> = (0..8)
        .map(|i| format!("198.18.1.{i}:443").parse().unwrap())
        .collect();
    m.relay(&Frame::Candidates(victims.clone()));
    // Mallory's own address stays silent too (its client never answers a check), so alice
    // stays on the relay and checks again every `reprobe`.
    let before = m.sent;
    let until = s.now + ms(120_000);
    m.run(&mut s, until);
    let w = m.wire.borrow();
    let alice = public(&s, 0);
    let (n, bytes) = w
        .seen
        .iter()
        .filter(|(from, to, _)| *from == alice && victims.contains(to))
        .fold((0, 0), |(n, b), (_, _, d)| (n + 1, b + d.len()));
    let theirs = m.sent - before;
    println!("{n} probes, {bytes} bytes to the victims for {theirs} bytes of mallory's");
    assert!(n <= 8 * 40, "{n} probes: checked again and again");
}

#[test]
fn a_probe_from_a_forged_source_is_answered_once_and_checked_briefly() {
    let (mut s, mut m) = alice_and_mallory(fast);
    let victim: SocketAddr = "198.18.2.1:9".parse().unwrap();
    let mark = m.wire.borrow().seen.len();
    // A probe sealed by mallory but sent from the victim's address: alice answers there, and
    // (a peer-reflexive candidate) checks it.
    m.direct(&mut s, victim, &Frame::Probe { id: 1 });
    let until = s.now + ms(60_000);
    m.run(&mut s, until);
    let w = m.wire.borrow();
    let (n, bytes) = w.seen[mark..]
        .iter()
        .filter(|(_, to, _)| *to == victim)
        .fold((0, 0), |(n, b), (_, _, d)| (n + 1, b + d.len()));
    println!("{n} datagrams, {bytes} bytes to the victim for one of 38");
    assert!(n <= 41, "{n} datagrams to the victim");
}

#[test]
fn a_peer_naming_new_addresses_without_end_gets_checks_at_a_bounded_rate() {
    let (mut s, mut m) = alice_and_mallory(|_| {});
    let alice = public(&s, 0);
    let mark = m.wire.borrow().seen.len();
    let before = m.sent;
    let start = s.now;
    // Eight fresh addresses every 250 ms, for 20 s.
    for round in 0..80u32 {
        let list: Vec<SocketAddr> = (0..8)
            .map(|i| format!("198.19.{round}.{i}:9").parse().unwrap())
            .collect();
        m.relay(&Frame::Candidates(list));
        let until = s.now + ms(250);
        m.run(&mut s, until);
    }
    let secs = (s.now - start).as_secs_f64();
    let w = m.wire.borrow();
    let probes: Vec<usize> = w.seen[mark..]
        .iter()
        .filter(|(from, to, _)| {
            *from == alice
                && matches!(to.ip(), std::net::IpAddr::V4(v) if v.octets()[..2] == [198, 19])
        })
        .map(|(_, _, d)| d.len())
        .collect();
    let out: usize = probes.iter().sum();
    let theirs = m.sent - before;
    println!(
        "{:.0} probes/s, {out} bytes out for {theirs} bytes in ({:.0}x)",
        probes.len() as f64 / secs,
        out as f64 / theirs as f64
    );
    // ICE paces all of an agent's checks at one per Ta (50 ms): 20 a second, however many
    // candidates a peer names. Here four per `check_every` (a peer's usual few candidates all at
    // full pace): 80 a second.
    assert!(
        probes.len() as f64 / secs <= 85.0,
        "{:.0} probes a second",
        probes.len() as f64 / secs
    );
}

#[test]
fn stream_abuse_by_a_peer_hurts_only_its_own_messages() {
    let (mut s, mut m) = alice_and_mallory(fast);
    let now = s.at();
    for i in 0..5 {
        s.hosts[0]
            .peer
            .send("mallory", format!("m{i}").as_bytes(), now)
            .unwrap();
    }
    // Acknowledgements of what was never sent, data far ahead and at the end of the numbers,
    // a message far longer than any sender would write, the last nonces.
    m.relay(&Frame::Ack { next: u64::MAX });
    m.relay(&Frame::Data {
        seq: u64::MAX,
        text: b"end",
    });
    m.relay(&Frame::Data {
        seq: 1 << 40,
        text: b"far",
    });
    m.relay(&Frame::Data {
        seq: 0,
        text: &[b'x'; 60_000],
    });
    m.relay(&Frame::ProbeAck { id: u64::MAX });
    let until = s.now + ms(2_000);
    m.run(&mut s, until);
    let got: Vec<usize> = events(&s, 0)
        .iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text.len()),
            _ => None,
        })
        .collect();
    assert!(got.len() <= 1, "{got:?}");
    assert_eq!(s.hosts[0].peer.status().peers[0].unacked, 0);
    assert!(s.connected(0));
}

// --- Inputs nobody meant to send ------------------------------------------------------------

/// xorshift64*, for the fuzzing below: the same inputs every run.
struct Fuzz(u64);

impl Fuzz {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `d` with a few bytes flipped, cut, or spliced with random ones.
    fn mutate(&mut self, d: &[u8]) -> Vec<u8> {
        let mut d = d.to_vec();
        for _ in 0..1 + self.below(4) {
            match self.below(6) {
                0 if !d.is_empty() => {
                    let i = self.below(d.len());
                    d[i] ^= 1 << self.below(8);
                }
                1 if !d.is_empty() => {
                    let i = self.below(d.len());
                    d[i] = self.next() as u8;
                }
                2 => {
                    let cut = self.below(d.len() + 1);
                    d.truncate(cut);
                }
                3 => {
                    let at = self.below(d.len() + 1);
                    let n = self.below(16);
                    let extra = self.bytes(n);
                    d.splice(at..at, extra);
                }
                4 if !d.is_empty() => {
                    // A digit changed into another, to move numbers rather than break syntax.
                    for _ in 0..8 {
                        let i = self.below(d.len());
                        if d[i].is_ascii_digit() {
                            d[i] = b'0' + self.below(10) as u8;
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        d
    }
}

/// What a relay (or a forger) might send, well-formed, with values chosen to hurt.
fn relay_message(f: &mut Fuzz, names: &[&str]) -> Vec<u8> {
    let name = names[f.below(names.len())];
    let big = [
        0u64,
        1,
        u64::from(u32::MAX),
        u64::MAX,
        1 << 53,
        f.next() % 100,
    ];
    let n = big[f.below(big.len())];
    let addrs = [
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "[::ffff:127.0.0.1]:1",
        "[fe80::1%3]:9",
        "198.51.100.1:40000",
    ];
    let addr = addrs[f.below(addrs.len())];
    let packet = match f.below(4) {
        0 => first_message(name, "alice", n as u32),
        1 => {
            let mut d = Vec::new();
            packet::handshake(&mut d, f.below(5) as u8, n as u32, f.next() as u32);
            let k = f.below(200);
            d.extend(f.bytes(k));
            d
        }
        2 => {
            let mut d = Vec::new();
            packet::transport(&mut d, f.next() as u32, n);
            let k = f.below(100);
            d.extend(f.bytes(k));
            d
        }
        _ => {
            let k = f.below(64);
            f.bytes(k)
        }
    };
    let json = match f.below(16) {
        0 => format!(
            r#"{{"type":"challenge","cookie":"{}"}}"#,
            B64.encode(f.bytes(8))
        ),
        1 => format!(
            r#"{{"type":"register_ack","status":"success","your_address":"{addr}","server_time":{n},"peer_name":"alice","session":"s{n}"}}"#
        ),
        2 => format!(r#"{{"type":"register_ack","your_address":"{addr}"}}"#),
        3 => format!(r#"{{"type":"pong","server_time":1.5,"your_address":"{addr}"}}"#),
        4 => format!(
            r#"{{"type":"keepalive_ack","peer_name":"alice","server_time":2.0,"session":"k{n}"}}"#
        ),
        5 => relayed_packet(name, &packet),
        6 => format!(r#"{{"type":"introduce","peer_name":"{name}","address":"{addr}"}}"#),
        7 => format!(r#"{{"type":"connect_request","peer_name":"{name}"}}"#),
        8 => format!(r#"{{"type":"bind_ack","target":"{name}","channel":{n}}}"#),
        9 => format!(r#"{{"type":"channel_bound","peer_name":"{name}","channel":{n}}}"#),
        10 => format!(r#"{{"type":"channel_closed","channel":{n}}}"#),
        11 => {
            let codes = [
                "name_in_use",
                "not_registered",
                "session_required",
                "auth_required",
                "unknown_target",
                "denied_address",
                "bad_signature",
                "rate_limited",
            ];
            format!(
                r#"{{"type":"error","code":"{}","message":"m"}}"#,
                codes[f.below(codes.len())]
            )
        }
        12 => format!(r#"{{"type":"watch_ack","online":["{name}","bob"]}}"#),
        13 => format!(r#"{{"type":"peer_joined","peer_name":"{name}","peers":["{name}"]}}"#),
        14 => {
            let mut d = Vec::new();
            relay_wire::frame::write(&mut d, n as u32, &packet);
            return d;
        }
        _ => {
            let mut t = [0u8; 12];
            t.copy_from_slice(&f.bytes(12));
            let mut req = Vec::new();
            relay_wire::stun::request(&mut req, &t, true);
            let r = relay_wire::stun::parse(&req).unwrap();
            let mut d = Vec::new();
            // A scoped address does not parse: then the relay's own.
            let mapped = addr.parse().unwrap_or("203.0.113.1:3478".parse().unwrap());
            relay_wire::stun::answer(&mut d, &r, mapped);
            return d;
        }
    };
    json.into_bytes()
}

#[test]
fn any_datagram_from_anywhere_is_taken_without_a_panic() {
    let mut s = pair(
        79,
        NatKind::FULL_CONE,
        NatKind::PORT_RESTRICTED,
        Links::default(),
        fast,
    );
    // Real traffic to mutate, from the tap.
    let wire = tap(&mut s, None);
    s.say(0, "bob", "hello");
    s.say(1, "alice", "hi");
    s.run(ms(25_000), |_| false);
    let corpus: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = wire.borrow().seen.clone();
    assert!(corpus.len() > 50);
    let mut f = Fuzz(0x5EED_1234_ABCD_0001);
    let relay = s.relay_addr;
    let (alice, bob) = (public(&s, 0), public(&s, 1));
    let names = ["bob", "alice", "x", "carol", "\u{1b}", "b\\u0000ob"];
    for round in 0..3000 {
        let to = if f.below(2) == 0 { alice } else { bob };
        let (from, d) = match f.below(4) {
            0 => (relay, relay_message(&mut f, &names)),
            1 => (relay, {
                let m = relay_message(&mut f, &names);
                f.mutate(&m)
            }),
            2 => {
                let (from, _, d) = &corpus[f.below(corpus.len())];
                let from = if f.below(2) == 0 { *from } else { relay };
                (from, f.mutate(d))
            }
            _ => {
                let n = f.below(1500);
                let from = [relay, s.stun2, "198.51.100.9:1".parse().unwrap()][f.below(3)];
                (from, f.bytes(n))
            }
        };
        s.inject(from, to, d);
        if round % 50 == 0 {
            let until = s.now + ms(f.below(3_000) as u64);
            s.run(until, |_| false);
        }
    }
    let until = s.now + ms(10_000);
    s.run(until, |_| false);
}

#[test]
fn a_lone_peer_takes_any_datagram_in_any_state_without_a_panic() {
    let t0 = std::time::Instant::now();
    let relay: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let names = ["bob", "alice", "z", "\u{7f}"];
    for seed in 0..8u64 {
        let mut cfg = udp_peer::Config::new("alice", SigningKey::from_bytes(&[1; 32]), relay, seed);
        cfg.signed = seed % 2 == 0;
        cfg.accept = seed % 3 != 0;
        let mut p = Peer::new(cfg, HashMap::new(), t0);
        p.connect("bob", t0).unwrap();
        let mut f = Fuzz(seed.wrapping_mul(0x9E37_79B9) | 1);
        let mut now = t0;
        for _ in 0..2000 {
            let d = relay_message(&mut f, &names);
            let d = if f.below(3) == 0 { f.mutate(&d) } else { d };
            p.handle(now, relay, &d);
            now += Duration::from_millis(f.below(2_000) as u64);
            if p.poll_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
            while p.poll_transmit().is_some() {}
            while p.poll_event().is_some() {}
            let _ = p.send("bob", b"x", now);
        }
    }
}

#[test]
fn authentic_packets_of_any_content_from_any_source_are_taken_without_a_panic() {
    let (mut s, mut m) = alice_and_mallory(fast);
    let alice = public(&s, 0);
    let mut f = Fuzz(0xA11CE);
    for i in 0..3000 {
        // A frame's kind, then anything: addresses of every family and length, numbers at the
        // ends of their ranges.
        let n = f.below(120);
        let mut plain = vec![1 + f.below(6) as u8];
        plain.extend(f.bytes(n));
        if f.below(4) == 0 {
            plain[1..].fill(0xFF);
        }
        let d = m.seal_bytes(&plain);
        if f.below(2) == 0 {
            m.link.send_to_peer("alice", &d);
        } else {
            let from = SocketAddr::new(
                std::net::Ipv4Addr::from(f.next() as u32).into(),
                f.next() as u16,
            );
            s.inject(from, alice, d);
        }
        if i % 20 == 0 {
            let until = s.now + ms(f.below(1_000) as u64);
            m.run(&mut s, until);
        }
    }
    let until = s.now + ms(30_000);
    m.run(&mut s, until);
}

#[test]
fn frames_and_packets_of_random_bytes_read_without_a_panic() {
    let mut f = Fuzz(77);
    for _ in 0..200_000 {
        let n = f.below(64);
        let d = f.bytes(n);
        let _ = packet::read(&d);
        let _ = Frame::read(&d);
    }
}

#[test]
fn a_stun_answer_cannot_be_forged_from_what_a_peer_sees_of_our_random_numbers() {
    use udp_peer::rng::Rng;
    // The endpoint's seeded generator is SplitMix64, whose one output gives its state away (a
    // peer decrypts our probe ids). Were STUN transactions drawn from it, a forger who learnt
    // the seed would know them all: it forges answers for every transaction such a seed gives,
    // from the relay's address, mapping us to an address of its choosing.
    let relay: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let victim: SocketAddr = "198.18.9.9:9".parse().unwrap();
    let t0 = std::time::Instant::now();
    let mut link = Link::new(relay, "alice", None, Timers::default(), t0);
    for seed in 0..64 {
        let mut r = Rng::new(seed);
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&r.u64().to_be_bytes());
        t[8..].copy_from_slice(&(r.u64() as u32).to_be_bytes());
        let mut req = Vec::new();
        relay_wire::stun::request(&mut req, &t, true);
        let mut answer = Vec::new();
        relay_wire::stun::answer(&mut answer, &relay_wire::stun::parse(&req).unwrap(), victim);
        link.handle(t0, relay, &answer);
    }
    assert_ne!(
        link.public(),
        Some(victim),
        "a forged STUN answer was taken"
    );
}

#[test]
fn a_huge_relay_timeout_on_the_command_line_is_refused_not_a_panic_later() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_udp-chat"))
        .args([
            "--relay",
            "127.0.0.1:9",
            "--name",
            "x",
            "--key",
            "/nonexistent",
            "--relay-timeout",
            "18446744073709551615",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--relay-timeout"), "{err}");
}
