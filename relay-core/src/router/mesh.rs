//! A cluster's mesh in the router: a `relay` to a name homed at another relay, a frame on a
//! channel whose other end lives at another relay, a bind to a name homed there and a channel
//! end closed each leave in one hop as a mesh datagram (a payload sent from the receive
//! buffer); a mesh datagram, once checked (a known node, its MAC, a new number), is decided for
//! the peer homed here: the `relayed_packet` or the frame a local relay would have sent, byte
//! for byte, a channel end taken (`channel_bound`) or closed (`channel_closed`).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use tracing::debug;

use crate::budget::Cause;
use crate::channels;
use crate::clock::Now;
use crate::cluster::Cluster;
use crate::events;
use crate::mesh::Refused;
use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::refusal::Reason;
use crate::registry::Name;
use crate::seal::{Payload, seal};
use crate::settings::Auth;
use crate::wire::mesh::{Mesh, Via, read_bind};
use crate::wire::{frame, reply, valid_name};

use super::Router;
use super::relay::relayed;

impl Router {
    /// Forwards a `relay` of `source`'s to `target`, if `target` is homed at another relay of the
    /// cluster: false if it is not (or the datagram cannot be written).
    pub(super) fn relay_remote(
        &mut self,
        d: &[u8],
        source: &str,
        target: &str,
        payload: Range<usize>,
        now: Now,
        out: &mut Out,
    ) -> bool {
        let Some(c) = self.shared.cluster.get() else {
            return false;
        };
        let Some((node, _)) = c.remote.home_of(target) else {
            return false;
        };
        let payload = Payload::Input(d, payload);
        if !seal(c, &node, target, Via::Source(source), payload, now, out) {
            return false;
        }
        Counters::add(&self.counters.mesh_sent, 1);
        true
    }

    /// Forwards frame `d` to `peer`'s end (number `number`) at node `node`: its payload, from
    /// the receive buffer.
    pub(super) fn frame_remote(
        &mut self,
        d: &[u8],
        node: &str,
        peer: &str,
        number: u32,
        now: Now,
        out: &mut Out,
    ) -> bool {
        let Some(c) = self.shared.cluster.get() else {
            return false;
        };
        let payload = Payload::Input(d, frame::HEADER..d.len());
        if !seal(c, node, peer, Via::Channel(number), payload, now, out) {
            return false;
        }
        Counters::add(&self.counters.mesh_sent, 1);
        true
    }

    /// Decides mesh datagram `d`, from `from` (another relay of the cluster, which its MAC, not
    /// its address, proves), for the peer homed here that it names.
    pub fn mesh(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        out.stream = self.stream();
        let refuse = |r: Reason| {
            self.counters.refuse(r);
            debug!(%from, len = d.len(), reason = r.as_str(), "mesh datagram refused");
        };
        let Some(c) = self.shared.cluster.get() else {
            return refuse(Reason::MeshUnknownNode);
        };
        let m = match c.nodes.open(&c.keys, &c.node, crate::seal::unix_us(now), d) {
            Ok(m) => m,
            Err(Refused::Malformed(_)) => return refuse(Reason::MeshMalformed),
            Err(Refused::UnknownNode) => return refuse(Reason::MeshUnknownNode),
            Err(Refused::BadMac) => return refuse(Reason::MeshBadMac),
            Err(Refused::Replayed) => return refuse(Reason::MeshReplayed),
        };
        // Another relay's word, but names still obey the name rules before they are used.
        let named_ok = m.head.name().is_none_or(valid_name);
        if !named_ok || !valid_name(m.head.target) {
            return refuse(Reason::MeshMalformed);
        }
        let start = out.sends.len();
        // Who pays for what is told here: the relay (each recipient held to its presence
        // rate), but for a `channel_bound`, paid by the binder's host as a local bind's is (its
        // bind was authenticated where it was made); forwards pass.
        let relay = |r: Result<(), Reason>| r.map(|()| Cause::Relay);
        let result = match m.head.via {
            Via::Source(source) => relay(self.mesh_relay(&m, source, now, out)),
            Via::Channel(number) => relay(self.mesh_frame(c, &m, number, now, out)),
            Via::Bind(binder) => self.mesh_bind(c, d, &m, binder, now, out),
            Via::Closed(number) => {
                let node: Arc<str> = m.head.node.into();
                let gone = self
                    .shared
                    .channels
                    .close_remote(&node, m.head.target, number);
                events::tell_closed(&self.shared, gone, now, out);
                Ok(Cause::Relay)
            }
            Via::Connect(asker) => relay(self.mesh_connect(c, d, &m, asker, now, out)),
            Via::Introduce(peer) => relay(self.mesh_introduce(c, d, &m, peer, now, out)),
            // Heard (its open marked the node): nothing to decide.
            Via::Ping => Ok(Cause::Relay),
        };
        let cause = match result {
            Ok(cause) => cause,
            Err(r) => return refuse(r),
        };
        let b = &self.shared.budgets;
        b.settle(out, start, cause, None, now.ms, &self.counters);
    }

