//! The router's unit tests, over the crate's one sans-IO harness ([`crate::testing`]).

use super::*;
use crate::registry::Proof;
use crate::settings::Settings;
use serde_json::{Value, json};

pub(crate) use crate::testing::{Harness, addr, at, collect};

/// The shared harness, with JSON in and out (serde_json is a dev-dependency).
pub(crate) trait Json {
    /// Like [`Harness::run`] with JSON written and parsed.
    fn json(&mut self, v: Value, from: SocketAddr, ms: u64) -> Vec<(SocketAddr, Value)>;
}

impl Json for Harness {
    fn json(&mut self, v: Value, from: SocketAddr, ms: u64) -> Vec<(SocketAddr, Value)> {
        parse(self.run(v.to_string().as_bytes(), from, ms))
    }
}

pub(crate) fn parse(sends: Vec<(SocketAddr, Vec<u8>)>) -> Vec<(SocketAddr, Value)> {
    sends
        .into_iter()
        .map(|(to, b)| (to, serde_json::from_slice(&b).expect("valid JSON")))
        .collect()
}

fn register(h: &mut Harness, name: &str, from: SocketAddr, ms: u64) -> Vec<(SocketAddr, Value)> {
    h.json(json!({"type": "register", "name": name}), from, ms)
}

#[test]
fn register_acks_lists_and_announces() {
    let mut h = Harness::new(Settings::default());
    let r = register(&mut h, "Bob", addr(2), 0);
    assert_eq!(r.len(), 2);
    let r = register(&mut h, "Alice", addr(1), 5);
    assert_eq!(r[0].0, addr(1));
    assert_eq!(r[0].1["type"], "register_ack");
    assert_eq!(r[0].1["your_address"], "10.0.1.1:1001");
    assert_eq!(r[0].1["peer_name"], "Alice");
    assert_eq!(
        r[1].1,
        json!({"type": "peer_list", "peers": ["Bob", "Alice"], "count": 2})
    );
    assert_eq!(r[2].0, addr(2));
    assert_eq!(
        r[2].1,
        json!({"type": "peer_joined", "peer_name": "Alice", "peers": ["Bob", "Alice"]})
    );
    // Registering again from the same address refreshes, and is announced all the same.
    let r = register(&mut h, "Alice", addr(1), 10);
    assert_eq!(r.len(), 3);
    assert_eq!(r[2].0, addr(2));
    assert_eq!(r[2].1["type"], "peer_joined");
}

#[test]
fn relay_forwards_the_payload_span_byte_for_byte() {
    let mut h = Harness::new(Settings::default());
    register(&mut h, "A", addr(1), 0);
    register(&mut h, "B", addr(2), 0);
    let d =
        br#"{ "payload" : "{\"k\": \"caf\u00e9\"}" , "source":"A","target":"B","type":"relay"}"#;
    let r = h.run(d, addr(1), 1);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, addr(2));
    assert_eq!(
        r[0].1,
        br#"{"type":"relayed_packet","from_peer":"A","via_relay":true,"payload":"{\"k\": \"caf\u00e9\"}"}"#
    );
}

#[test]
fn relay_believes_the_registry_not_the_source_field() {
    let mut h = Harness::new(Settings::default());
    register(&mut h, "A", addr(1), 0);
    register(&mut h, "B", addr(2), 0);
    let spoof = json!({"type": "relay", "source": "A", "target": "B", "payload": "x".repeat(80)});
    let r = h.json(spoof.clone(), addr(3), 1);
    assert!(r.is_empty(), "unregistered address gets nothing");
    let r = h.json(spoof, addr(2), 1);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, addr(2));
    assert_eq!(r[0].1["code"], "not_registered");
    assert_eq!(h.refused(Reason::NotRegistered), 2);
}

#[test]
fn relay_to_unknown_or_stale_target_is_refused() {
    let s = Settings {
        peer_timeout_ms: 1000,
        keepalive_ms: 100,
        ..Settings::default()
    };
    let mut h = Harness::new(s);
    register(&mut h, "A", addr(1), 0);
    register(&mut h, "B", addr(2), 0);
    let msg = json!({"type": "relay", "source": "A", "target": "B", "payload": "x".repeat(60)});
    // A keeps itself live by relaying; B falls silent.
    assert_eq!(h.json(msg.clone(), addr(1), 900)[0].0, addr(2));
    let r = h.json(msg, addr(1), 1500);
    assert_eq!(r[0].0, addr(1));
    assert_eq!(r[0].1["code"], "unknown_target");
}

