//! Introductions, late news and takeovers across relays under attack, sans-IO (the red team's
//! third round): a yes given to a name's former holder, a late join of a name homed here, and
//! the ends of channels across relays a restore leaves out.

use std::net::SocketAddr;

use relay_core::out::Out;
use relay_core::remote::Home;
use relay_core::settings::Settings;
use relay_core::testing::cluster::{mesh, mesh_addr, prove, relay};
use relay_core::testing::{Harness, addr, at, collect};
use relay_core::wire::peer;

fn connect(name: &str, session: &str, target: &str) -> Vec<u8> {
    let mut d = Vec::new();
    peer::connect(&mut d, target, Some(name), session);
    d
}

fn to(sent: &[(SocketAddr, Vec<u8>)], to: SocketAddr) -> Vec<Vec<u8>> {
    sent.iter()
        .filter(|(t, _)| *t == to)
        .map(|(_, d)| d.clone())
        .collect()
}

fn home(node: &str, i: u8, epoch: u64) -> Home {
    Home {
        node: node.into(),
        mesh: mesh_addr(i),
        epoch,
    }
}

fn two() -> (Harness, Harness) {
    (
        relay("relay-a", "relay-b", Settings::default()),
        relay("relay-b", "relay-a", Settings::default()),
    )
}

/// Bob (relay-b) asked for carol (relay-a). Carol's registration goes stale and mallory takes
/// the name at relay-a before the reaper runs, keeping the claim and its epoch: bob's ask for
/// the old carol is no consent to mallory, and bob's address is handed to nobody (relay-a
/// checks bob's ask for this very registration, whose number changed, as on one relay).
#[test]
fn an_ask_for_a_name_homed_elsewhere_does_not_pass_to_its_next_holder() {
    let (mut a, mut b) = two();
    let (carol, bob, mallory) = (addr(1), addr(2), addr(9));
    prove(&mut a, "carol", carol, 0);
    let bob_session = prove(&mut b, "bob", bob, 40_000);
    // The views, as the directory's joins made them (carol's claim was settled at epoch 1).
    let (sa, sb) = (a.shared.clone(), b.shared.clone());
    let (ca, cb) = (sa.cluster.get().unwrap(), sb.cluster.get().unwrap());
    assert!(ca.remote.joined("bob", home("relay-b", 2, 1)));
    assert!(cb.remote.joined("carol", home("relay-a", 1, 1)));
    // Bob asks for carol at 40 s (carol silent since 0 s, still registered).
    let sent = b.run(&connect("bob", &bob_session, "carol"), bob, 40_000);
    let asked = to(&sent, mesh_addr(1)).remove(0);
    mesh(&mut a, &asked, mesh_addr(2), 40_000);
    // At 60.5 s carol is stale; mallory takes "carol" at relay-a before the reaper's sweep.
    a.register("carol", mallory, 60_500);
    assert!(
        ca.take(usize::MAX).is_empty(),
        "no claim: the name is homed here"
    );
    assert_eq!(a.shared.registry.addr_of("carol", 60_500), Some(mallory));
    let m_session = a.session("carol", mallory);
    let mut d = Vec::new();
    peer::ping(&mut d, Some("carol"), Some(&m_session));
    a.run(&d, mallory, 60_500);
    // Mallory, as "carol", asks for bob.
    let sent = a.run(&connect("carol", &m_session, "bob"), mallory, 60_600);
    let over = to(&sent, mesh_addr(2)).remove(0);
    let at_b = mesh(&mut b, &over, mesh_addr(1), 60_600);
    let mut leaked = Vec::new();
    for back in to(&at_b, mesh_addr(1)) {
        for (t, d) in mesh(&mut a, &back, mesh_addr(2), 60_600) {
            if t == mallory {
                leaked.push(String::from_utf8(d).unwrap());
            }
        }
    }
    assert!(
        leaked.iter().all(|s| !s.contains(&bob.to_string())),
        "bob's address handed to the name's next holder, whom bob never asked for: {leaked:?}"
    );
}

