//! Attacks on a relay of a cluster, sans-IO (the red team's of issue 20, each a finding fixed):
//! claims that leak, lookups of any size, one host filling the claim queue, announcements of
//! other relays' joins that nobody pays, one relay's names crowding out another's, a node's new
//! mesh address, and signed mode's trust at a mesh delivery.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use relay_core::cluster::{Cluster, MAX_QUEUED, MAX_QUEUED_PER_HOST, Op};
use relay_core::elsewhere;
use relay_core::mesh::Keys;
use relay_core::metrics::Counters;
use relay_core::out::Out;
use relay_core::refusal::Reason;
use relay_core::remote::Home;
use relay_core::settings::Settings;
use relay_core::testing::cluster::{KEY, join, settle_claims};
use relay_core::testing::{Harness, addr, at, collect};
use relay_core::wire::peer;

/// Relay-a of a cluster, knowing at most `max_remote` names of each other node.
fn clustered(settings: Settings, max_remote: usize) -> Harness {
    join(
        Harness::new(settings),
        "relay-a",
        "relay-z",
        KEY,
        max_remote,
    )
}

fn register(h: &mut Harness, name: &str, from: SocketAddr, ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut d = Vec::new();
    peer::register(&mut d, name, None);
    h.run(&d, from, ms)
}

/// A claim the directory granted for a registration refused after all (its address full, the
/// registry full) is released: the name is neither homed here nor held in the directory for no
/// one (which grew memory by input, and made the name `name_in_use` at every other relay).
#[test]
fn a_claim_whose_registration_is_refused_after_all_is_released() {
    let s = Settings {
        max_names_per_address: 1,
        ..Settings::default()
    };
    let mut h = clustered(s, 100);
    let forger = addr(1);
    register(&mut h, "first", forger, 0);
    settle_claims(&mut h);
    assert!(h.shared.registry.session_at("first", forger, 0).is_some());
    // Every further name from the same address: claimed (as far as the host's share of the
    // queue goes), then refused address_full.
    for i in 0..1000 {
        register(&mut h, &format!("squat-{i}"), forger, 0);
    }
    let queued = MAX_QUEUED_PER_HOST as u64;
    assert_eq!(h.refused(Reason::ClusterBusy), 1000 - queued);
    settle_claims(&mut h);
    assert_eq!(
        h.refused(Reason::AddressFull),
        queued,
        "each refused at settle"
    );
    assert_eq!(h.shared.registry.len(), 1, "only `first` is registered");
    let c = h.shared.cluster.get().unwrap();
    // Each claim the directory granted is released.
    let releases = c
        .take(usize::MAX)
        .into_iter()
        .filter(|op| matches!(op, Op::Release(..)))
        .count();
    assert_eq!((c.home_count(), releases as u64), (1, queued));
}