#[test]
fn keepalive_registers_moves_only_with_session() {
    let mut h = Harness::new(Settings::default());
    let r = h.json(json!({"type": "keepalive", "name": "A"}), addr(1), 0);
    assert_eq!(r[0].1["type"], "keepalive_ack");
    assert!(h.shared.registry.addr_of("A", 0).is_some());
    let r = h.json(json!({"type": "keepalive", "name": "A"}), addr(2), 1);
    assert!(r.is_empty(), "unregistered address: no error reply");
    assert_eq!(h.refused(Reason::NameInUse), 1);
    let session = h
        .shared
        .registry
        .session_at("A", addr(1), 1)
        .unwrap()
        .to_hex();
    let r = h.json(
        json!({"type": "keepalive", "name": "A", "session": session}),
        addr(2),
        2,
    );
    assert_eq!(r[0].1["type"], "keepalive_ack");
    assert_eq!(h.shared.registry.addr_of("A", 2), Some(addr(2)));
}

#[test]
fn unauthenticated_errors_are_paid_from_the_budgets() {
    let s = Settings {
        reply_credit: 80,
        reply_prefix_credit: 4096,
        reply_global_credit: 1 << 20,
        ..Settings::default()
    };
    let mut h = Harness::new(s);
    let reg = &h.shared.registry;
    reg.claim("A", addr(1), Proof::Token(None), 0, 10);
    // 10 bytes sent and 80 of credit pay a 73-byte error, in full.
    let r = h.run(b"{\"type\":1}", addr(1), 1);
    let v: Value = serde_json::from_slice(&r[0].1).unwrap();
    assert_eq!(v["message"], "field of the wrong type");
    // 7 left and 10 more earned, and the request pays 30 bytes: not even the 50-byte short
    // form fits.
    assert!(h.run(b"{\"type\":1}", addr(1), 1).is_empty());
    // A longer request pays for its own answer (three times its size): the short form...
    let padded = format!(r#"{{"type":1,"pad":"{}"}}"#, "x".repeat(2));
    let r = h.run(padded.as_bytes(), addr(1), 1);
    let v: Value = serde_json::from_slice(&r[0].1).unwrap();
    assert_eq!(v["code"], "bad_request");
    assert_eq!(v["message"], "");
    // ... and, padded further, the whole of it.
    let padded = format!(r#"{{"type":1,"pad":"{}"}}"#, "x".repeat(20));
    let r = h.run(padded.as_bytes(), addr(1), 1);
    let v: Value = serde_json::from_slice(&r[0].1).unwrap();
    assert_eq!(v["message"], "field of the wrong type");
    assert_eq!(h.refused(Reason::WrongType), 4);
}

#[test]
fn beyond_announce_max_only_watchers_hear() {
    let s = Settings {
        announce_max: 2,
        ..Settings::default()
    };
    let mut h = Harness::new(s);
    register(&mut h, "A", addr(1), 0);
    register(&mut h, "B", addr(2), 0);
    let w = json!({"type": "watch", "names": ["D", "B"]});
    let r = h.json(w.clone(), addr(1), 0);
    assert_eq!(r[0].1["code"], "session_required");
    let mut w = w;
    w["session"] = h.session("A", addr(1)).into();
    let r = h.json(w, addr(1), 0);
    assert_eq!(r[0].1, json!({"type": "watch_ack", "online": ["B"]}));
    let r = register(&mut h, "C", addr(3), 0);
    assert_eq!(r.len(), 2, "nobody watches C");
    let r = register(&mut h, "D", addr(4), 0);
    assert_eq!(r.len(), 3);
    assert_eq!(r[2].0, addr(1));
    assert_eq!(r[2].1["type"], "peer_joined");
    assert_eq!(r[2].1["peer_name"], "D");
    let session = h.session("D", addr(4));
    let r = h.json(
        json!({"type": "unregister", "name": "D", "session": session}),
        addr(4),
        1,
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1["type"], "peer_left");
}

#[test]
fn connect_introduces_both_sides_once_both_asked() {
    let mut h = Harness::new(Settings::default());
    register(&mut h, "A", addr(1), 0);
    register(&mut h, "B", addr(2), 0);
    let r = h.json(json!({"type": "connect", "target": "B"}), addr(1), 1);
    assert_eq!(r[0].1["code"], "session_required");
    let (a, b) = (h.session("A", addr(1)), h.session("B", addr(2)));
    let connect = |target: &str, session: &str| json!({"type": "connect", "target": target, "session": session});
    // A asks: B is told, A hears nothing, as when asking for a name nobody holds.
    let r = h.json(connect("B", &a), addr(1), 1);
    assert_eq!(
        r,
        vec![(
            addr(2),
            json!({"type": "connect_request", "peer_name": "A"})
        )]
    );
    assert!(h.json(connect("nobody", &a), addr(1), 1).is_empty());
    // B asks back within the window: both are introduced at once.
    let r = h.json(connect("A", &b), addr(2), 2);
    assert_eq!(
        r,
        vec![
            (
                addr(2),
                json!({"type": "introduce", "peer_name": "A", "address": "10.0.1.1:1001"})
            ),
            (
                addr(1),
                json!({"type": "introduce", "peer_name": "B", "address": "10.0.2.1:1002"})
            ),
        ]
    );
    // Asking again within it introduces them again (a retry of the punch).
    let r = h.json(connect("B", &a), addr(1), 3);
    assert_eq!(
        r,
        vec![
            (
                addr(1),
                json!({"type": "introduce", "peer_name": "B", "address": "10.0.2.1:1002"})
            ),
            (
                addr(2),
                json!({"type": "introduce", "peer_name": "A", "address": "10.0.1.1:1001"})
            ),
        ]
    );
    // Consent lapses with the window: a later ask is only told to the other side again.
    let later = 2 + crate::introductions::WINDOW_MS;
    let r = h.json(connect("A", &b), addr(2), later);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1["type"], "connect_request");
}

#[test]
fn an_introduction_needs_the_consent_of_the_registration_there_now() {
    let mut h = Harness::new(Settings {
        peer_timeout_ms: 1000,
        ..Settings::default()
    });
    register(&mut h, "A", addr(1), 0);
    register(&mut h, "B", addr(2), 0);
    let b = h.session("B", addr(2));
    h.json(
        json!({"type": "connect", "target": "A", "session": b}),
        addr(2),
        1,
    );
    // B goes stale; someone else takes the name and asks for A: B's consent is not theirs.
    register(&mut h, "A", addr(1), 1500);
    register(&mut h, "B", addr(3), 1500);
    let (a, b3) = (h.session("A", addr(1)), h.session("B", addr(3)));
    let r = h.json(
        json!({"type": "connect", "target": "B", "session": a}),
        addr(1),
        1600,
    );
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0],
        (
            addr(3),
            json!({"type": "connect_request", "peer_name": "A"})
        )
    );
    let r = h.json(
        json!({"type": "connect", "target": "A", "session": b3}),
        addr(3),
        1700,
    );
    assert_eq!(r.len(), 2, "the new B asked: {r:?}");
    assert_eq!(r[1].1["address"], "10.0.3.1:1003");
}

