//! Orderings and failures a peer must come through without a busy loop (a red team's probes of
//! the review's mends): a relay that refuses channels and watches, peers online before or after
//! each other, `accept` off, both connecting at once, the relay down and back empty, a forged
//! `not_registered` after every datagram of the relay, a connection closed and made again.

mod sim;

use std::cell::Cell;
use std::time::Duration;

use relay_core::settings::Settings;
use relay_core::testing::Harness;
use sim::{Links, NatKind, Sim, fast, ms};
use udp_peer::Event;

/// Runs `s` until `until`, failing if any iteration stays at one instant for too long (a busy
/// poll: a timeout in the past that handle_timeout does not move).
fn run_no_spin(s: &mut Sim, until: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
    let last = Cell::new(Duration::MAX);
    let same = Cell::new(0u32);
    let spun = Cell::new(false);
    let r = s.run(until, |s| {
        if s.now == last.get() {
            same.set(same.get() + 1);
            if same.get() > 10_000 {
                spun.set(true);
                return true;
            }
        } else {
            last.set(s.now);
            same.set(0);
        }
        done(s)
    });
    assert!(!spun.get(), "busy poll at {:?}", s.now);
    r
}

fn settings(f: impl Fn(&mut Settings)) -> Settings {
    let mut st = Settings::recommended();
    f(&mut st);
    st
}

/// A relay that binds no channel and keeps no watch: peers learn of each other only from asks
/// and introductions.
fn no_channels_no_watches() -> Settings {
    settings(|st| {
        st.max_channels = 0;
        st.max_watch_per_host = 0;
        st.max_watch_total = 0;
    })
}

#[test]
fn no_channels_no_watches_peer_online_first_still_handshakes() {
    let mut s = Sim::new(5, Links::default());
    s.relay = Harness::new(no_channels_no_watches());
    s.alice_and_bob(NatKind::SYMMETRIC, NatKind::SYMMETRIC, |_| {});
    s.run(ms(3_000), |_| false);
    s.connect(0, "bob");
    assert!(
        run_no_spin(&mut s, ms(30_000), |s| s.connected(0) && s.connected(1)),
        "alice {:?}",
        s.hosts[0].events
    );
}

#[test]
fn responder_connects_with_no_channels_no_watches() {
    // Bob asks first; alice, the initiator by name order, only answers.
    let mut s = Sim::new(6, Links::default());
    s.relay = Harness::new(no_channels_no_watches());
    s.alice_and_bob(NatKind::SYMMETRIC, NatKind::SYMMETRIC, |_| {});
    s.run(ms(3_000), |_| false);
    s.connect(1, "alice");
    assert!(
        run_no_spin(&mut s, ms(30_000), |s| s.connected(0) && s.connected(1)),
        "alice {:?}",
        s.hosts[0].events
    );
}

#[test]
fn accept_off_user_connects_later_no_channels_no_watches() {
    let mut s = Sim::new(7, Links::default());
    s.relay = Harness::new(no_channels_no_watches());
    s.alice_and_bob(NatKind::SYMMETRIC, NatKind::SYMMETRIC, |c| c.accept = false);
    s.run(ms(3_000), |_| false);
    // bob (responder) asks; alice's user answers 20 s later.
    s.connect(1, "alice");
    run_no_spin(&mut s, ms(23_000), |_| false);
    s.connect(0, "bob");
    let until = s.now + ms(30_000);
    assert!(
        run_no_spin(&mut s, until, |s| s.connected(0) && s.connected(1)),
        "alice {:?}",
        s.hosts[0].events
    );
}

#[test]
fn both_connect_at_once_before_the_other_is_online() {
    let mut s = Sim::new(8, Links::default());
    let (na, nb) = (
        s.nat(NatKind::SYMMETRIC, false),
        s.nat(NatKind::SYMMETRIC, false),
    );
    let ca = s.config("alice", 1);
    let a = s.host(Some(na), ca);
    s.connect(a, "bob");
    s.run(ms(10_000), |_| false);
    let cb = s.config("bob", 2);
    let b = s.host(Some(nb), cb);
    s.connect(b, "alice");
    assert!(run_no_spin(&mut s, ms(40_000), |s| s.connected(0) && s.connected(1)));
}