/// A `relay` to a target no registration can have (60,000 bytes) asks the directory nothing:
/// only names are looked up, and the lookup queue holds nothing larger than one.
#[test]
fn a_relay_to_a_name_no_registration_can_have_asks_the_directory_nothing() {
    let mut h = clustered(Settings::default(), 100);
    register(&mut h, "alice", addr(1), 0);
    settle_claims(&mut h);
    let target = "x".repeat(60_000);
    let mut d = Vec::new();
    peer::relay(&mut d, "alice", &target, b"\"hi\"");
    h.run(&d, addr(1), 1);
    let c = h.shared.cluster.get().unwrap();
    let longest = c
        .take(usize::MAX)
        .into_iter()
        .filter_map(|op| match op {
            Op::Lookup(n) => Some(n.len()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert!(
        longest <= 64,
        "a lookup of a {longest}-byte target was queued (MAX_NAME is 64)"
    );
}

/// One host registering from a hundred ports (each its own registration bucket) holds only its
/// share of the claims waiting: a newcomer of another network is queued, and a peer's release
/// is never refused for a full queue.
#[test]
fn one_hosts_flood_of_claims_leaves_room_for_newcomers_and_releases() {
    let mut s = Settings::recommended();
    s.max_names_per_address = 128;
    let mut h = clustered(s, 100);
    // A legit peer homed here before the flood.
    register(&mut h, "bob", addr(2), 0);
    settle_claims(&mut h);
    // One forging host, 100 source ports, 200 new names each (its registration burst).
    let mut queued = 0;
    for port in 0..100u16 {
        let from = SocketAddr::from(([203, 0, 113, 9], 20_000 + port));
        for i in 0..200 {
            register(&mut h, &format!("f{port}-{i}"), from, 1);
            queued += 1;
        }
    }
    let shared = h.shared.clone();
    let c = shared.cluster.get().unwrap();
    assert!(queued > MAX_QUEUED);
    // A newcomer on another network, same instant.
    let before = h.refused(Reason::ClusterBusy);
    register(&mut h, "carol", addr(3), 1);
    let busy = h.refused(Reason::ClusterBusy) > before;
    // bob leaves: his release is queued all the same.
    let mut d = Vec::new();
    let session = h.session("bob", addr(2));
    peer::unregister(&mut d, "bob", &session);
    h.run(&d, addr(2), 1);
    let release_queued = c
        .take(usize::MAX)
        .into_iter()
        .any(|op| matches!(op, Op::Release(ref n, _) if n == "bob"));
    eprintln!(
        "queue_full = {}, carol busy = {busy}, bob's release queued = {release_queued}",
        c.stats.queue_full.load(Ordering::Relaxed)
    );
    assert!(
        !busy && release_queued,
        "one host's flood refused a newcomer from another network cluster_busy ({busy}) and \
         dropped a release ({})",
        !release_queued
    );
}

/// A join homed at another relay is told here paid by the host whose registration caused it
/// (its budgets here): a host out of its fan-out allowance gets no more announcements at the
/// other relays than at its own.
#[test]
fn other_relays_joins_are_paid_by_the_host_that_caused_them() {
    let mut s = Settings::recommended();
    s.announce_max = 1000;
    // A tiny fan-out allowance, so that the causing host is out of it at its own relay.
    s.fanout_allowance = 1;
    let mut a = clustered(s.clone(), 1000);
    let mut b = Harness::new(s);
    let keys = Keys::new(&[7; 32]).unwrap();
    assert!(
        b.shared
            .cluster
            .set(Cluster::new("relay-b", keys, 1000, Box::new(|| {})))
            .is_ok()
    );
    // 20 proven peers at each relay.
    for i in 10..30 {
        let p = addr(i);
        for (h, n) in [(&mut a, format!("a{i}")), (&mut b, format!("b{i}"))] {
            register(h, &n, p, 0);
            settle_claims(h);
            let session = h.session(&n, p);
            let mut d = Vec::new();
            peer::ping(&mut d, Some(&n), Some(&session));
            h.run(&d, p, 0);
        }
    }
    // The forger registers 20 names at relay-a from one host (fan-out allowance spent).
    let forger = SocketAddr::from(([198, 51, 100, 7], 4000));
    let mut told_at_a = 0;
    let mut told_at_b = 0;
    let c = Counters::default();
    let mesh = SocketAddr::from(([192, 0, 2, 1], 7000));
    for i in 0..20 {
        let name = format!("forged-{i}");
        register(&mut a, &name, forger, 100 + i);
        told_at_a += settle_claims(&mut a)
            .iter()
            .filter(|(to, d)| *to != forger && String::from_utf8_lossy(d).contains("peer_joined"))
            .count();
        // The directory's join event reaches relay-b.
        let mut out = Out::default();
        let home = Home {
            node: "relay-a".into(),
            mesh,
            epoch: 10 + i,
        };
        elsewhere::joined(
            &b.shared,
            &name,
            home,
            Some(forger.ip()),
            at(100 + i),
            &mut out,
            &c,
        );
        told_at_b += collect(&out, &[])
            .iter()
            .filter(|(_, d)| String::from_utf8_lossy(d).contains("peer_joined"))
            .count();
    }
    eprintln!("peer_joined told at relay-a: {told_at_a}, at relay-b: {told_at_b}");
    assert!(
        told_at_b <= told_at_a,
        "relay-b announced {told_at_b} joins the causing host could not pay for at relay-a \
         ({told_at_a})"
    );
}

/// The view of names homed elsewhere holds each node's names within a share: one relay's names
/// (its registry filled with forged ones) leave room for a third relay's, which stay reachable.
#[test]
fn one_relays_names_cannot_crowd_out_anothers() {
    let mut h = clustered(Settings::default(), 10);
    register(&mut h, "alice", addr(1), 0);
    settle_claims(&mut h);
    let c = Counters::default();
    let mut out = Out::default();
    let b = SocketAddr::from(([192, 0, 2, 2], 7000));
    let cc = SocketAddr::from(([192, 0, 2, 3], 7000));
    for i in 0..10 {
        let home = Home {
            node: "relay-b".into(),
            mesh: b,
            epoch: 1 + i,
        };
        elsewhere::joined(
            &h.shared,
            &format!("forged-{i}"),
            home,
            None,
            at(1),
            &mut out,
            &c,
        );
    }
    let home = Home {
        node: "relay-c".into(),
        mesh: cc,
        epoch: 100,
    };
    elsewhere::joined(&h.shared, "carol", home, None, at(2), &mut out, &c);
    let mut d = Vec::new();
    peer::relay(&mut d, "alice", "carol", b"\"hi\"");
    let sent = h.run(&d, addr(1), 3);
    let to_mesh = sent.iter().any(|(to, _)| *to == cc);
    assert!(
        to_mesh,
        "a relay to carol (homed at relay-c) did not leave for relay-c: {:?}, refused \
         unknown_target {}",
        sent.iter()
            .map(|(t, d)| (t, String::from_utf8_lossy(d).to_string()))
            .collect::<Vec<_>>(),
        h.refused(Reason::UnknownTarget)
    );
}

/// A node restarted at a new mesh address (the same id, its names claimed again at the same
/// epochs, so no join is published) is sent its names' forwards at the new address at once.
#[test]
fn a_nodes_new_mesh_address_is_used_at_once() {
    let mut h = clustered(Settings::default(), 10);
    register(&mut h, "alice", addr(1), 0);
    settle_claims(&mut h);
    let c = Counters::default();
    let mut out = Out::default();
    let old = SocketAddr::from(([192, 0, 2, 2], 7000));
    let new = SocketAddr::from(([192, 0, 2, 22], 7000));
    let home = |mesh| Home {
        node: "relay-b".into(),
        mesh,
        epoch: 5,
    };
    elsewhere::nodes(&h.shared, &[("relay-b".into(), old)], at(1), &mut out, &c);
    elsewhere::joined(&h.shared, "bob", home(old), None, at(1), &mut out, &c);
    // relay-b comes back at a new mesh address; the directory's fill says bob, epoch 5.
    elsewhere::nodes(&h.shared, &[("relay-b".into(), new)], at(2), &mut out, &c);
    elsewhere::joined(&h.shared, "bob", home(new), None, at(2), &mut out, &c);
    let mut d = Vec::new();
    peer::relay(&mut d, "alice", "bob", b"\"hi\"");
    let sent = h.run(&d, addr(1), 3);
    let to: Vec<SocketAddr> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        to,
        vec![new],
        "the relay went to the node's old mesh address"
    );
}

/// In signed mode a mesh delivery, like a local relay, goes only to a registration that proved
/// itself where it lives (one that never did can only be forged).
#[test]
fn in_signed_mode_a_mesh_delivery_goes_only_to_a_proven_registration() {
    use relay_core::registry::Proof;
    use relay_core::settings::Auth;
    use relay_core::wire::mesh::{Head, Via, write_head};
    let s = Settings {
        auth: Auth::Signed,
        ..Settings::default()
    };
    let mut b = Harness::new(s);
    let keys = Keys::new(&[7; 32]).unwrap();
    let cl = Cluster::new("relay-b", keys, 10, Box::new(|| {}));
    cl.nodes
        .add("relay-a", SocketAddr::from(([192, 0, 2, 1], 7000)), 0);
    assert!(b.shared.cluster.set(cl).is_ok());
    // An unproven registration (as from a restored state image of an open relay).
    b.shared
        .registry
        .claim("bob", addr(2), Proof::Token(None), 0, usize::MAX);
    let unix_us = (at(10).unix * 1e6) as u64;
    let head = Head {
        node: "relay-a",
        seq: unix_us,
        stream: 0,
        target: "bob",
        via: Via::Source("alice"),
    };
    let mut d = Vec::new();
    assert!(write_head(&mut d, &head, 4));
    d.extend_from_slice(b"\"hi\"");
    let mac = Keys::new(&[7; 32]).unwrap().mac("relay-b", &[&d]);
    d.extend_from_slice(&mac);
    let mut out = Out::default();
    b.router.mesh(
        &d,
        SocketAddr::from(([192, 0, 2, 1], 7000)),
        at(10),
        &mut out,
    );
    let sent = collect(&out, &d);
    assert!(
        sent.is_empty(),
        "delivered over the mesh to an unproven target in signed mode: {:?}",
        sent.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
}