#[test]
fn families_other_than_json_are_counted() {
    let mut h = Harness::new(Settings::default());
    assert!(h.run(b"", addr(1), 0).is_empty());
    assert!(h.run(&[0xD1, 0, 0, 0, 0, 1, 9], addr(1), 0).is_empty());
    assert!(h.run(&[0xD1, 0, 0], addr(1), 0).is_empty());
    assert!(h.run(&[0xD1, 1, 0, 0, 0, 1, 9], addr(1), 0).is_empty());
    assert_eq!(h.refused(Reason::UnknownFamily), 1);
    assert_eq!(h.refused(Reason::ChannelGone), 1);
    assert_eq!(h.refused(Reason::FrameShort), 1);
    assert_eq!(h.refused(Reason::FrameFlags), 1);
}

#[test]
fn channel_frames_are_rewritten_in_place_and_sent_from_the_input() {
    let mut h = Harness::new(Settings::default());
    let (a, b) = (addr(1), addr(2));
    let sa = h.prove("A", a, 0);
    h.prove("B", b, 0);
    let r = h.json(json!({"type": "bind", "target": "B", "session": sa}), a, 1);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!((r[0].0, &r[0].1["type"]), (a, &json!("bind_ack")));
    assert_eq!((r[1].0, &r[1].1["type"]), (b, &json!("channel_bound")));
    assert_eq!(r[1].1["peer_name"], "A");
    let (ca, cb) = (
        r[0].1["channel"].as_u64().unwrap() as u32,
        r[1].1["channel"].as_u64().unwrap() as u32,
    );
    let mut f = Vec::new();
    crate::wire::frame::write(&mut f, ca, b"\x00secret\xff");
    h.out.clear();
    let mut d = f.clone();
    h.router.handle(&mut d, a, at(2), &mut h.out);
    let [s] = h.out.sends.as_slice() else {
        panic!("{:?}", h.out.sends)
    };
    // One segment: the whole received buffer, its channel field now B's number.
    assert!(matches!(s.segs[0], crate::out::Seg::Input(ref r) if *r == (0..f.len())));
    assert_eq!((s.nsegs, s.to), (1, b));
    let mut want = f.clone();
    want[2..6].copy_from_slice(&cb.to_be_bytes());
    assert_eq!(d, want);
    // From anywhere else, under the other side's number, or gone: dropped.
    assert!(h.run(&f, addr(3), 3).is_empty());
    assert_eq!(h.refused(Reason::ChannelWrongSource), 1);
    let r = h.run(&want, b, 3);
    assert_eq!(
        r,
        vec![(a, f.clone())],
        "B's frames come to A under A's number"
    );
    let r = h.json(
        json!({"type": "unbind", "channel": ca, "session": sa}),
        a,
        4,
    );
    assert_eq!(r[0], (a, json!({"type": "channel_closed", "channel": ca})));
    assert_eq!(r[1], (b, json!({"type": "channel_closed", "channel": cb})));
    assert!(h.run(&f, a, 5).is_empty());
    assert_eq!(h.refused(Reason::ChannelGone), 1);
}