#[test]
fn relay_restart_with_channels_refused_then_message() {
    let mut s = Sim::new(9, Links::default());
    let st = || {
        settings(|st| {
            st.max_channels = 0;
        })
    };
    s.relay = Harness::new(st());
    s.alice_and_bob(NatKind::SYMMETRIC, NatKind::SYMMETRIC, fast);
    s.connect(0, "bob");
    assert!(run_no_spin(&mut s, ms(20_000), |s| s.connected(0) && s.connected(1)));
    s.relay = Harness::new(st());
    s.say(0, "bob", "during");
    s.say(1, "alice", "back");
    let until = s.now + ms(40_000);
    assert!(
        run_no_spin(&mut s, until, |s| !s.received(1).is_empty()
            && !s.received(0).is_empty()),
        "{:?}",
        s.hosts[0].events
    );
}

#[test]
fn relay_down_no_direct_path_messages_resume_and_no_spin() {
    let mut s = sim::pair(
        10,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    s.relay_down = true;
    for i in 0..20 {
        s.say(0, "bob", &format!("m{i}"));
        let until = s.now + ms(500);
        run_no_spin(&mut s, until, |_| false);
    }
    let until = s.now + ms(60_000);
    run_no_spin(&mut s, until, |_| false);
    s.relay = Harness::new(Settings::recommended());
    s.relay_down = false;
    let until = s.now + ms(120_000);
    assert!(
        run_no_spin(&mut s, until, |s| s.received(1).len() == 20),
        "bob got {}",
        s.received(1).len()
    );
}

#[test]
fn relay_restart_while_down_both_peers_then_new_message() {
    // The relay comes back empty; both are signed: does the session carry messages again?
    let mut s = sim::pair(
        12,
        NatKind::PORT_RESTRICTED,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    s.relay_down = true;
    let until = s.now + ms(20_000);
    run_no_spin(&mut s, until, |_| false);
    s.relay = Harness::new(Settings::recommended());
    s.relay_down = false;
    s.say(1, "alice", "hi");
    let until = s.now + ms(60_000);
    assert!(
        run_no_spin(&mut s, until, |s| !s.received(0).is_empty()),
        "{:?}",
        s.hosts[1]
            .events
            .iter()
            .filter(|(_, e)| !matches!(e, Event::Message { .. }))
            .collect::<Vec<_>>()
    );
}

#[test]
fn forged_not_registered_after_every_relay_datagram_does_not_starve_relay_sends() {
    let mut s = sim::pair(
        13,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    let relay = s.relay_addr;
    let alice = s.hosts[0].peer.status().public.unwrap();
    s.tap = Some(Box::new(move |from, to, _b| {
        if from == relay && to == alice {
            vec![(
                relay,
                alice,
                br#"{"type":"error","code":"not_registered","message":""}"#.to_vec(),
            )]
        } else {
            Vec::new()
        }
    }));
    for i in 0..10 {
        s.say(0, "bob", &format!("m{i}"));
        let until = s.now + ms(300);
        run_no_spin(&mut s, until, |_| false);
    }
    let until = s.now + ms(60_000);
    assert!(
        run_no_spin(&mut s, until, |s| s.received(1).len() == 10),
        "bob got {}",
        s.received(1).len()
    );
}

#[test]
fn close_and_connect_again_gets_a_session_again() {
    let mut s = sim::pair(
        14,
        NatKind::SYMMETRIC,
        NatKind::SYMMETRIC,
        Links::default(),
        fast,
    );
    s.hosts[0].peer.close("bob");
    let until = s.now + ms(1_000);
    run_no_spin(&mut s, until, |_| false);
    s.connect(0, "bob");
    s.say(0, "bob", "again");
    s.say(1, "alice", "back");
    let until = s.now + ms(40_000);
    assert!(
        run_no_spin(&mut s, until, |s| !s.received(1).is_empty()
            && !s.received(0).is_empty()),
        "bob got {:?}, alice {:?}",
        s.received(1),
        s.received(0)
    );
}