    /// A `relay` from `source` at another relay, to the target homed here.
    fn mesh_relay(
        &self,
        m: &Mesh<'_>,
        source: &str,
        now: Now,
        out: &mut Out,
    ) -> Result<(), Reason> {
        let (to, trusted) = self
            .shared
            .registry
            .target_of(m.head.target, now.ms)
            .ok_or(Reason::MeshUnknownTarget)?;
        // As for a local relay: where registration is signed, a name that never echoed its
        // cookie here can only have been forged for someone else.
        if self.shared.settings.auth == Auth::Signed && !trusted {
            return Err(Reason::UnauthenticatedTarget);
        }
        if !relayed(out, to, source, m.payload.clone()) {
            return Err(Reason::TooLarge);
        }
        Counters::add(&self.counters.mesh_delivered, 1);
        Ok(())
    }

    /// A frame for the target's end `number`, from its other end at the sending relay. An end
    /// not here (closed, or lost with a restart) is said closed to the sender, which closes its
    /// own and tells its owner.
    fn mesh_frame(
        &self,
        c: &Cluster,
        m: &Mesh<'_>,
        number: u32,
        now: Now,
        out: &mut Out,
    ) -> Result<(), Reason> {
        let (target, node) = (m.head.target, m.head.node);
        let Some(to) = self.shared.channels.deliver(number, target, node) else {
            let none = Payload::Bytes(&[]);
            seal(c, node, target, Via::Closed(number), none, now, out);
            return Err(Reason::ChannelGone);
        };
        let head = out.buf.len();
        out.buf.extend_from_slice(&[frame::MARK, 0]);
        out.buf.extend_from_slice(&number.to_be_bytes());
        let end = out.buf.len();
        out.forward(to, head..end, m.payload.clone(), b"");
        Counters::add(&self.counters.mesh_delivered, 1);
        Ok(())
    }