#[test]
fn bind_is_authenticated_and_to_a_trusted_peer() {
    let mut h = Harness::new(Settings::default());
    let (a, b) = (addr(1), addr(2));
    let sa = h.prove("A", a, 0);
    register(&mut h, "B", b, 0);
    let r = h.json(json!({"type": "bind", "target": "B"}), a, 1);
    assert_eq!(r[0].1["code"], "session_required");
    let r = h.json(json!({"type": "bind", "target": "B", "session": sa}), a, 1);
    assert_eq!(
        r[0].1["code"], "unknown_target",
        "B never showed its session"
    );
    assert_eq!(h.refused(Reason::UntrustedPeer), 1);
    let r = h.json(json!({"type": "bind", "target": "A", "session": sa}), a, 1);
    assert_eq!(r[0].1["code"], "bad_request", "not to itself");
}

#[test]
fn news_of_a_neighbour_waits_until_it_proves_itself() {
    let mut h = Harness::new(Settings::default());
    let a: SocketAddr = "10.0.9.1:1".parse().unwrap();
    let b: SocketAddr = "10.0.9.2:2".parse().unwrap();
    let far = addr(3);
    h.prove("A", a, 0);
    h.prove("Far", far, 0);
    // B's join, unproven, reaches the peer elsewhere but not its neighbour A (it may be forged).
    let r = register(&mut h, "B", b, 1);
    let told: Vec<SocketAddr> = r.iter().map(|(to, _)| *to).filter(|to| *to != b).collect();
    assert_eq!(told, vec![far]);
    // Its first proof tells A, and only A; later proofs tell nobody.
    let session = h.session("B", b);
    let ping = json!({"type": "ping", "name": "B", "session": session});
    let r = h.json(ping.clone(), b, 2);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].0, a);
    assert_eq!(r[0].1["type"], "peer_joined");
    assert_eq!(r[0].1["peer_name"], "B");
    assert_eq!(r[1].1["type"], "pong");
    assert_eq!(h.json(ping, b, 3).len(), 1);
}

