//! The peer in a simulated network (`sim`): every pair of NAT models, hairpinning, loss,
//! duplication and reordering, path switches both ways, a rebinding, a relay restart, replays
//! and forgeries, a changed key. Virtual time: seconds of protocol run in milliseconds, the same
//! way every run.

mod sim;

use std::collections::HashMap;
use std::time::Duration;

use sim::{Links, NatKind, Sim, fast, ms, pair};
use udp_peer::{Event, Via};

#[test]
fn every_pair_of_nat_models_goes_direct_where_it_can_and_stays_on_the_channel_where_it_cannot() {
    let mut table = Vec::new();
    for (an, a) in NatKind::ALL {
        for (bn, b) in NatKind::ALL {
            let mut s = pair(7, a, b, Links::default(), |_| {});
            s.run(ms(30_000), |s| s.is_direct(0) && s.is_direct(1));
            s.say(0, "bob", "hello bob");
            s.say(1, "alice", "hello alice");
            s.run(ms(40_000), |s| {
                !s.received(0).is_empty() && !s.received(1).is_empty()
            });
            let want = NatKind::direct_possible(a, b);
            let via = if want { Via::Direct } else { Via::Relay };
            assert_eq!(
                s.received(1),
                [("hello bob".to_string(), via)],
                "{an} → {bn}"
            );
            assert_eq!(
                s.received(0),
                [("hello alice".to_string(), via)],
                "{bn} → {an}"
            );
            assert_eq!(
                (s.is_direct(0), s.is_direct(1)),
                (want, want),
                "{an} / {bn}"
            );
            table.push(format!("{an:>18} / {bn:<18} {:?}", s.direct_at(0)));
        }
    }
    println!("{}", table.join("\n"));
}

#[test]
fn peers_behind_one_nat_go_direct_on_their_lan_with_or_without_hairpinning() {
    for hairpin in [false, true] {
        for kind in [NatKind::PORT_RESTRICTED, NatKind::SYMMETRIC] {
            let mut s = Sim::new(3, Links::default());
            let n = s.nat(kind, hairpin);
            let (ca, cb) = (s.config("alice", 1), s.config("bob", 2));
            let alice = s.host(Some(n), ca);
            let bob = s.host(Some(n), cb);
            s.connect(alice, "bob");
            assert!(
                s.run(ms(10_000), |s| s.is_direct(0) && s.is_direct(1)),
                "hairpin {hairpin}, {kind:?}"
            );
            s.say(bob, "alice", "neighbour");
            s.run(ms(12_000), |s| !s.received(0).is_empty());
            assert_eq!(s.received(alice), [("neighbour".to_string(), Via::Direct)]);
        }
    }
}

/// Sends `n` numbered messages each way, one every `every`, running the simulation between
/// them and calling `at(i, sim)` before message `i`.
fn stream_both_ways(s: &mut Sim, n: usize, every: Duration, mut at: impl FnMut(usize, &mut Sim)) {
    for i in 0..n {
        at(i, s);
        s.say(0, "bob", &format!("a{i}"));
        s.say(1, "alice", &format!("b{i}"));
        let until = s.now + every;
        s.run(until, |_| false);
    }
    let until = s.now + ms(60_000);
    assert!(
        s.run(until, |s| s.received(0).len() >= n
            && s.received(1).len() >= n),
        "every message arrives: alice got {}, bob {}",
        s.received(0).len(),
        s.received(1).len()
    );
}

