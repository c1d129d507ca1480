//! Channels across relays under attack and reordering, sans-IO (the red team's second round):
//! mesh datagrams of two workers reordered by microseconds, a closed end overtaken by a later
//! datagram, a bind refused for the target's share, and every way a channel closes emptying
//! both relays' tables.

use std::net::SocketAddr;

use relay_core::out::Out;
use relay_core::refusal::Reason;
use relay_core::remote::Home;
use relay_core::router::Router;
use relay_core::settings::Settings;
use relay_core::testing::cluster::{KEY, join, mesh, mesh_addr, prove, relay};
use relay_core::testing::{Harness, addr, at, collect};
use relay_core::wire::{self, peer};

type Sent = Vec<(SocketAddr, Vec<u8>)>;

/// `a` hears that `name` is homed at the other node.
fn homed_there(a: &Harness, name: &str, node: &str, mesh: SocketAddr) {
    let home = Home {
        node: node.into(),
        mesh,
        epoch: 1,
    };
    a.shared.cluster.get().unwrap().remote.joined(name, home);
}

fn to(sent: &Sent, to: SocketAddr) -> Vec<Vec<u8>> {
    sent.iter()
        .filter(|(t, _)| *t == to)
        .map(|(_, d)| d.clone())
        .collect()
}

fn one(sent: &Sent, t: SocketAddr) -> Vec<u8> {
    let mut all = to(sent, t);
    assert_eq!(all.len(), 1, "one datagram to {t}: {sent:?}");
    all.remove(0)
}

fn number(json: &[u8]) -> u32 {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    v["channel"].as_u64().unwrap() as u32
}

fn bind(h: &mut Harness, me: &str, session: &str, from: SocketAddr, target: &str, ms: u64) -> Sent {
    let mut d = Vec::new();
    peer::bind(&mut d, target, me, session);
    h.run(&d, from, ms)
}

/// A bind across relays refused at the target's relay because the target's incoming share is
/// full is counted there as `channel_limit`, as a local bind would be (not as `untrusted_peer`:
/// the target is proven).
#[test]
fn a_cross_relay_bind_refused_for_the_targets_incoming_share_is_counted_as_channel_limit() {
    let s = || Settings {
        max_channels: 1,
        ..Settings::default()
    };
    let (mut a, mut b) = (
        relay("relay-a", "relay-b", s()),
        relay("relay-b", "relay-a", s()),
    );
    prove(&mut b, "bob", addr(2), 0);
    homed_there(&a, "bob", "relay-b", mesh_addr(2));
    // Five binders at relay-a; bob may be bound by 4 × max_channels = 4.
    for i in 0..5u16 {
        let name = format!("binder{i}");
        let from = addr(10 + i);
        let session = prove(&mut a, &name, from, 0);
        let sent = bind(&mut a, &name, &session, from, "bob", 1);
        mesh(&mut b, &one(&sent, mesh_addr(2)), mesh_addr(1), 1);
    }
    assert_eq!(b.shared.channels.len(), 4);
    assert_eq!(
        (
            b.refused(Reason::ChannelLimit),
            b.refused(Reason::UntrustedPeer)
        ),
        (1, 0),
        "the fifth bind's refusal is counted under its cause"
    );
}

/// Two workers of relay-a each seal a frame for relay-b 10 µs apart and flush their batches in
/// the other order (as `sendmmsg` batches of two threads do): both are delivered, each worker
/// sealing in a stream of its own (a shared sequence in nanoseconds refused the older one as a
/// replay, and a lost Closed left an end at relay-b its owner believed bound).
#[test]
fn two_workers_frames_reordered_by_microseconds_are_both_delivered() {
    let s = Settings::default;
    let (mut a, mut b) = (
        relay("relay-a", "relay-b", s()),
        relay("relay-b", "relay-a", s()),
    );
    let (alice, dave, bob) = (addr(1), addr(3), addr(2));
    let alice_session = prove(&mut a, "alice", alice, 0);
    let dave_session = prove(&mut a, "dave", dave, 0);
    prove(&mut b, "bob", bob, 0);
    homed_there(&a, "bob", "relay-b", mesh_addr(2));
    let mut numbers = Vec::new();
    for (me, sess, from) in [
        ("alice", &alice_session, alice),
        ("dave", &dave_session, dave),
    ] {
        let sent = bind(&mut a, me, sess, from, "bob", 1);
        numbers.push(number(&one(&sent, from)));
        mesh(&mut b, &one(&sent, mesh_addr(2)), mesh_addr(1), 1);
    }
    assert_eq!(b.shared.channels.len(), 2);
    // Workers 0 and 1 of relay-a, over its shared state.
    let mut w0 = Router::new(a.shared.clone(), 0);
    let mut w1 = Router::new(a.shared.clone(), 1);
    let t = at(5);
    let later = relay_core::Now {
        ms: 5,
        unix: t.unix + 10e-6,
    };
    let seal = |w: &mut Router, n: u32, from, now| {
        let mut f = Vec::new();
        wire::frame::write(&mut f, n, b"media");
        let mut out = Out::default();
        w.handle(&mut f, from, now, &mut out);
        one(&collect(&out, &f), mesh_addr(2))
    };
    let first = seal(&mut w0, numbers[0], alice, t);
    let second = seal(&mut w1, numbers[1], dave, later);
    // Worker 1 flushes first.
    let got_second = mesh(&mut b, &second, mesh_addr(1), 5);
    let got_first = mesh(&mut b, &first, mesh_addr(1), 5);
    assert_eq!(to(&got_second, bob).len(), 1);
    assert_eq!(
        to(&got_first, bob).len(),
        1,
        "alice's frame, sealed 10 µs before dave's and delivered after it, was refused \
         (mesh_replayed: {})",
        b.refused(Reason::MeshReplayed)
    );
}