/// A worker's limits outlive its router however it ends (a pause, or a panic unwinding its
/// thread), and a rate-changing reload is the one thing that fills them again.
#[test]
fn limits_are_parked_when_a_router_goes_even_by_a_panic() {
    let s = Settings {
        source_rate: 5,
        ..Settings::default()
    };
    let shared = Shared::new(s.clone(), 1);
    let flood = addr(9);
    let spent = |r: &mut Router| {
        let mut out = Out::default();
        let mut d = br#"{"type":"ping"}"#.to_vec();
        for _ in 0..20 {
            out.clear();
            r.handle(&mut d, flood, at(0), &mut out);
        }
        r.admission.ingress.admit(flood, 15, 0).is_err()
    };
    let mut r = Router::new(shared.clone(), 0);
    assert!(spent(&mut r));
    drop(r);
    let moved = shared.clone();
    let died = std::thread::spawn(move || {
        let mut r = Router::new(moved, 0);
        assert!(
            r.admission.ingress.admit(flood, 15, 0).is_err(),
            "a pause refilled"
        );
        panic!("a worker dies");
    })
    .join();
    assert!(died.is_err());
    let mut r = Router::new(shared.clone(), 0);
    assert!(
        r.admission.ingress.admit(flood, 15, 0).is_err(),
        "a panic refilled"
    );
    drop(r);
    // A reload that changes a rate: full again, once, and kept over the next pause.
    shared.live.publish(Settings {
        source_rate: 6,
        ..s
    });
    let mut r = Router::new(shared.clone(), 0);
    assert!(spent(&mut r));
    drop(r);
    let mut r = Router::new(shared.clone(), 0);
    let mut out = Out::default();
    r.handle(&mut br#"{"type":"ping"}"#.to_vec(), flood, at(0), &mut out);
    assert!(r.admission.ingress.admit(flood, 15, 0).is_err());
}

/// Whether `r` holds a `register_ack` telling `from` its public address.
fn acked(r: &[(SocketAddr, Value)], from: SocketAddr) -> bool {
    r.iter().any(|(to, v)| {
        *to == from && v["type"] == "register_ack" && v["your_address"] == from.to_string()
    })
}

#[test]
fn every_old_peer_of_one_network_learns_its_address() {
    let mut h = Harness::new(Settings::recommended());
    for i in 0..190u16 {
        let from: SocketAddr = format!("198.51.{}.{}:4000", i / 200, i % 200 + 1)
            .parse()
            .unwrap();
        register(&mut h, &format!("elsewhere{i}"), from, 0);
    }
    // A carrier's /24 (an address each) and one address (a port each), each peer sending one
    // minimal `register` and never again.
    for i in 0..1000u16 {
        let spread: SocketAddr = format!("203.0.113.{}:{}", i % 250 + 1, 1024 + i)
            .parse()
            .unwrap();
        let shared: SocketAddr = format!("192.0.2.7:{}", 1024 + i).parse().unwrap();
        for (from, name) in [(spread, format!("n{i}")), (shared, format!("a{i}"))] {
            let r = register(&mut h, &name, from, 1 + u64::from(i) * 60);
            assert!(acked(&r, from), "peer {i} at {from}: {r:?}");
        }
    }
}

#[test]
fn an_ack_its_request_cannot_pay_goes_out_short_and_pads_buy_the_full_one() {
    let s = Settings {
        reply_credit: 40,
        reply_prefix_credit: 40,
        reply_global_credit: 40,
        ..Settings::recommended()
    };
    let mut h = Harness::new(s);
    let from: SocketAddr = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
        .parse()
        .unwrap();
    let d = br#"{"type":"register","name":"A"}"#;
    let r = parse(h.run(d, from, 0));
    assert_eq!(r.len(), 1, "no list the pools cannot pay: {r:?}");
    assert_eq!(
        r[0].1,
        json!({"type": "register_ack", "your_address": from.to_string()})
    );
    assert!(h.run(d, from, 1)[0].1.len() <= d.len() * 3);
    // Padded to pay for it, the ack is whole (the session included).
    let pad = "x".repeat(60);
    let r = h.json(
        json!({"type": "register", "name": "B", "pad": pad}),
        from,
        2,
    );
    assert_eq!(r[0].1["type"], "register_ack");
    assert_eq!(r[0].1["peer_name"], "B");
    assert!(r[0].1["session"].is_string(), "{r:?}");
}

#[test]
fn newcomers_are_answered_when_forgers_emptied_the_reply_pools() {
    let mut h = Harness::new(Settings::recommended());
    // Forged registrations from thousands of /24s, each spending its network's credit.
    let mut sent = 0;
    for i in 0..6000u32 {
        let from: SocketAddr = format!("45.{}.{}.9:7", i / 256, i % 256).parse().unwrap();
        sent += register(&mut h, &format!("forged{i}"), from, u64::from(i)).len();
    }
    assert!(sent > 0);
    for i in 0..32u16 {
        let from: SocketAddr = format!("192.0.2.{}:5000", i + 1).parse().unwrap();
        let r = register(&mut h, &format!("new{i}"), from, 7000);
        assert!(acked(&r, from), "newcomer {i}: {r:?}");
    }
}

#[test]
fn control_messages_are_refused_by_size_before_they_are_parsed() {
    let mut h = Harness::new(Settings::default());
    let lookup = |pad: usize| {
        format!(
            r#"{{"type":"lookup","name":"A","pad":"{}"}}"#,
            "x".repeat(pad)
        )
    };
    let fits = lookup(1280 - lookup(0).len());
    assert_eq!(fits.len(), 1280);
    let r = parse(h.run(fits.as_bytes(), addr(1), 0));
    assert_eq!(r[0].1["type"], "peer_info");
    assert_eq!(h.refused(Reason::TooLarge), 0);
    let over = lookup(1281 - lookup(0).len());
    h.run(over.as_bytes(), addr(1), 0);
    assert_eq!(h.refused(Reason::TooLarge), 1);
    // A watch of --max-watch long names still fits its own, larger bound.
    h.register("W", addr(2), 0);
    let session = h.session("W", addr(2));
    let names: Vec<String> = (0..256).map(|i| format!("{i:0>64}")).collect();
    let watch = json!({"type": "watch", "names": names, "session": session});
    assert!(watch.to_string().len() > 16_000);
    let r = h.json(watch, addr(2), 1);
    assert_eq!(r[0].1["type"], "watch_ack", "{r:?}");
    assert_eq!(h.refused(Reason::TooLarge), 1);
}

#[test]
fn a_full_registry_displaces_the_stalest_unproven_registration_for_a_newcomer() {
    let s = Settings {
        max_peers: 200,
        ..Settings::default()
    };
    let mut h = Harness::new(s);
    // Proven peers, and old peers that keep talking, fill half of it.
    let proven: Vec<SocketAddr> = (0..50u16).map(addr).collect();
    for (i, &a) in proven.iter().enumerate() {
        h.prove(&format!("proven{i}"), a, 0);
    }
    let old: Vec<SocketAddr> = (50..100u16).map(addr).collect();
    // Forged names fill the rest, then keep coming: each displaces the stalest unproven one.
    let mut forged = 0u32;
    for t in 0..40u64 {
        let ms = t * 1000;
        for (i, &a) in old.iter().enumerate() {
            let r = h.json(
                json!({"type": "keepalive", "name": format!("old{i}")}),
                a,
                ms,
            );
            assert!(r.iter().any(|(_, v)| v["type"] == "keepalive_ack"), "{r:?}");
        }
        for _ in 0..50 {
            let from: SocketAddr = format!("203.0.113.{}:{}", forged % 200 + 1, 1000 + forged)
                .parse()
                .unwrap();
            let r = register(&mut h, &format!("forged{forged}"), from, ms + 500);
            assert!(acked(&r, from), "a newcomer is never refused: {r:?}");
            forged += 1;
        }
    }
    let reg = &h.shared.registry;
    assert_eq!(reg.len(), 200);
    for (i, &a) in proven.iter().enumerate() {
        assert!(
            reg.registered_at(&format!("proven{i}"), a),
            "proven{i} displaced"
        );
    }
    for (i, &a) in old.iter().enumerate() {
        assert!(
            reg.registered_at(&format!("old{i}"), a),
            "old{i}, heard every second, displaced"
        );
    }
    assert!(h.refused(Reason::RegistryFull) == 0);
}

#[test]
fn sources_never_a_peers_or_denied_are_refused_before_admission_and_never_answered() {
    let host = "127.0.0.1".parse().unwrap();
    let allowed: crate::destination::Net = "10.1.0.0/16".parse().unwrap();
    let mut h = Harness::new(Settings {
        peers: crate::destination::Policy::new(host, &[allowed], &[]),
        // One datagram a second per source: a refusal before admission charges nobody.
        source_rate: 1,
        ..Settings::default()
    });
    for (from, reason) in [
        ("0.0.0.0:5", Reason::BadSource),
        ("0.1.2.3:5", Reason::BadSource),
        ("[::]:5", Reason::BadSource),
        ("224.0.0.1:5", Reason::BadSource),
        ("255.255.255.255:5", Reason::BadSource),
        ("[ff02::1]:5", Reason::BadSource),
        ("127.0.0.1:0", Reason::BadSource),
        ("10.0.0.1:5", Reason::DeniedAddress),
        ("169.254.169.254:5", Reason::DeniedAddress),
        ("[fd00:ec2::254]:5", Reason::DeniedAddress),
        ("[fe80::1]:5", Reason::DeniedAddress),
        ("[::ffff:192.168.0.1]:5", Reason::DeniedAddress),
    ] {
        let from: SocketAddr = from.parse().unwrap();
        let before = h.refused(reason);
        for _ in 0..3 {
            assert!(register(&mut h, "x", from, 0).is_empty(), "{from}");
        }
        assert_eq!(h.refused(reason), before + 3, "{from}");
    }
    assert_eq!(h.refused(Reason::SourceLimited), 0);
    assert_eq!(h.shared.registry.len(), 0);
    // The allowed range and loopback (the relay listens there) are served.
    for from in ["10.1.2.3:5", "127.16.0.1:5"] {
        let r = register(&mut h, from, from.parse().unwrap(), 0);
        assert_eq!(r[0].1["type"], "register_ack", "{from}");
    }
}

#[test]
fn a_pong_its_ping_cannot_pay_goes_out_short() {
    let s = Settings {
        reply_credit: 10,
        reply_prefix_credit: 10,
        reply_global_credit: 10,
        ..Settings::default()
    };
    let mut h = Harness::new(s);
    let from: SocketAddr = "198.51.100.7:4000".parse().unwrap();
    let r = h.run(br#"{"type":"ping"}"#, from, 0);
    assert_eq!(r[0].1, br#"{"type":"pong"}"#);
    let r = h.json(json!({"type": "ping", "x": 1}), from, 0);
    assert_eq!(
        r[0].1,
        json!({"type": "pong", "your_address": from.to_string()})
    );
    let r = h.json(json!({"type": "ping", "pad": "x".repeat(20)}), from, 0);
    assert!(r[0].1["server_time"].is_number(), "{r:?}");
}

/// Red team, round 2: newcomers from one host flood a full registry until the names kept for
/// displaced peers are given up, then claim an old peer's name (79,800 registrations took it).
/// One network displaces at most a sixteenth of what is kept a peer timeout: the name stays
/// its address's.
#[test]
fn a_flood_of_newcomers_from_one_network_cannot_free_a_displaced_name() {
    let s = Settings {
        max_peers: 200,
        ..Settings::default()
    };
    let mut h = Harness::new(s);
    let alice: SocketAddr = "198.51.100.7:4000".parse().unwrap();
    register(&mut h, "alice", alice, 0);
    for i in 0..70_000u32 {
        let from: SocketAddr = format!("203.0.113.9:{}", 1024 + i % 60_000)
            .parse()
            .unwrap();
        register(&mut h, &format!("z{i}"), from, 1 + u64::from(i) / 2);
    }
    let refused = h.refused(Reason::RegistryFull);
    assert!(
        refused > 60_000,
        "{refused}: one network displaced without bound"
    );
    assert_eq!(h.shared.registry.len(), 200);
    // From another host of the flood's network or any other, the name is not to be had.
    for attacker in ["203.0.113.10:999", "192.0.2.50:999"] {
        let r = register(&mut h, "alice", attacker.parse().unwrap(), 35_001);
        assert_eq!(r[0].1["code"], "name_in_use", "{attacker}: {r:?}");
    }
    // Her next keepalive (from another network's budget) takes it back.
    let r = h.json(json!({"type": "keepalive", "name": "alice"}), alice, 35_002);
    assert_eq!(r[0].1["type"], "keepalive_ack", "{r:?}");
}