fn paths_taken(s: &Sim, h: usize) -> Vec<Via> {
    s.hosts[h]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::PathChanged { via, .. } => Some(*via),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_is_lost_duplicated_or_reordered_across_switches_on_a_lossy_network() {
    let links = Links {
        latency: ms(15),
        jitter: ms(25),
        loss: 5,
        dup: 5,
    };
    let mut s = pair(
        11,
        NatKind::PORT_RESTRICTED,
        NatKind::RESTRICTED,
        links,
        fast,
    );
    let n = 400;
    // Messages flow from the first moment (over the relay), through the switch to the direct
    // path, through a cut of it (consent lapses, back to the relay), and its repair.
    stream_both_ways(&mut s, n, ms(40), |i, s| {
        if i == 150 {
            s.cut.insert((0, 1));
        }
        if i == 260 {
            s.cut.clear();
        }
    });
    for (h, prefix) in [(0, "b"), (1, "a")] {
        let got = s.received(h);
        let texts: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        let want: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(texts, want, "in order, each once");
        assert!(
            got.iter().any(|(_, v)| *v == Via::Relay) && got.iter().any(|(_, v)| *v == Via::Direct)
        );
        assert_eq!(
            paths_taken(&s, h),
            [Via::Direct, Via::Relay, Via::Direct],
            "no flapping"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = || {
        let links = Links {
            latency: ms(15),
            jitter: ms(25),
            loss: 10,
            dup: 10,
        };
        let mut s = pair(5, NatKind::FULL_CONE, NatKind::SYMMETRIC, links, fast);
        stream_both_ways(&mut s, 50, ms(30), |_, _| {});
        let evs: Vec<String> = s
            .hosts
            .iter()
            .flat_map(|h| h.events.iter().map(|(t, e)| format!("{t:?} {e:?}")))
            .collect();
        evs
    };
    assert_eq!(run(), run());
}

#[test]
fn a_rebinding_is_followed_without_losing_a_message() {
    let mut s = pair(
        13,
        NatKind::FULL_CONE,
        NatKind::PORT_RESTRICTED,
        Links::default(),
        fast,
    );
    assert!(s.run(ms(30_000), |s| s.is_direct(0) && s.is_direct(1)));
    stream_both_ways(&mut s, 200, ms(50), |i, s| {
        if i == 50 {
            s.rebind(0);
        }
    });
    assert!(
        s.hosts[0]
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::AddressChanged { .. })),
        "alice noticed her new address"
    );
    let until = s.now + ms(10_000);
    assert!(
        s.run(until, |s| s.is_direct(0) && s.is_direct(1)),
        "direct again"
    );
    s.say(1, "alice", "after");
    let until = s.now + ms(5_000);
    s.run(until, |s| s.received(0).len() > 200);
    assert_eq!(
        s.received(0).last().unwrap(),
        &("after".to_string(), Via::Direct)
    );
}

#[test]
fn a_relay_restart_is_followed_by_registering_and_binding_again() {
    let mut s = pair(
        17,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    s.say(0, "bob", "before");
    s.run(ms(25_000), |s| s.received(1).len() == 1);
    s.relay = relay_core::testing::Harness::new(relay_core::settings::Settings::recommended());
    s.say(0, "bob", "during");
    let until = s.now + ms(30_000);
    assert!(
        s.run(until, |s| s.received(1).len() == 2),
        "{:?}",
        s.hosts[0].events
    );
    assert_eq!(
        s.received(1),
        [
            ("before".to_string(), Via::Relay),
            ("during".to_string(), Via::Relay)
        ]
    );
    let registered = s.hosts[0]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Registered { .. }))
        .count();
    assert_eq!(registered, 2, "registered again");
}

#[test]
fn replayed_forged_and_altered_datagrams_are_refused() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut s = pair(
        19,
        NatKind::FULL_CONE,
        NatKind::FULL_CONE,
        Links::default(),
        fast,
    );
    assert!(s.run(ms(30_000), |s| s.is_direct(1)));
    let bob_public = s.hosts[1].peer.status().public.unwrap();
    let attacker: std::net::SocketAddr = "192.0.2.66:666".parse().unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    // Everything sent to bob directly is replayed, from its sender and from elsewhere, altered
    // in one byte, and imitated with a right header and random bytes.
    s.tap = Some(Box::new(move |from, to, d: &[u8]| {
        if to != bob_public || d.first() != Some(&0xE1) {
            return Vec::new();
        }
        log.borrow_mut().push(d.len());
        // Under nonces far ahead, which the window would take: only the key refuses them.
        let ahead = |d: &mut Vec<u8>| d[5] = d[5].wrapping_add(1);
        let mut altered = d.to_vec();
        ahead(&mut altered);
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let mut forged = d[..13].to_vec();
        ahead(&mut forged);
        forged.extend((0..40).map(|i| i as u8));
        vec![
            (from, to, d.to_vec()),
            (attacker, to, d.to_vec()),
            (from, to, altered),
            (attacker, to, forged),
        ]
    }));
    stream_both_ways(&mut s, 30, ms(50), |_, _| {});
    let got: Vec<String> = s.received(1).into_iter().map(|(t, _)| t).collect();
    assert_eq!(got, (0..30).map(|i| format!("a{i}")).collect::<Vec<_>>());
    let attacks = seen.borrow().len() as u64;
    assert!(attacks >= 30, "the attacks ran");
    let refused = s.hosts[1].peer.refused();
    use udp_peer::noise::Refused;
    // Each replayed twice, once altered, once forged.
    assert!(refused[&Refused::Replayed] >= 2 * attacks, "{refused:?}");
    assert!(refused[&Refused::Unauthentic] >= 2 * attacks, "{refused:?}");
    assert!(
        s.hosts[1].peer.status().peers[0].addr != Some(attacker),
        "no path to the attacker"
    );
}