/// The Closed that ends a channel, sealed when alice unbinds, overtaken by 1 ms by a frame on
/// her other channel to relay-b (the network reordering one stream): still taken, so bob's end
/// closes and he hears it (a window of microseconds spans a millisecond of reordering).
#[test]
fn a_closed_overtaken_by_a_later_datagram_still_closes_the_other_end() {
    let s = Settings::default;
    let (mut a, mut b) = (
        relay("relay-a", "relay-b", s()),
        relay("relay-b", "relay-a", s()),
    );
    let (alice, bob, carol) = (addr(1), addr(2), addr(4));
    let alice_session = prove(&mut a, "alice", alice, 0);
    prove(&mut b, "bob", bob, 0);
    prove(&mut b, "carol", carol, 0);
    homed_there(&a, "bob", "relay-b", mesh_addr(2));
    homed_there(&a, "carol", "relay-b", mesh_addr(2));
    let mut numbers = Vec::new();
    for target in ["bob", "carol"] {
        let sent = bind(&mut a, "alice", &alice_session, alice, target, 1);
        numbers.push(number(&one(&sent, alice)));
        mesh(&mut b, &one(&sent, mesh_addr(2)), mesh_addr(1), 1);
    }
    let mut d = Vec::new();
    peer::unbind(&mut d, numbers[0], "alice", &alice_session);
    let closed = one(&a.run(&d, alice, 2), mesh_addr(2));
    let mut f = Vec::new();
    wire::frame::write(&mut f, numbers[1], b"x");
    let frame = one(&a.run(&f, alice, 3), mesh_addr(2));
    mesh(&mut b, &frame, mesh_addr(1), 3);
    let told = mesh(&mut b, &closed, mesh_addr(1), 3);
    assert_eq!(
        (
            to(&told, bob).len(),
            b.shared.channels.len(),
            a.shared.channels.len()
        ),
        (1, 1, 1),
        "bob's end outlives alice's (mesh_replayed: {})",
        b.refused(Reason::MeshReplayed)
    );
}