    /// A channel `binder`, at the sending relay, bound to the target homed here: its end taken
    /// under the number that relay chose, and the target told, as a local bind tells it; or,
    /// where it cannot be taken, said closed to the sender. Who pays for telling it: the
    /// binder's host.
    fn mesh_bind(
        &self,
        c: &Cluster,
        d: &[u8],
        m: &Mesh<'_>,
        binder: &str,
        now: Now,
        out: &mut Out,
    ) -> Result<Cause, Reason> {
        let (target, node) = (m.head.target, m.head.node);
        let (theirs, mine, host) = read_bind(&d[m.payload.clone()]).ok_or(Reason::MeshMalformed)?;
        let owner = Name::from(target);
        let taken = match self.shared.registry.target_of(target, now.ms) {
            // As a local bind: only to a registration that proved itself where it is.
            Some((addr, true)) => {
                let peer = Name::from(binder);
                let node: Arc<str> = node.into();
                self.shared
                    .channels
                    .accept_remote(&owner, addr, mine, &peer, theirs, &node)
                    .map(|()| addr)
                    .map_err(|r| match r {
                        channels::Refused::Limit => Reason::ChannelLimit,
                        channels::Refused::Taken => Reason::BadRequest,
                    })
            }
            Some((_, false)) => Err(Reason::UntrustedPeer),
            None => Err(Reason::MeshUnknownTarget),
        };
        let addr = match taken {
            Ok(addr) => addr,
            Err(r) => {
                seal(
                    c,
                    node,
                    target,
                    Via::Closed(mine),
                    Payload::Bytes(&[]),
                    now,
                    out,
                );
                return Err(r);
            }
        };
        let start = out.buf.len();
        reply::channel_bound(&mut out.buf, binder, mine);
        out.reply(addr, start, Kind::Announce, true);
        Ok(Cause::Authenticated(host))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::cluster::Op;
    use crate::out::Out;
    use crate::refusal::Reason;
    use crate::remote::Home;
    use crate::seal::{Payload, seal};
    use crate::settings::Settings;
    use crate::testing::cluster::{KEY, join, mesh, mesh_addr, prove, settle_claims};
    use crate::testing::{Harness, addr, at, collect};
    use crate::wire::mesh::Via;
    use crate::wire::{self, peer};

    /// A relay of a cluster of two keyed by `key`: node `me`, taking datagrams from `other`.
    fn relay(me: &str, other: &str, key: &[u8]) -> Harness {
        join(Harness::new(Settings::default()), me, other, key, 1_000)
    }

    /// Registers `name` at `from` in relay `h` of a cluster, its claim settled.
    fn register(h: &mut Harness, name: &str, from: SocketAddr) {
        h.register(name, from, 0);
        assert!(!settle_claims(h).is_empty(), "acked once claimed");
    }

    /// What `h` sends at once for a `register` of `name` from `from`.
    fn ask(h: &mut Harness, name: &str, from: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut d = Vec::new();
        peer::register(&mut d, name, None);
        h.run(&d, from, 1)
    }

    /// Relay B's decision on mesh datagram `d`.
    fn deliver(b: &mut Harness, d: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        mesh(b, d, mesh_addr(1), 10)
    }

    #[test]
    fn a_relay_to_a_name_homed_elsewhere_goes_there_in_one_hop_and_arrives_as_if_local() {
        let (mut a, mut b) = (
            relay("relay-a", "relay-b", KEY),
            relay("relay-b", "relay-a", KEY),
        );
        let (alice, bob) = (addr(1), addr(2));
        register(&mut a, "alice", alice);
        register(&mut b, "bob", bob);
        let home = Home {
            node: "relay-b".into(),
            mesh: mesh_addr(2),
            epoch: 1,
        };
        assert!(a.shared.cluster.get().unwrap().remote.joined("bob", home));
        let payload = br#"{"ct":"AAEC\"x\"","n":7}"#;
        let mut d = Vec::new();
        peer::relay(&mut d, "alice", "bob", payload);
        let sent = a.run(&d, alice, 5);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, mesh_addr(2), "to relay-b's mesh address");
        // At relay-b: the relayed_packet a local relay would have made, byte for byte.
        let got = deliver(&mut b, &sent[0].1);
        let mut local = relay("relay-x", "relay-y", KEY);
        register(&mut local, "alice", alice);
        register(&mut local, "bob", bob);
        let want = local.run(&d, alice, 5);
        assert_eq!(got, want);
        assert_eq!(got[0].0, bob);
        // Sent once, taken once: the same datagram again is a replay.
        assert!(deliver(&mut b, &sent[0].1).is_empty());
        assert_eq!(b.refused(Reason::MeshReplayed), 1);
    }

    #[test]
    fn forged_replayed_foreign_and_misdirected_mesh_datagrams_are_refused_and_counted() {
        let (mut a, mut b) = (
            relay("relay-a", "relay-b", KEY),
            relay("relay-b", "relay-a", KEY),
        );
        register(&mut a, "alice", addr(1));
        register(&mut b, "bob", addr(2));
        let home = || Home {
            node: "relay-b".into(),
            mesh: mesh_addr(2),
            epoch: 1,
        };
        let remote = &a.shared.cluster.get().unwrap().remote;
        assert!(remote.joined("bob", home()));
        assert!(remote.joined("carol", home()));
        let mut sealed = |target: &str| {
            let mut d = Vec::new();
            peer::relay(&mut d, "alice", target, b"1");
            a.run(&d, addr(1), 5).remove(0).1
        };
        let good = sealed("bob");
        let misdirected = sealed("carol");
        // A forger without the key: its MAC fails; with a flipped byte too.
        let mut forger = relay(
            "relay-a",
            "relay-b",
            b"a guess at the key, at least 32 bytes long",
        );
        register(&mut forger, "alice", addr(1));
        let forged = {
            let remote = &forger.shared.cluster.get().unwrap().remote;
            assert!(remote.joined("bob", home()));
            let mut d = Vec::new();
            peer::relay(&mut d, "alice", "bob", b"1");
            forger.run(&d, addr(1), 5).remove(0).1
        };
        // The payload's byte flipped (it is just before the MAC).
        let mut flipped = good.clone();
        let at = flipped.len() - crate::wire::mesh::MAC_LEN - 1;
        flipped[at] ^= 1;
        // A node relay-b does not list.
        let mut stranger = relay("relay-z", "relay-b", KEY);
        register(&mut stranger, "alice", addr(1));
        let foreign = {
            let remote = &stranger.shared.cluster.get().unwrap().remote;
            assert!(remote.joined("bob", home()));
            let mut d = Vec::new();
            peer::relay(&mut d, "alice", "bob", b"1");
            stranger.run(&d, addr(1), 5).remove(0).1
        };
        for (d, why) in [
            (&forged, Reason::MeshBadMac),
            (&flipped, Reason::MeshBadMac),
            (&foreign, Reason::MeshUnknownNode),
            (&misdirected, Reason::MeshUnknownTarget),
            (&b"{\"type\":\"relay\"}".to_vec(), Reason::MeshMalformed),
        ] {
            let before = b.refused(why);
            assert!(deliver(&mut b, d).is_empty(), "{why:?}");
            assert_eq!(b.refused(why), before + 1, "{why:?}");
        }
        // None of them moved relay-a's window at relay-b: the good one is still taken.
        assert_eq!(deliver(&mut b, &good).len(), 1);
    }