/// The same through a new claim, when relay-b has not heard the directory's leave and join
/// yet (its view still says the old epoch): the new holder's Connect, judged by the old
/// holder's epoch there, still gets no address here.
#[test]
fn an_ask_is_not_taken_for_the_next_holder_while_the_view_lags() {
    let (mut a, mut b) = two();
    let (carol, bob, mallory) = (addr(1), addr(2), addr(9));
    let carol_session = prove(&mut a, "carol", carol, 0);
    let bob_session = prove(&mut b, "bob", bob, 0);
    let (sa, sb) = (a.shared.clone(), b.shared.clone());
    let (ca, cb) = (sa.cluster.get().unwrap(), sb.cluster.get().unwrap());
    assert!(ca.remote.joined("bob", home("relay-b", 2, 1)));
    assert!(cb.remote.joined("carol", home("relay-a", 1, 1)));
    let sent = b.run(&connect("bob", &bob_session, "carol"), bob, 1_000);
    mesh(
        &mut a,
        &to(&sent, mesh_addr(1)).remove(0),
        mesh_addr(2),
        1_000,
    );
    // Carol leaves; mallory registers "carol" at relay-a, claimed at epoch 2 (relay-b has not
    // heard the leave nor the join yet).
    let mut d = Vec::new();
    peer::unregister(&mut d, "carol", &carol_session);
    a.run(&d, carol, 2_000);
    let _release = ca.take(usize::MAX);
    a.register("carol", mallory, 2_000);
    for op in ca.take(usize::MAX) {
        if let relay_core::cluster::Op::Claim(p) = op {
            ca.homed(&p.name, 2, None);
            a.router.settle(&p, at(2_000), &mut Out::default());
        }
    }
    let m_session = a.session("carol", mallory);
    let mut d = Vec::new();
    peer::ping(&mut d, Some("carol"), Some(&m_session));
    a.run(&d, mallory, 2_000);
    let sent = a.run(&connect("carol", &m_session, "bob"), mallory, 2_100);
    let over = to(&sent, mesh_addr(2)).remove(0);
    let at_b = mesh(&mut b, &over, mesh_addr(1), 2_100);
    let mut leaked = Vec::new();
    for back in to(&at_b, mesh_addr(1)) {
        for (t, d) in mesh(&mut a, &back, mesh_addr(2), 2_100) {
            if t == mallory {
                leaked.push(String::from_utf8(d).unwrap());
            }
        }
    }
    assert!(
        leaked.iter().all(|s| !s.contains(&bob.to_string())),
        "bob's address handed to the name's next holder: {leaked:?}"
    );
}

/// A join the directory published before this relay's own later claim of the name (a signed
/// move here from relay-b, whose claim's answer came back before the events stream delivered
/// relay-b's older join) stays out of the view of names homed elsewhere: the name is homed
/// here at a later epoch, no one is told it joined elsewhere, and nothing is sent there for it.
#[test]
fn a_late_join_of_an_older_epoch_does_not_enter_the_view_of_a_name_homed_here() {
    let mut a = relay("relay-a", "relay-b", Settings::default());
    let shared = a.shared.clone();
    let ca = shared.cluster.get().unwrap();
    a.register("watcher", addr(3), 0);
    relay_core::testing::cluster::settle_claims(&mut a);
    a.register("alice", addr(1), 0);
    // The directory answered alice's claim with epoch 7 (she moved here from relay-b).
    for op in ca.take(usize::MAX) {
        if let relay_core::cluster::Op::Claim(p) = op {
            ca.homed(&p.name, 7, None);
            a.router.settle(&p, at(0), &mut Out::default());
        }
    }
    // Relay-b's older join (epoch 6) arrives late.
    let c = shared.metrics.background();
    let mut out = Out::default();
    relay_core::elsewhere::joined(
        &shared,
        "alice",
        home("relay-b", 2, 6),
        None,
        at(1),
        &mut out,
        &c,
    );
    assert!(shared.registry.addr_of("alice", 1).is_some(), "not evicted");
    let told: Vec<String> = collect(&out, &[])
        .into_iter()
        .map(|(_, d)| String::from_utf8(d).unwrap())
        .collect();
    assert_eq!(
        ca.remote.home_of("alice"),
        None,
        "a name homed here at epoch 7 is in the view as homed at relay-b (epoch 6); told: {told:?}"
    );
}

/// The ends of channels across relays that a restore leaves out (their owner went stale
/// meanwhile) are counted in its summary, which the takeover's and the snapshot's logs give.
#[test]
fn ends_across_relays_left_out_at_a_restore_are_counted() {
    let (mut a, mut b) = two();
    let (alice, bob) = (addr(1), addr(2));
    let alice_session = prove(&mut a, "alice", alice, 0);
    prove(&mut b, "bob", bob, 0);
    assert!(
        a.shared
            .cluster
            .get()
            .unwrap()
            .remote
            .joined("bob", home("relay-b", 2, 1))
    );
    let mut d = Vec::new();
    peer::bind(&mut d, "bob", "alice", &alice_session);
    a.run(&d, alice, 1);
    assert_eq!(a.shared.channels.len(), 1, "alice's end across relays");
    // Written two minutes on: alice is stale when it is read.
    let image = udp_relay::state::export(&a.shared, udp_relay::clock::Clock::resumed(120_000));
    let (state, summary) = udp_relay::state::restore(&image, Settings::default(), 1, true).unwrap();
    assert_eq!(
        state.shared.channels.len(),
        0,
        "alice's end left out with her"
    );
    assert_eq!(summary.across, (0, 1), "counted, as restored and left out");
}