#[test]
fn a_changed_key_is_refused_loudly_and_nothing_is_delivered() {
    let mut s = Sim::new(23, Links::default());
    let (na, nb) = (
        s.nat(NatKind::FULL_CONE, false),
        s.nat(NatKind::FULL_CONE, false),
    );
    let alice = s.host(Some(na), s.config("alice", 1));
    let cb = s.config("bob", 2);
    // Bob pinned another key for alice before.
    let known = HashMap::from([("alice".to_string(), [9u8; 32])]);
    s.hosts.push(sim::Host {
        peer: udp_peer::Peer::new(cb, known, s.at()),
        addr: "192.168.1.9:5000".parse().unwrap(),
        nat: Some(nb),
        events: Vec::new(),
    });
    s.connect(alice, "bob");
    s.run(ms(5_000), |_| false);
    let now = s.at();
    let _ = s.hosts[0].peer.send("bob", b"secret", now);
    s.run(ms(10_000), |_| false);
    assert!(
        s.hosts[1]
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::KeyMismatch { name, .. } if name == "alice"))
    );
    assert!(s.received(1).is_empty());
    assert!(!s.connected(1));
}

#[test]
fn the_relay_carries_only_ciphertext() {
    let mut s = pair(
        29,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        |_| {},
    );
    s.say(0, "bob", "attack at dawn");
    s.run(ms(30_000), |s| !s.received(1).is_empty());
    assert_eq!(s.received(1), [("attack at dawn".to_string(), Via::Relay)]);
    for d in &s.relay_bytes {
        assert!(
            !d.windows(6).any(|w| w == b"attack"),
            "plaintext at the relay"
        );
    }
}

#[test]
fn a_direct_path_carries_on_while_the_relay_is_away() {
    let mut s = pair(
        31,
        NatKind::FULL_CONE,
        NatKind::PORT_RESTRICTED,
        Links::default(),
        fast,
    );
    assert!(s.run(ms(30_000), |s| s.is_direct(0) && s.is_direct(1)));
    s.relay_down = true;
    // Long enough for keepalives to go unanswered and the links to register again (and fail).
    stream_both_ways(&mut s, 200, ms(100), |_, _| {});
    for h in [0, 1] {
        assert!(s.received(h).iter().all(|(_, v)| *v == Via::Direct));
        assert_eq!(paths_taken(&s, h), [Via::Direct], "never back to the relay");
        assert!(!s.hosts[h].peer.status().registered, "the relay is away");
    }
}

#[test]
fn a_direct_path_blocked_one_way_loses_its_consent_and_falls_back() {
    let mut s = pair(
        37,
        NatKind::FULL_CONE,
        NatKind::FULL_CONE,
        Links::default(),
        fast,
    );
    assert!(s.run(ms(30_000), |s| s.is_direct(0) && s.is_direct(1)));
    // Alice's packets to bob are dropped; bob's still reach her.
    s.cut_one_way.insert((0, 1));
    stream_both_ways(&mut s, 150, ms(40), |_, _| {});
    let got: Vec<String> = s.received(1).into_iter().map(|(t, _)| t).collect();
    assert_eq!(got, (0..150).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(
        paths_taken(&s, 0),
        [Via::Direct, Via::Relay],
        "alice's consent lapsed"
    );
}