    #[test]
    fn a_registration_is_acked_only_once_its_claim_settles_and_refused_if_it_fails() {
        let mut a = relay("relay-a", "relay-b", KEY);
        let sent = ask(&mut a, "alice", addr(1));
        assert!(
            sent.is_empty(),
            "nothing before the claim settles: {sent:?}"
        );
        assert!(!a.shared.registry.has_addr(addr(1)));
        let got = settle_claims(&mut a);
        assert!(
            std::str::from_utf8(&got[0].1)
                .unwrap()
                .contains("register_ack")
        );
        assert!(a.shared.registry.has_addr(addr(1)));
        // Homed here now: a refresh is decided at once, without the directory.
        assert!(!ask(&mut a, "alice", addr(1)).is_empty());
        assert!(a.shared.cluster.get().unwrap().take(9).is_empty());
        // A claim the directory refuses is answered with the reason.
        ask(&mut a, "bob", addr(2));
        let Op::Claim(p) = a.shared.cluster.get().unwrap().take(9).remove(0) else {
            panic!("a claim")
        };
        let mut out = Out::default();
        a.router.unsettled(&p, Reason::NameInUse, at(1), &mut out);
        let got = collect(&out, &p.datagram);
        assert_eq!(got[0].0, addr(2));
        assert!(
            std::str::from_utf8(&got[0].1)
                .unwrap()
                .contains("name_in_use")
        );
        assert!(!a.shared.registry.has_addr(addr(2)));
        // Leaving releases the name at the epoch it was claimed with.
        let session = a.session("alice", addr(1));
        let mut d = Vec::new();
        peer::unregister(&mut d, "alice", &session);
        a.run(&d, addr(1), 2);
        let c = a.shared.cluster.get().unwrap();
        assert_eq!(c.take(9), vec![Op::Release("alice".into(), 1)]);
        assert!(!c.is_home("alice"));
    }

    /// [`prove`] at time 0.
    fn prove_now(h: &mut Harness, name: &str, from: SocketAddr) -> String {
        prove(h, name, from, 0)
    }

    /// The one datagram of `sent` to `to`.
    fn to(sent: &[(SocketAddr, Vec<u8>)], to: SocketAddr) -> Vec<u8> {
        let mut of: Vec<_> = sent.iter().filter(|(t, _)| *t == to).collect();
        assert_eq!(of.len(), 1, "{sent:?}");
        of.remove(0).1.clone()
    }

    fn number(json: &[u8]) -> u32 {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        v["channel"].as_u64().unwrap() as u32
    }