/// Every close path across relays returns both tables to empty: unbind from either side, the
/// binder or the target leaving, a node gone, a frame finding no end, an eviction.
#[test]
fn every_close_path_across_relays_empties_both_tables() {
    let s = || Settings {
        max_channels: 4,
        max_channels_per_host: 8,
        ..Settings::default()
    };
    let (mut a, mut b) = (
        relay("relay-a", "relay-b", s()),
        relay("relay-b", "relay-a", s()),
    );
    let names_a: Vec<(String, SocketAddr)> = (0..6u16)
        .map(|i| (format!("a{i}"), addr(100 + i)))
        .collect();
    let names_b: Vec<(String, SocketAddr)> = (0..6u16)
        .map(|i| (format!("b{i}"), addr(200 + i)))
        .collect();
    let mut sess_a = Vec::new();
    let mut sess_b = Vec::new();
    for (n, f) in &names_a {
        sess_a.push(prove(&mut a, n, *f, 0));
        homed_there(&b, n, "relay-a", mesh_addr(1));
    }
    for (n, f) in &names_b {
        sess_b.push(prove(&mut b, n, *f, 0));
        homed_there(&a, n, "relay-b", mesh_addr(2));
    }
    // Everyone binds everyone across, both ways; each mesh datagram delivered.
    let mut ms = 1;
    let pump = |a: &mut Harness, b: &mut Harness, sent: Sent, from_a: bool, ms: u64| {
        let mut queue: Vec<(bool, Vec<u8>)> = sent
            .into_iter()
            .filter(|(t, _)| *t == mesh_addr(1) || *t == mesh_addr(2))
            .map(|(t, d)| (t == mesh_addr(2), d))
            .collect();
        let _ = from_a;
        while let Some((to_b, d)) = queue.pop() {
            let got = if to_b {
                mesh(b, &d, mesh_addr(1), ms)
            } else {
                mesh(a, &d, mesh_addr(2), ms)
            };
            for (t, d) in got {
                if t == mesh_addr(1) || t == mesh_addr(2) {
                    queue.push((t == mesh_addr(2), d));
                }
            }
        }
    };
    for (i, (n, f)) in names_a.iter().enumerate() {
        for (t, _) in &names_b {
            let sent = bind(&mut a, n, &sess_a[i], *f, t, ms);
            pump(&mut a, &mut b, sent, true, ms);
        }
    }
    for (i, (n, f)) in names_b.iter().enumerate() {
        for (t, _) in &names_a {
            let sent = bind(&mut b, n, &sess_b[i], *f, t, ms);
            pump(&mut a, &mut b, sent, false, ms);
        }
    }
    ms += 1;
    assert_eq!(a.shared.channels.len(), b.shared.channels.len());
    assert!(!a.shared.channels.is_empty());
    // Close by every path: a0 unregisters, b0 unregisters, a1 evicted, the rest unbind, then
    // a node gone.
    let mut d = Vec::new();
    peer::unregister(&mut d, "a0", &sess_a[0]);
    let sent = a.run(&d, names_a[0].1, ms);
    pump(&mut a, &mut b, sent, true, ms);
    let mut d = Vec::new();
    peer::unregister(&mut d, "b0", &sess_b[0]);
    let sent = b.run(&d, names_b[0].1, ms);
    pump(&mut a, &mut b, sent, false, ms);
    let c = relay_core::metrics::Counters::default();
    let mut out = Out::default();
    relay_core::elsewhere::evicted(&a.shared, "a1", at(ms), &mut out, &c);
    pump(&mut a, &mut b, collect(&out, &[]), true, ms);
    assert_eq!(
        a.shared.channels.len(),
        b.shared.channels.len(),
        "both tables agree after unregisters and an eviction"
    );
    // Relay-b's view: relay-a goes; relay-a's view: relay-b goes.
    let mut out = Out::default();
    relay_core::elsewhere::nodes(&a.shared, &[], at(ms), &mut out, &c);
    let mut out = Out::default();
    relay_core::elsewhere::nodes(&b.shared, &[], at(ms), &mut out, &c);
    assert_eq!(
        (a.shared.channels.len(), b.shared.channels.len()),
        (0, 0),
        "node gone empties both"
    );
    // Each may bind its full quota again (per-host and per-peer counters back at zero).
    let b_view = |a: &Harness| {
        a.shared
            .cluster
            .get()
            .unwrap()
            .nodes
            .add("relay-b", mesh_addr(2), 0);
    };
    b_view(&a);
    for t in ["b1", "b2", "b3", "b4"] {
        homed_there(&a, t, "relay-b", mesh_addr(2));
        let sent = bind(&mut a, "a2", &sess_a[2], names_a[2].1, t, ms);
        assert_eq!(to(&sent, mesh_addr(2)).len(), 1, "bound {t}");
    }
}

/// A takeover hands the ends of channels across relays over: after relay-b's upgrade (its state
/// handed over as `--takeover` does), bob's frames still reach alice at relay-a, and hers him.
#[test]
fn a_takeover_keeps_the_ends_of_channels_across_relays() {
    let s = Settings::default;
    let (mut a, mut b) = (
        relay("relay-a", "relay-b", s()),
        relay("relay-b", "relay-a", s()),
    );
    let (alice, bob) = (addr(1), addr(2));
    let alice_session = prove(&mut a, "alice", alice, 0);
    prove(&mut b, "bob", bob, 0);
    homed_there(&a, "bob", "relay-b", mesh_addr(2));
    let sent = bind(&mut a, "alice", &alice_session, alice, "bob", 1);
    let ab = number(&one(&sent, alice));
    let told = mesh(&mut b, &one(&sent, mesh_addr(2)), mesh_addr(1), 1);
    let ba = number(&one(&told, bob));
    let image = udp_relay::state::export(&b.shared, udp_relay::clock::Clock::resumed(1));
    let (state, _) = udp_relay::state::restore(&image, s(), 1, false).unwrap();
    let shared = state.shared;
    let b2 = Harness {
        router: Router::new(shared.clone(), 0),
        shared,
        out: Out::default(),
    };
    let mut b2 = join(b2, "relay-b", "relay-a", KEY, 1_000);
    assert_eq!(b2.shared.channels.len(), 1, "bob's end handed over");
    let now = state.clock.now().ms;
    let mut f = Vec::new();
    wire::frame::write(&mut f, ba, b"media");
    let over = one(&b2.run(&f, bob, now + 1), mesh_addr(1));
    let mut want = Vec::new();
    wire::frame::write(&mut want, ab, b"media");
    assert_eq!(
        one(&mesh(&mut a, &over, mesh_addr(2), now + 1), alice),
        want
    );
    let mut f = Vec::new();
    wire::frame::write(&mut f, ab, b"back");
    let back = one(&a.run(&f, alice, now + 2), mesh_addr(2));
    let mut want = Vec::new();
    wire::frame::write(&mut want, ba, b"back");
    assert_eq!(one(&mesh(&mut b2, &back, mesh_addr(1), now + 2), bob), want);
}
