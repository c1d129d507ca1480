//! A cluster's mesh in the router (issue 20, begun): a `relay` to a name homed at another relay
//! leaves in one hop as a mesh datagram whose payload is sent from the receive buffer, and a
//! mesh datagram, once checked (a known node, its MAC, a new number), is delivered to the peer
//! homed here as the `relayed_packet` a local relay would have made, byte for byte.

use std::net::SocketAddr;
use std::ops::Range;

use tracing::debug;

use crate::clock::Now;
use crate::mesh::Refused;
use crate::metrics::Counters;
use crate::out::Out;
use crate::refusal::Reason;
use crate::settings::{Auth, MAX_UDP_PAYLOAD};
use crate::wire::mesh::{Head, MAC_LEN, Via, write_head};
use crate::wire::valid_name;

use super::Router;
use super::relay::relayed;

/// `now` in nanoseconds since the Unix epoch (to a quarter of a microsecond): the clock of
/// mesh sequence numbers.
fn unix_ns(now: Now) -> u64 {
    (now.unix * 1e9) as u64
}

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
        let Some((seq, mesh)) = c.nodes.next_seq(&node, unix_ns(now)) else {
            return false;
        };
        let head = Head {
            node: &c.node,
            seq,
            target,
            via: Via::Source(source),
        };
        let start = out.buf.len();
        if !write_head(&mut out.buf, &head, payload.len()) {
            return false;
        }
        let end = out.buf.len();
        if end - start + payload.len() + MAC_LEN > MAX_UDP_PAYLOAD {
            out.buf.truncate(start);
            return false;
        }
        let mac = c
            .keys
            .mac(&node, &[&out.buf[start..end], &d[payload.clone()]]);
        out.buf.extend_from_slice(&mac);
        out.forward_between(mesh, start..end, payload, end..out.buf.len());
        Counters::add(&self.counters.mesh_sent, 1);
        true
    }

    /// Decides mesh datagram `d`, from `from` (another relay of the cluster, which its MAC, not
    /// its address, proves): the `relayed_packet` it carries, to the peer homed here.
    pub fn mesh(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        let refuse = |r: Reason| {
            self.counters.refuse(r);
            debug!(%from, len = d.len(), reason = r.as_str(), "mesh datagram refused");
        };
        let Some(c) = self.shared.cluster.get() else {
            return refuse(Reason::MeshUnknownNode);
        };
        let m = match c.nodes.open(&c.keys, &c.node, unix_ns(now), d) {
            Ok(m) => m,
            Err(Refused::Malformed(_)) => return refuse(Reason::MeshMalformed),
            Err(Refused::UnknownNode) => return refuse(Reason::MeshUnknownNode),
            Err(Refused::BadMac) => return refuse(Reason::MeshBadMac),
            Err(Refused::Replayed) => return refuse(Reason::MeshReplayed),
        };
        // Channels across relays are not carried yet: refused as no datagram this relay reads.
        let Via::Source(source) = m.head.via else {
            return refuse(Reason::MeshMalformed);
        };
        // Another relay's word, but names still obey the name rules before they are used.
        if !valid_name(source) || !valid_name(m.head.target) {
            return refuse(Reason::MeshMalformed);
        }
        let Some((to, trusted)) = self.shared.registry.target_of(m.head.target, now.ms) else {
            return refuse(Reason::MeshUnknownTarget);
        };
        // As for a local relay: where registration is signed, a name that never echoed its
        // cookie here can only have been forged for someone else.
        if self.shared.settings.auth == Auth::Signed && !trusted {
            return refuse(Reason::UnauthenticatedTarget);
        }
        if !relayed(out, to, source, m.payload) {
            return refuse(Reason::TooLarge);
        }
        Counters::add(&self.counters.mesh_delivered, 1);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::cluster::{Cluster, Op};
    use crate::mesh::Keys;
    use crate::out::Out;
    use crate::refusal::Reason;
    use crate::remote::Home;
    use crate::settings::Settings;
    use crate::testing::{Harness, addr, at, collect};
    use crate::wire::peer;

    const KEY: &[u8] = b"the cluster's shared secret, at least 32 bytes";

    /// A relay of a cluster of two: node `me`, taking datagrams from `other`.
    fn relay(me: &str, other: &str, key: &[u8]) -> Harness {
        let h = Harness::new(Settings::default());
        let keys = Keys::new(key).expect("a long enough key");
        let cluster = Cluster::new(me, keys, 1_000, Box::new(|| {}));
        // relay-b is reached at mesh address 2, any other at 1.
        let mesh = mesh_addr(if other == "relay-b" { 2 } else { 1 });
        cluster.nodes.add(other, mesh);
        assert!(h.shared.cluster.set(cluster).is_ok());
        h
    }

    /// Settles every claim `h` queued as the directory would a free name's, deciding each
    /// registration again: what that sent.
    fn settle_claims(h: &mut Harness) -> Vec<(SocketAddr, Vec<u8>)> {
        let c = h.shared.cluster.get().unwrap();
        let mut sent = Vec::new();
        for op in c.take(usize::MAX) {
            if let Op::Claim(p) = op {
                c.homed(&p.name, 1);
                let mut out = Out::default();
                h.router.settle(&p, at(p.at_ms), &mut out);
                sent.extend(collect(&out, &p.datagram));
            }
        }
        sent
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

    fn mesh_addr(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 7000))
    }

    /// Relay B's decision on mesh datagram `d`.
    fn deliver(b: &mut Harness, d: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Out::default();
        b.router.mesh(d, mesh_addr(1), at(10), &mut out);
        collect(&out, d)
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