    #[test]
    fn a_channel_binds_across_relays_carries_frames_both_ways_and_closes_at_both_ends() {
        let (mut a, mut b) = (
            relay("relay-a", "relay-b", KEY),
            relay("relay-b", "relay-a", KEY),
        );
        let (alice, bob) = (addr(1), addr(2));
        let alice_session = prove_now(&mut a, "alice", alice);
        prove_now(&mut b, "bob", bob);
        let home = Home {
            node: "relay-b".into(),
            mesh: mesh_addr(2),
            epoch: 1,
        };
        assert!(a.shared.cluster.get().unwrap().remote.joined("bob", home));
        // Alice binds bob: acknowledged at once, and relay-b told.
        let mut d = Vec::new();
        peer::bind(&mut d, "bob", "alice", &alice_session);
        let sent = a.run(&d, alice, 2);
        let ab = number(&to(&sent, alice));
        let bind = to(&sent, mesh_addr(2));
        // Relay-b takes bob's end and tells him, as a local bind would.
        let got_bind = mesh(&mut b, &bind, mesh_addr(1), 2);
        let told = got_bind;
        let bound = String::from_utf8(to(&told, bob)).unwrap();
        assert!(
            bound.contains(r#""channel_bound","peer_name":"alice""#),
            "{bound}"
        );
        let ba = number(bound.as_bytes());
        // A frame from alice arrives at bob under bob's number, its payload byte for byte.
        let mut f = Vec::new();
        wire::frame::write(&mut f, ab, b"\x00encrypted\xff");
        let over = to(&a.run(&f, alice, 3), mesh_addr(2));
        let got_over = mesh(&mut b, &over, mesh_addr(1), 3);
        let mut want = Vec::new();
        wire::frame::write(&mut want, ba, b"\x00encrypted\xff");
        assert_eq!(to(&got_over, bob), want);
        // And back.
        let mut f = Vec::new();
        wire::frame::write(&mut f, ba, b"reply");
        let back = to(&b.run(&f, bob, 4), mesh_addr(1));
        let got_back = mesh(&mut a, &back, mesh_addr(2), 4);
        let mut want = Vec::new();
        wire::frame::write(&mut want, ab, b"reply");
        assert_eq!(to(&got_back, alice), want);
        // A frame from anyone but alice's address is refused, as on one relay.
        let mut f = Vec::new();
        wire::frame::write(&mut f, ab, b"x");
        assert!(a.run(&f, addr(9), 5).is_empty());
        // Alice unbinds: relay-b closes bob's end and tells him.
        let mut d = Vec::new();
        peer::unbind(&mut d, ab, "alice", &alice_session);
        let closed = to(&a.run(&d, alice, 6), mesh_addr(2));
        let got_closed = mesh(&mut b, &closed, mesh_addr(1), 6);
        let told = String::from_utf8(to(&got_closed, bob)).unwrap();
        assert_eq!(
            told,
            format!(r#"{{"type":"channel_closed","channel":{ba}}}"#)
        );
        assert!(a.shared.channels.is_empty() && b.shared.channels.is_empty());
        // Bound again, then bob's end lost (relay-b restarted): alice's next frame finds no end
        // there, and relay-b says so; alice's end closes and she hears it.
        let mut d = Vec::new();
        peer::bind(&mut d, "bob", "alice", &alice_session);
        let sent = a.run(&d, alice, 8);
        let ab = number(&to(&sent, alice));
        let bind = to(&sent, mesh_addr(2));
        let got_bind = mesh(&mut b, &bind, mesh_addr(1), 8);
        let ba = number(&to(&got_bind, bob));
        let node: std::sync::Arc<str> = "relay-a".into();
        assert!(b.shared.channels.close_remote(&node, "alice", ab).is_some());
        let mut f = Vec::new();
        wire::frame::write(&mut f, ab, b"lost");
        let over = to(&a.run(&f, alice, 9), mesh_addr(2));
        let got_over = mesh(&mut b, &over, mesh_addr(1), 9);
        assert_eq!(b.refused(Reason::ChannelGone), 1);
        let gone = to(&got_over, mesh_addr(1));
        let got_gone = mesh(&mut a, &gone, mesh_addr(2), 9);
        let told = String::from_utf8(to(&got_gone, alice)).unwrap();
        assert_eq!(
            told,
            format!(r#"{{"type":"channel_closed","channel":{ab}}}"#)
        );
        assert!(a.shared.channels.is_empty(), "{ba}");
    }

    #[test]
    fn a_bind_to_an_unproven_name_at_another_relay_closes_at_once() {
        let (mut a, mut b) = (
            relay("relay-a", "relay-b", KEY),
            relay("relay-b", "relay-a", KEY),
        );
        let alice_session = prove_now(&mut a, "alice", addr(1));
        register(&mut b, "bob", addr(2));
        let home = Home {
            node: "relay-b".into(),
            mesh: mesh_addr(2),
            epoch: 1,
        };
        assert!(a.shared.cluster.get().unwrap().remote.joined("bob", home));
        let mut d = Vec::new();
        peer::bind(&mut d, "bob", "alice", &alice_session);
        let sent = a.run(&d, addr(1), 2);
        let ab = number(&to(&sent, addr(1)));
        let mut out = Out::default();
        let bind = to(&sent, mesh_addr(2));
        b.router.mesh(&bind, mesh_addr(1), at(2), &mut out);
        let refused = collect(&out, &bind);
        assert!(
            refused.iter().all(|(t, _)| *t != addr(2)),
            "bob told nothing"
        );
        let closed = to(&refused, mesh_addr(1));
        let got_closed = mesh(&mut a, &closed, mesh_addr(2), 3);
        let told = String::from_utf8(to(&got_closed, addr(1))).unwrap();
        assert_eq!(
            told,
            format!(r#"{{"type":"channel_closed","channel":{ab}}}"#)
        );
        assert!(a.shared.channels.is_empty());
    }

    #[test]
    fn peers_of_two_relays_are_introduced_when_both_asked_and_not_before() {
        let (mut a, mut b) = (
            relay("relay-a", "relay-b", KEY),
            relay("relay-b", "relay-a", KEY),
        );
        let (alice, bob) = (addr(1), addr(2));
        let alice_session = prove_now(&mut a, "alice", alice);
        let bob_session = prove_now(&mut b, "bob", bob);
        let home = |node: &str, mesh, epoch| Home {
            node: node.into(),
            mesh: mesh_addr(mesh),
            epoch,
        };
        assert!(
            a.shared
                .cluster
                .get()
                .unwrap()
                .remote
                .joined("bob", home("relay-b", 2, 7))
        );
        assert!(
            b.shared
                .cluster
                .get()
                .unwrap()
                .remote
                .joined("alice", home("relay-a", 1, 3))
        );
        let connect = |name: &str, session: &str, target: &str| {
            let mut d = Vec::new();
            peer::connect(&mut d, target, Some(name), session);
            d
        };
        // Alice asks: relay-b tells bob who asks, and no address.
        let sent = a.run(&connect("alice", &alice_session, "bob"), alice, 2);
        assert!(sent.iter().all(|(t, _)| *t == mesh_addr(2)), "{sent:?}");
        let asked = to(&sent, mesh_addr(2));
        let got_asked = mesh(&mut b, &asked, mesh_addr(1), 2);
        let told = String::from_utf8(to(&got_asked, bob)).unwrap();
        assert_eq!(told, r#"{"type":"connect_request","peer_name":"alice"}"#);
        // A forged introduction (no ask of bob's) hands out nothing.
        let forged = {
            let c = a.shared.cluster.get().unwrap();
            let mut out = Out::default();
            let addr = alice.to_string();
            let via = Via::Introduce("alice");
            assert!(seal(
                c,
                "relay-b",
                "bob",
                via,
                Payload::Bytes(addr.as_bytes()),
                at(3),
                &mut out
            ));
            collect(&out, &[]).remove(0).1
        };
        assert!(mesh(&mut b, &forged, mesh_addr(1), 3).is_empty());
        assert_eq!(b.refused(Reason::MeshUnknownTarget), 1);
        // Bob asks back: relay-a, which holds alice's ask, introduces both.
        let sent = b.run(&connect("bob", &bob_session, "alice"), bob, 4);
        let asked = to(&sent, mesh_addr(1));
        let got_asked = mesh(&mut a, &asked, mesh_addr(2), 4);
        let done = got_asked;
        let to_alice = String::from_utf8(to(&done, alice)).unwrap();
        assert_eq!(
            to_alice,
            format!(r#"{{"type":"introduce","peer_name":"bob","address":"{bob}"}}"#)
        );
        let back = to(&done, mesh_addr(2));
        let got_back = mesh(&mut b, &back, mesh_addr(1), 4);
        let to_bob = String::from_utf8(to(&got_back, bob)).unwrap();
        assert_eq!(
            to_bob,
            format!(r#"{{"type":"introduce","peer_name":"alice","address":"{alice}"}}"#)
        );
    }

    #[test]
    fn without_a_cluster_a_relay_to_an_unknown_name_is_refused_as_before() {
        let mut h = Harness::new(Settings::default());
        h.register("alice", addr(1), 0);
        let mut d = Vec::new();
        peer::relay(&mut d, "alice", "bob", b"1");
        h.run(&d, addr(1), 5);
        assert_eq!(h.refused(Reason::UnknownTarget), 1);
        let mut out = Out::default();
        h.router.mesh(&d, addr(9), at(5), &mut out);
        assert!(out.sends.is_empty());
        assert_eq!(h.refused(Reason::MeshUnknownNode), 1);
    }
}
