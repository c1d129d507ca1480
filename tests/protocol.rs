//! The wire protocol of PROTOCOL.md, Parts 1 and 2, exercised through real UDP on loopback, as
//! peers would: every message and rule, each test against its own relay process.
//!
//! Where the relay and PROTOCOL.md disagree, these tests follow PROTOCOL.md.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;

type Value = serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Registers `name` from `p` and echoes the session token (proving the address, Part 2).
/// Other names already at `p`'s address may be told of the join; that is consumed too.
fn prove(p: &Peer, name: &str) -> Value {
    let (ack, _) = p.register(name);
    let session = ack["session"]
        .as_str()
        .expect("register_ack carries a session");
    p.send(json!({"type": "keepalive", "name": name, "session": session}));
    loop {
        let v = p.recv();
        match v["type"].as_str() {
            Some("keepalive_ack") => return ack,
            Some("peer_joined") if v["peer_name"] == name => {}
            _ => panic!("expected keepalive_ack, got {v}"),
        }
    }
}

/// A new peer on 127.0.0.1 holding `name` at a proven address.
fn join(r: &Relay, name: &str) -> Peer {
    let p = Peer::new(r);
    prove(&p, name);
    p
}

/// Like [`join`], also returning the `register_ack`.
fn join_ack(r: &Relay, name: &str) -> (Peer, Value) {
    let p = Peer::new(r);
    let ack = prove(&p, name);
    (p, ack)
}

/// Pads a message with an unknown field. What an unauthenticated request sends in pays for what
/// it gets back (Part 2): a padded request always pays for its `error`, however little credit the
/// (shared, loopback) host has left.
fn pad(mut v: Value) -> Value {
    v["pad"] = json!("x".repeat(200));
    v
}

/// Receives one datagram, raw and parsed.
fn recv2(p: &Peer) -> (Vec<u8>, Value) {
    let d = p.recv_raw();
    let v = serde_json::from_slice(&d)
        .unwrap_or_else(|e| panic!("relay sent non-JSON ({e}): {}", String::from_utf8_lossy(&d)));
    (d, v)
}

/// Like [`Peer::drain`] (an authenticated ping once `p` registered), keeping the raw datagrams.
fn drain_raw(p: &Peer) -> Vec<Vec<u8>> {
    p.send(p.ping());
    let mut before = Vec::new();
    loop {
        let (d, v) = recv2(p);
        if v["type"] == "pong" {
            return before;
        }
        before.push(d);
    }
}

/// Expects an `error` with `code`. (Errors are not cut to the request's size: to an
/// unauthenticated request they are paid from the budgets, and `pad` pays for them.)
fn expect_error(p: &Peer, code: &str) -> Value {
    let v = p.recv();
    assert_eq!(v["type"], "error", "expected error {code}, got {v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].is_string(), "error without message: {v}");
    v
}

/// Sends `v` (padded) and expects an `error` with `code` in reply.
fn send_expect_error(p: &Peer, v: Value, code: &str) -> Value {
    p.send(pad(v));
    expect_error(p, code)
}

/// Asks whether `name` is online (`lookup` → `peer_info`).
fn lookup(p: &Peer, name: &str) -> bool {
    p.send(json!({"type": "lookup", "name": name}));
    let v = p.expect("peer_info");
    assert_eq!(v["name"], name, "{v}");
    v["online"]
        .as_bool()
        .unwrap_or_else(|| panic!("online is not a bool: {v}"))
}

/// Like [`lookup`], skipping whatever else arrives first (for peers the reaper keeps busy).
fn lookup_skip(p: &Peer, name: &str) -> bool {
    p.send(json!({"type": "lookup", "name": name}));
    loop {
        let v = p.recv();
        if v["type"] == "peer_info" {
            assert_eq!(v["name"], name, "{v}");
            return v["online"].as_bool().unwrap();
        }
    }
}

/// The names of a `peers` (or `online`) array.
fn names(v: &Value) -> BTreeSet<String> {
    let a = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    let set: BTreeSet<String> = a.iter().map(|n| n.as_str().unwrap().to_owned()).collect();
    assert_eq!(set.len(), a.len(), "duplicate names in {v}");
    set
}

fn set(ns: &[&str]) -> BTreeSet<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

/// Checks `server_time`: a JSON number with a fraction, seconds since the Unix epoch.
fn check_server_time(raw: &[u8], v: &Value) {
    let t = v["server_time"]
        .as_f64()
        .unwrap_or_else(|| panic!("server_time is not a number: {v}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((t - now).abs() < 60.0, "server_time {t} is not now ({now})");
    let s = std::str::from_utf8(raw).unwrap();
    let at = s.find("\"server_time\":").expect("server_time field") + "\"server_time\":".len();
    let token: String = s[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect();
    assert!(token.contains('.'), "server_time {token:?} has no fraction");
}

/// Whether `hay` holds `needle` as a contiguous run of bytes.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A `relay` datagram with the given raw `payload` text.
fn relay_msg(source: &str, target: &str, payload: &str) -> String {
    format!(
        r#"{{"type":"relay","target":{},"source":{},"payload":{payload}}}"#,
        json!(target),
        json!(source)
    )
}

/// Checks that `d` is a `relayed_packet` from `from` carrying `payload` byte for byte.
fn check_relayed(d: &[u8], from: &str, payload: &str) {
    let v: Value = serde_json::from_slice(d)
        .unwrap_or_else(|e| panic!("relayed_packet is not JSON ({e}): {d:?}"));
    assert_eq!(v["type"], "relayed_packet", "{v}");
    assert_eq!(v["from_peer"], from, "{v}");
    assert_eq!(v["via_relay"], json!(true), "{v}");
    let expected: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(v["payload"], expected);
    assert!(
        contains(d, payload.as_bytes()),
        "payload not forwarded byte for byte: sent {payload}, got {}",
        String::from_utf8_lossy(d)
    );
}

/// Runs `p` on a thread until it has heard `peer_left` for every name of `gone`, answering each
/// `server_keepalive` with `answer`. Returns the peer and every `peer_left` it heard.
fn live_until_left(
    p: Peer,
    gone: &'static [&'static str],
    answer: impl Fn(&Peer) + Send + 'static,
) -> thread::JoinHandle<(Peer, Vec<Value>)> {
    thread::spawn(move || {
        let mut left = Vec::new();
        let mut waiting: BTreeSet<&str> = gone.iter().copied().collect();
        let deadline = Instant::now() + 2 * TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "{} never heard peer_left for {waiting:?}; heard {left:?}",
                p.addr()
            );
            let v = p.recv();
            match v["type"].as_str() {
                Some("server_keepalive") => answer(&p),
                Some("peer_left") => {
                    waiting.retain(|n| v["peer_name"] != *n);
                    left.push(v);
                    if waiting.is_empty() {
                        return (p, left);
                    }
                }
                _ => {}
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Part 1: register, keepalive, ping, relay

#[test]
fn register_acks_lists_and_announces() {
    let r = Relay::start(&[]);
    let bob = join(&r, "Bob");
    // An old peer: plain register, unknown fields ignored.
    let alice = Peer::new(&r);
    alice.send(json!({"type": "register", "name": "Alice", "version": 3, "x": {"y": [1]}}));
    let (raw, ack) = recv2(&alice);
    assert_eq!(ack["type"], "register_ack", "{ack}");
    assert_eq!(ack["status"], "success");
    assert_eq!(ack["your_address"], alice.addr().to_string());
    assert_eq!(ack["peer_name"], "Alice");
    check_server_time(&raw, &ack);
    let session = ack["session"].as_str().expect("session is a string");
    assert!(!session.is_empty());
    let list = alice.expect("peer_list");
    assert_eq!(names(&list["peers"]), set(&["Bob", "Alice"]));
    assert_eq!(list["count"], json!(2));
    assert!(list.get("truncated").is_none(), "{list}");
    let joined = bob.expect("peer_joined");
    assert_eq!(joined["peer_name"], "Alice");
    assert_eq!(names(&joined["peers"]), set(&["Bob", "Alice"]));
    alice.expect_nothing();
    bob.expect_nothing();
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
}

#[test]
fn peers_behind_one_address_hear_of_every_join() {
    // A household behind one NAT address: news of a neighbour waits until the neighbour shows
    // its session from its address (Part 2: until then it may be forged), then each peer of the
    // household hears of the join, once.
    let r = Relay::start(&[]);
    let names_: Vec<String> = (0..6).map(|i| format!("device-{i}")).collect();
    let peers: Vec<Peer> = names_
        .iter()
        .map(|n| {
            let p = Peer::bind(r.addr, "127.0.0.1:0");
            prove(&p, n);
            p
        })
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let mut heard = Vec::new();
        for v in p.drain() {
            assert_eq!(v["type"], "peer_joined", "{v}");
            heard.push(v["peer_name"].as_str().unwrap().to_owned());
        }
        heard.sort();
        assert_eq!(heard, names_[i + 1..], "{}", names_[i]);
    }
}

#[test]
fn reregister_from_same_address_refreshes() {
    let r = Relay::start(&[]);
    let bob = join(&r, "Bob");
    let (alice, first) = join_ack(&r, "Alice");
    bob.drain();
    let (ack, list) = alice.register("Alice");
    assert_eq!(ack["status"], "success");
    assert_eq!(ack["your_address"], alice.addr().to_string());
    assert_eq!(ack["peer_name"], "Alice");
    assert!(ack["session"].is_string());
    assert_eq!(first["your_address"], ack["your_address"]);
    assert_eq!(list["count"], json!(2));
    assert_eq!(names(&list["peers"]), set(&["Bob", "Alice"]));
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
    bob.drain();
    assert!(lookup(&bob, "Alice"));
}

/// Part 1, `register`: "Tells the other peers `peer_joined`" (on every `register`).
#[test]
fn reregister_tells_others_peer_joined() {
    let r = Relay::start(&[]);
    let bob = join(&r, "Bob");
    let alice = join(&r, "Alice");
    assert_eq!(bob.expect("peer_joined")["peer_name"], "Alice");
    alice.register("Alice");
    let got = bob.drain();
    assert!(
        got.iter()
            .any(|v| v["type"] == "peer_joined" && v["peer_name"] == "Alice"),
        "Bob was not told peer_joined on Alice's second register: {got:?}"
    );
}

#[test]
fn keepalive_acks_and_registers_unknown_names() {
    let r = Relay::start(&[]);
    let bob = join(&r, "Bob");
    bob.send(json!({"type": "keepalive", "name": "Bob"}));
    let (raw, ack) = recv2(&bob);
    assert_eq!(ack["type"], "keepalive_ack", "{ack}");
    assert_eq!(ack["peer_name"], "Bob");
    check_server_time(&raw, &ack);

    // A keepalive for an unknown name registers it (peers rely on it after a relay restart).
    let kim = Peer::new(&r);
    kim.send(json!({"type": "keepalive", "name": "Kim"}));
    let ack = kim.expect("keepalive_ack");
    assert_eq!(ack["peer_name"], "Kim");
    let joined = bob.expect("peer_joined");
    assert_eq!(joined["peer_name"], "Kim");
    assert_eq!(names(&joined["peers"]), set(&["Bob", "Kim"]));
    assert!(lookup(&bob, "Kim"));
    bob.send_raw(relay_msg("Bob", "Kim", r#""hi""#).as_bytes());
    check_relayed(&kim.recv_raw(), "Bob", r#""hi""#);
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
}

#[test]
fn ping_pongs_with_address_and_time() {
    let r = Relay::start(&[]);
    // Anyone may ping, registered or not, with or without a name.
    let p = Peer::new(&r);
    for msg in [
        json!({"type": "ping"}),
        json!({"type": "ping", "name": "Nobody"}),
    ] {
        p.send(msg);
        let (raw, pong) = recv2(&p);
        assert_eq!(pong["type"], "pong", "{pong}");
        assert_eq!(pong["your_address"], p.addr().to_string());
        check_server_time(&raw, &pong);
    }
    let a = join(&r, "A");
    a.send(json!({"type": "ping", "name": "A"}));
    assert_eq!(a.expect("pong")["your_address"], a.addr().to_string());
    // Leading JSON whitespace is still a JSON datagram.
    a.send_raw(b" \r\n\t{\"type\":\"ping\"}");
    a.expect("pong");
}

#[test]
fn relay_forwards_the_payload_byte_for_byte() {
    let r = Relay::start(&[]);
    let alice = join(&r, "Alice");
    let bob = join(&r, "Bob");
    alice.drain();
    let payloads = [
        // What the old peers send: a JSON document inside a string.
        r#""{\"type\": \"handshake\", \"key\": \"q+/=\", \"note\": \"caf\u00e9 \/ \ud83d\ude00\"}""#,
        r#"{ "k" : [1, 2.50, -0.0e+10, "caf\u00e9", "\ud83d\ude00", "\/"],  "n":null }"#,
        r#"[]"#,
        r#"-1.50E+02"#,
        r#"true"#,
        r#"null"#,
        "\"raw UTF-8 zoë 🙂 \\t\"",
    ];
    for p in payloads {
        alice.send_raw(relay_msg("Alice", "Bob", p).as_bytes());
        check_relayed(&bob.recv_raw(), "Alice", p);
    }
    // Field order and whitespace are free; unknown fields are ignored.
    let p = r#"{"z": 1 , "a" : [ true ,false ] }"#;
    let d = format!(
        " \n{{ \"payload\" : {p} ,\n \"extra\": {{\"target\": 5}}, \"source\":\"Alice\",\"target\" :\"Bob\", \"type\": \"relay\" }}\r\n"
    );
    alice.send_raw(d.as_bytes());
    check_relayed(&bob.recv_raw(), "Alice", p);
    // Escaped routing fields name the same peers; from_peer comes from the registry.
    alice.send_raw(
        br#"{"type":"rel\u0061y","target":"\u0042ob","source":"Alic\u0065","payload":7}"#,
    );
    check_relayed(&bob.recv_raw(), "Alice", "7");
    // A large payload.
    let big = format!("\"{}\"", "abc\\\"".repeat(6000));
    alice.send_raw(relay_msg("Alice", "Bob", &big).as_bytes());
    check_relayed(&bob.recv_raw(), "Alice", &big);
    // Bob can answer.
    bob.send_raw(relay_msg("Bob", "Alice", r#""ack""#).as_bytes());
    check_relayed(&alice.recv_raw(), "Bob", r#""ack""#);
    alice.expect_nothing();
    bob.expect_nothing();
    assert_eq!(r.metric("udp_relay_relay_messages_forwarded_total"), 11);
}

#[test]
fn relay_believes_the_registry_not_the_source_field() {
    let r = Relay::start(&[]);
    let alice = join(&r, "Alice");
    let bob = join(&r, "Bob");
    let carol = join(&r, "Carol");
    for p in [&alice, &bob, &carol] {
        p.drain();
    }
    // Bob forges Alice's name: refused, and Bob (registered) is told.
    let forged =
        pad(json!({"type": "relay", "source": "Alice", "target": "Carol", "payload": "x"}));
    let d = forged.to_string();
    bob.send_raw(d.as_bytes());
    expect_error(&bob, "not_registered");
    // From an address that holds nothing: refused silently.
    let mallory = Peer::new(&r);
    mallory.send_raw(d.as_bytes());
    mallory.expect_nothing();
    carol.expect_nothing();
    alice.expect_nothing();
    assert_eq!(r.refused("not_registered"), 2);
    assert_eq!(r.metric("udp_relay_relay_messages_forwarded_total"), 0);

    // Several names may share one address; each speaks for itself.
    prove(&alice, "Alice2");
    bob.drain();
    carol.drain();
    alice.send_raw(relay_msg("Alice2", "Carol", "2").as_bytes());
    check_relayed(&carol.recv_raw(), "Alice2", "2");
    alice.send_raw(relay_msg("Alice", "Carol", "1").as_bytes());
    check_relayed(&carol.recv_raw(), "Alice", "1");
}

#[test]
fn relay_to_unknown_target_forwards_nothing() {
    let r = Relay::start(&[]);
    let alice = join(&r, "Alice");
    let bob = join(&r, "Bob");
    alice.drain();
    send_expect_error(
        &alice,
        json!({"type": "relay", "source": "Alice", "target": "Nobody", "payload": "x"}),
        "unknown_target",
    );
    assert_eq!(r.refused("unknown_target"), 1);
    assert_eq!(r.metric("udp_relay_relay_messages_forwarded_total"), 0);
    bob.expect_nothing();
    // Relaying refreshed Alice's liveness and she is still served.
    assert!(lookup(&bob, "Alice"));
}

#[test]
fn relay_refuses_malformed_datagrams() {
    let r = Relay::start(&["--error-rate", "1000"]);
    let alice = join(&r, "Alice");
    let bob = join(&r, "Bob");
    alice.drain();
    let pad = format!(r#","pad":"{}""#, "x".repeat(150));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "missing_field",
            format!(r#"{{"type":"relay","source":"Alice","payload":1{pad}}}"#).into(),
        ),
        (
            "missing_field",
            format!(r#"{{"type":"relay","target":"Bob","payload":1{pad}}}"#).into(),
        ),
        (
            "missing_field",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice"{pad}}}"#).into(),
        ),
        (
            "duplicate_field",
            format!(
                r#"{{"type":"relay","target":"Bob","target":"Bob","source":"Alice","payload":1{pad}}}"#
            )
            .into(),
        ),
        (
            "duplicate_field",
            format!(
                r#"{{"type":"relay","target":"Bob","source":"Alice","source":"Alice","payload":1{pad}}}"#
            )
            .into(),
        ),
        (
            "duplicate_field",
            format!(
                r#"{{"type":"relay","type":"relay","target":"Bob","source":"Alice","payload":1{pad}}}"#
            )
            .into(),
        ),
        (
            "wrong_field_type",
            format!(r#"{{"type":"relay","target":5,"source":"Alice","payload":1{pad}}}"#).into(),
        ),
        (
            "wrong_field_type",
            format!(r#"{{"type":"relay","target":"Bob","source":null,"payload":1{pad}}}"#).into(),
        ),
        (
            "wrong_field_type",
            format!(r#"{{"type":["relay"],"target":"Bob","source":"Alice","payload":1{pad}}}"#)
                .into(),
        ),
        (
            "malformed_json",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice","payload":{{"a":}}{pad}}}"#)
                .into(),
        ),
        (
            "malformed_json",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice","payload":01{pad}}}"#)
                .into(),
        ),
        (
            "malformed_json",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice","payload":"\x"{pad}}}"#)
                .into(),
        ),
        (
            "malformed_json",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice","payload":'x'{pad}}}"#)
                .into(),
        ),
        (
            "malformed_json",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice","payload":NaN{pad}}}"#)
                .into(),
        ),
        (
            "malformed_json",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice","payload":[1,2{pad}}}"#)
                .into(),
        ),
        (
            "malformed_json",
            format!(r#"{{"type":"relay","target":"Bob","source":"Alice","payload":1{pad}}} x"#)
                .into(),
        ),
        ("not_utf8", {
            let mut d = br#"{"type":"relay","target":"Bob","source":"Alice","payload":"a"#.to_vec();
            d.extend_from_slice(b"\xff\xfe\"");
            d.extend_from_slice(format!("{pad}}}").as_bytes());
            d
        }),
    ];
    for (reason, d) in &cases {
        alice.send_raw(d);
        let e = alice.recv();
        let what = String::from_utf8_lossy(d);
        assert_eq!(e["type"], "error", "{reason}: {what} got {e}");
        assert_eq!(e["code"], "bad_request", "{reason}: {what}");
    }
    bob.expect_nothing();
    assert_eq!(r.metric("udp_relay_relay_messages_forwarded_total"), 0);
    for reason in [
        "missing_field",
        "duplicate_field",
        "wrong_field_type",
        "malformed_json",
        "not_utf8",
    ] {
        let n = cases.iter().filter(|(r, _)| *r == reason).count() as u64;
        assert_eq!(r.refused(reason), n, "refusals counted as {reason}");
    }
}

// ---------------------------------------------------------------------------------------------
// Part 2: names and sessions

#[test]
fn keepalive_with_session_moves_the_registration() {
    let r = Relay::start(&[]);
    let bob = join(&r, "Bob");
    let (home, ack) = join_ack(&r, "Alice");
    bob.drain();
    let session = ack["session"].as_str().unwrap().to_owned();
    // Alice's NAT mapping changes: she speaks from a new address with her token.
    let moved = Peer::new(&r);
    moved.send(json!({"type": "keepalive", "name": "Alice", "session": session}));
    assert_eq!(moved.expect("keepalive_ack")["peer_name"], "Alice");
    bob.send_raw(relay_msg("Bob", "Alice", r#""where""#).as_bytes());
    check_relayed(&moved.recv_raw(), "Bob", r#""where""#);
    home.expect_nothing();
    // The old address holds the name no more.
    home.send_raw(relay_msg("Alice", "Bob", "1").as_bytes());
    home.expect_nothing();
    bob.expect_nothing();
    assert_eq!(r.refused("not_registered"), 1);
    moved.send_raw(relay_msg("Alice", "Bob", "2").as_bytes());
    check_relayed(&bob.recv_raw(), "Alice", "2");
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
}

#[test]
fn register_with_session_moves_the_registration() {
    let r = Relay::start(&[]);
    let bob = join(&r, "Bob");
    let (home, ack) = join_ack(&r, "Alice");
    bob.drain();
    let moved = Peer::new(&r);
    moved.send(json!({"type": "register", "name": "Alice", "session": ack["session"]}));
    let ack2 = moved.expect("register_ack");
    assert_eq!(ack2["status"], "success");
    assert_eq!(ack2["your_address"], moved.addr().to_string());
    assert_eq!(ack2["peer_name"], "Alice");
    // A move issues a new session, sent only to the new address.
    assert!(ack2["session"].is_string());
    assert_ne!(ack2["session"], ack["session"]);
    let list = moved.expect("peer_list");
    assert_eq!(list["count"], json!(2));
    bob.send_raw(relay_msg("Bob", "Alice", "3").as_bytes());
    check_relayed(&moved.recv_raw(), "Bob", "3");
    home.expect_nothing();
}

#[test]
fn live_name_is_not_taken_without_session() {
    let r = Relay::start(&["--error-rate", "1000"]);
    let (alice, ack) = join_ack(&r, "Alice");
    let session = ack["session"].as_str().unwrap().to_owned();
    let thief = Peer::new(&r);
    // register from another address: refused, and the requester is told.
    send_expect_error(
        &thief,
        json!({"type": "register", "name": "Alice"}),
        "name_in_use",
    );
    // A wrong token does not help.
    let mut wrong = session.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    send_expect_error(
        &thief,
        json!({"type": "register", "name": "Alice", "session": wrong}),
        "name_in_use",
    );
    // keepalive from an address that holds nothing: refused silently.
    thief.send(pad(json!({"type": "keepalive", "name": "Alice"})));
    thief.expect_nothing();
    // keepalive from an address holding another name: refused with an error.
    let carol = join(&r, "Carol");
    alice.drain();
    send_expect_error(
        &carol,
        json!({"type": "keepalive", "name": "Alice"}),
        "name_in_use",
    );
    assert_eq!(r.refused("name_in_use"), 4);
    // Alice keeps her name.
    carol.send_raw(relay_msg("Carol", "Alice", "1").as_bytes());
    check_relayed(&alice.recv_raw(), "Carol", "1");
    alice.expect_nothing();
}

#[test]
fn names_follow_the_rules() {
    // Many replies to one address that never echoes its token: no credit limit here.
    let r = Relay::start(&args(&["--error-rate", "1000"], NO_BUDGETS));
    let valid = [
        "A".to_owned(),
        "x".repeat(64),
        "é".repeat(32),
        "🙂".repeat(16),
        "zoë 🙂 with spaces".to_owned(),
        r#"q"uote\back/slash"#.to_owned(),
    ];
    let multi = join(&r, "Observer");
    let p = Peer::new(&r);
    prove(&p, &valid[0]);
    assert_eq!(multi.expect("peer_joined")["peer_name"], json!(valid[0]));
    for name in &valid[1..] {
        let (ack, _) = p.register(name);
        assert_eq!(ack["peer_name"], json!(name), "{ack}");
        p.drain();
        let joined = multi.expect("peer_joined");
        assert_eq!(joined["peer_name"], json!(name));
    }
    // Escapes in the name decode to the same name.
    p.send_raw(br#"{"type":"register","name":"\u0042eta"}"#);
    assert_eq!(p.expect("register_ack")["peer_name"], "Beta");
    p.expect("peer_list");
    assert_eq!(multi.expect("peer_joined")["peer_name"], "Beta");
    p.drain();
    // from_peer carries the registered name, escaped as JSON needs.
    p.send_raw(relay_msg(&valid[5], "Observer", "0").as_bytes());
    check_relayed(&multi.recv_raw(), &valid[5], "0");

    let invalid = [
        String::new(),
        "x".repeat(65),
        format!("{}é", "x".repeat(63)),
        "🙂".repeat(17),
        "a\nb".to_owned(),
        "tab\there".to_owned(),
        "nul\u{0}".to_owned(),
        "del\u{7f}".to_owned(),
        "c1\u{85}".to_owned(),
        "esc\u{1b}".to_owned(),
    ];
    let stranger = Peer::new(&r);
    for name in &invalid {
        send_expect_error(
            &stranger,
            json!({"type": "register", "name": name}),
            "invalid_name",
        );
        // keepalive: the same rule; an address holding nothing is not answered.
        stranger.send(pad(json!({"type": "keepalive", "name": name})));
        stranger.expect_nothing();
        // ... an address holding a name is.
        send_expect_error(
            &p,
            json!({"type": "keepalive", "name": name}),
            "invalid_name",
        );
    }
    assert_eq!(r.refused("invalid_name"), 3 * invalid.len() as u64);
    send_expect_error(
        &stranger,
        json!({"type": "register", "name": 5}),
        "bad_request",
    );
    send_expect_error(&stranger, json!({"type": "register"}), "bad_request");
    multi.expect_nothing();
    assert_eq!(
        r.metric("udp_relay_peers_registered"),
        2 + valid.len() as u64
    );
}

// ---------------------------------------------------------------------------------------------
// Part 1 liveness, with short timeouts

#[test]
fn server_keepalive_is_sent_every_interval() {
    let r = Relay::start(&["--peer-timeout", "5s", "--keepalive-interval", "200ms"]);
    let a = Peer::new(&r);
    a.register("A");
    for _ in 0..2 {
        let (raw, v) = recv2(&a);
        assert_eq!(v["type"], "server_keepalive", "{v}");
        assert_eq!(v["peer_name"], "A");
        check_server_time(&raw, &v);
        // The peer answers, as old peers do; the relay keeps sending every interval.
        a.send(json!({"type": "keepalive", "name": "A"}));
        a.expect("keepalive_ack");
    }
}

#[test]
fn reaper_removes_silent_peers_and_keeps_active_ones() {
    let r = Relay::start(&["--peer-timeout", "1s", "--keepalive-interval", "300ms"]);
    // B answers keepalives, C pings naming itself, D relays to B: each a message naming the
    // peer, which keeps it live.
    let b = join(&r, "B");
    let c = join(&r, "C");
    let d = join(&r, "D");
    // A registers last and then falls silent: anyone not refreshed is reaped with it or before.
    let a = Peer::new(&r);
    a.register("A");
    for p in [&b, &c, &d] {
        p.drain();
    }
    let tb = live_until_left(b, &["A"], |p| {
        p.send(json!({"type": "keepalive", "name": "B"}))
    });
    let tc = live_until_left(c, &["A"], |p| p.send(json!({"type": "ping", "name": "C"})));
    let td = live_until_left(d, &["A"], |p| {
        p.send_raw(relay_msg("D", "B", r#""tick""#).as_bytes())
    });
    let mut alive = Vec::new();
    for t in [tb, tc, td] {
        let (p, left) = t.join().expect("peer thread");
        assert_eq!(left.len(), 1, "only A left: {left:?}");
        let v = &left[0];
        assert_eq!(v["peer_name"], "A");
        assert_eq!(names(&v["peers"]), set(&["B", "C", "D"]));
        alive.push(p);
    }
    for n in ["B", "C", "D"] {
        assert!(lookup_skip(&alive[0], n), "{n} was active yet reaped");
    }
    assert!(!lookup_skip(&alive[0], "A"));
    assert_eq!(r.metric("udp_relay_peers_registered"), 3);
    // Once stale, anyone may register the name (an old peer whose NAT mapping changed).
    let again = Peer::new(&r);
    let (ack, list) = again.register("A");
    assert_eq!(ack["your_address"], again.addr().to_string());
    assert_eq!(list["count"], json!(4));
    drop(a);
}

/// Liveness: a message keeps live the name it names, not every name at its address (PROTOCOL.md,
/// Liveness). One address may hold several names; each must be refreshed by name.
#[test]
fn keepalive_for_one_name_keeps_only_that_name_live() {
    // Replies to these unauthenticated refreshes are not what is tested: no budgets.
    let r = Relay::start(&args(
        &["--peer-timeout", "1s", "--keepalive-interval", "300ms"],
        NO_BUDGETS,
    ));
    let s = join(&r, "S1");
    prove(&s, "S2");
    let t = join(&r, "T1");
    prove(&t, "T2");
    let m = Peer::new(&r);
    m.register("M");
    s.drain();
    t.drain();
    // S answers every server_keepalive (for either name) with a keepalive for S1 only; T relays
    // as T1 only. M, silent, registered last: once it is gone, any name not refreshed is too.
    // (A peer is not told of the names at its own address.)
    let ts = live_until_left(s, &["T2", "M"], |p| {
        p.send(json!({"type": "keepalive", "name": "S1"}))
    });
    let tt = live_until_left(t, &["S2", "M"], |p| {
        p.send_raw(relay_msg("T1", "S1", "0").as_bytes())
    });
    let (s, s_left) = ts.join().expect("S thread");
    let (_t, t_left) = tt.join().expect("T thread");
    for (left, want) in [(&s_left, ["T2", "M"]), (&t_left, ["S2", "M"])] {
        let heard: BTreeSet<String> = left
            .iter()
            .map(|v| v["peer_name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(heard, set(&want), "{left:?}");
        assert_eq!(left.len(), want.len(), "{left:?}");
        for v in left.iter() {
            assert!(
                names(&v["peers"]).is_superset(&set(&["S1", "T1"])),
                "a name refreshed by name was reaped: {v}"
            );
        }
    }
    assert!(lookup_skip(&s, "S1") && lookup_skip(&s, "T1"));
    assert!(!lookup_skip(&s, "S2") && !lookup_skip(&s, "T2"));
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
}

#[test]
fn watchers_hear_of_reaped_peers_beyond_announce_max() {
    let r = Relay::start(&[
        "--peer-timeout",
        "1s",
        "--keepalive-interval",
        "300ms",
        "--announce-max",
        "1",
    ]);
    let w = join(&r, "W");
    w.send(w.authed(json!({"type": "watch", "names": ["X"]})));
    assert_eq!(names(&w.expect("watch_ack")["online"]), set(&[]));
    let x = Peer::new(&r);
    x.register("X");
    let joined = w.expect("peer_joined");
    assert_eq!(joined["peer_name"], "X");
    let tw = live_until_left(w, &["X"], |p| {
        p.send(json!({"type": "keepalive", "name": "W"}))
    });
    let (w, left) = tw.join().expect("W thread");
    assert_eq!(left.len(), 1);
    assert!(left[0]["peers"].is_array());
    assert!(!lookup_skip(&w, "X"));
    drop(x);
}

// ---------------------------------------------------------------------------------------------
// Part 2: errors

#[test]
fn errors_go_to_registered_or_requesting_peers_within_the_budgets() {
    // Default budgets, and no per-source error limit in the way.
    let r = Relay::start(&["--max-datagram", "512", "--error-rate", "1000000"]);
    let a = join(&r, "A");
    // Every datagram from 127.0.0.1 so far was a registration (which cost more than it sent)
    // or authenticated (which earns nothing and costs nothing): the host has at most its
    // 2048-byte credit left. A `type` the relay does not serve is never authenticated, so a
    // flood of tiny ones is answered only as far as that credit and what they send pay.
    let tiny = br#"{"type":"bogus"}"#;
    let n = 200;
    for _ in 0..n {
        a.send_raw(tiny);
    }
    let got = drain_raw(&a);
    let back: usize = got.iter().map(Vec::len).sum();
    for d in &got {
        let v: Value = serde_json::from_slice(d).unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], "bad_request", "{v}");
        // In full, or in short form where the full one does not fit what is left.
        assert!(v["message"] == "unknown type" || v["message"] == "", "{v}");
    }
    assert!(!got.is_empty(), "the credit pays for the first errors");
    assert!(
        got.len() < n,
        "every one of {n} tiny datagrams was answered"
    );
    assert!(
        back <= n * tiny.len() + 2048,
        "{back} bytes of errors for {} bytes sent",
        n * tiny.len()
    );
    assert!(r.metric(r#"udp_relay_sends_withheld_total{kind="reply"}"#) > 0);
    // A request that pays for its answer gets it in full, credit or not.
    let e = send_expect_error(&a, json!({"type": "bogus"}), "bad_request");
    assert_eq!(e["message"], "unknown type");
    // An address holding nothing is not answered.
    let stranger = Peer::new(&r);
    stranger.send(pad(json!({"type": "bogus"})));
    stranger.expect_nothing();
    assert_eq!(r.refused("unknown_type"), n as u64 + 2);
    // Fields that do not parse.
    send_expect_error(&a, json!({"type": "lookup"}), "bad_request");
    send_expect_error(&a, json!({"type": "watch", "names": "A"}), "bad_request");
    send_expect_error(&a, json!({"type": "lookup", "name": ""}), "invalid_name");
    // Longer than --max-datagram.
    let big = json!({"type": "ping", "pad": "y".repeat(600)}).to_string();
    a.send_raw(big.as_bytes());
    expect_error(&a, "too_large");
    assert_eq!(r.refused("too_large"), 1);
    // Anything not JSON, STUN or a channel frame is dropped and counted.
    a.send_raw(b"hello relay");
    a.send_raw(b"[\"type\",\"ping\"]");
    a.expect_nothing();
    assert_eq!(r.refused("unknown_family"), 2);
}

#[test]
fn error_replies_are_rate_limited_per_source() {
    let r = Relay::start(&["--error-rate", "1"]);
    let a = join(&r, "A");
    let b = Peer::bind(r.addr, "127.0.0.2:0");
    prove(&b, "B");
    a.drain();
    let bad = pad(json!({"type": "bogus"})).to_string();
    let t = Instant::now();
    for _ in 0..30 {
        a.send_raw(bad.as_bytes());
    }
    let got = drain_raw(&a);
    let secs = t.elapsed().as_secs_f64();
    for d in &got {
        let v: Value = serde_json::from_slice(d).unwrap();
        assert_eq!(v["code"], "bad_request", "{v}");
    }
    // Bursts of twice the rate, refilled at the rate.
    let most = 2 + secs.ceil() as usize;
    assert!(
        !got.is_empty() && got.len() <= most,
        "{} error replies to 30 bad datagrams in {secs:.3}s at --error-rate 1",
        got.len()
    );
    assert_eq!(r.refused("unknown_type"), 30, "refusals are always counted");
    assert_eq!(
        r.metric("udp_relay_error_replies_suppressed_total"),
        30 - got.len() as u64
    );
    // Another source has its own allowance.
    b.send_raw(bad.as_bytes());
    expect_error(&b, "bad_request");
}

// ---------------------------------------------------------------------------------------------
// Part 2: presence at scale

#[test]
fn presence_beyond_announce_max() {
    // One socket registers 40 names below, each answered with a register_ack and a list: more
    // than one loopback host's reply credit. Lists are still cut to --reply-budget.
    let r = Relay::start(&args(
        &["--announce-max", "3", "--reply-budget", "256"],
        NO_BUDGETS,
    ));
    let w = join(&r, "W");
    w.send(w.authed(json!({"type": "watch", "names": ["X", "Y"]})));
    assert_eq!(names(&w.expect("watch_ack")["online"]), set(&[]));
    // While small (at most 3), everyone hears of everyone.
    let p1 = join(&r, "P1");
    assert_eq!(w.expect("peer_joined")["peer_name"], "P1");
    let p2 = join(&r, "P2");
    assert_eq!(w.expect("peer_joined")["peer_name"], "P2");
    assert_eq!(p1.expect("peer_joined")["peer_name"], "P2");
    // Beyond it, only watchers hear; nobody watches P3.
    let p3 = join(&r, "P3");
    for p in [&w, &p1, &p2] {
        p.expect_nothing();
    }
    let x = join(&r, "X");
    let joined = w.expect("peer_joined");
    assert_eq!(joined["peer_name"], "X");
    assert!(joined["peers"].is_array());
    for p in [&w, &p1, &p2, &p3] {
        p.expect_nothing();
    }
    assert!(lookup(&p1, "X"));
    assert!(!lookup(&p1, "Nobody"));
    // Many names: peer_list is cut to the budget, count is the true total.
    let q = join(&r, "q00");
    let mut last = None;
    for i in 1..40 {
        q.send(json!({"type": "register", "name": format!("q{i:02}")}));
        q.expect("register_ack");
        last = Some(q.recv_raw());
    }
    let raw = last.unwrap();
    let list: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(list["type"], "peer_list");
    assert!(raw.len() <= 256, "peer_list of {} bytes", raw.len());
    assert_eq!(list["count"], json!(5 + 40));
    assert_eq!(list["truncated"], json!(true));
    let listed = names(&list["peers"]);
    assert!(!listed.is_empty() && listed.len() < 45);
    for p in [&w, &p1, &p2, &p3, &x] {
        p.expect_nothing();
    }
    // unregister: watchers hear peer_left, others nothing.
    x.send(x.authed(json!({"type": "unregister", "name": "X"})));
    let left = w.expect("peer_left");
    assert_eq!(left["peer_name"], "X");
    assert!(left["peers"].is_array());
    for p in [&p1, &p2, &p3, &q] {
        p.expect_nothing();
    }
    assert!(!lookup(&p1, "X"));
    let _y = join(&r, "Y");
    assert_eq!(w.expect("peer_joined")["peer_name"], "Y");
    p1.expect_nothing();
    w.send(w.authed(json!({"type": "watch", "names": ["Y", "P1", "Nobody"]})));
    assert_eq!(names(&w.expect("watch_ack")["online"]), set(&["Y", "P1"]));
}

/// Part 2: "`peer_list` holds as many names as fit the reply budget".
#[test]
fn truncated_peer_list_holds_as_many_names_as_fit() {
    // 40 registrations from one socket: beyond a loopback host's reply credit.
    let r = Relay::start(&args(
        &["--announce-max", "1", "--reply-budget", "256"],
        NO_BUDGETS,
    ));
    let q = join(&r, "n00");
    let mut raw = Vec::new();
    for i in 1..40 {
        q.send(json!({"type": "register", "name": format!("n{i:02}")}));
        q.expect("register_ack");
        raw = q.recv_raw();
    }
    let list: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(list["truncated"], json!(true));
    assert_eq!(list["count"], json!(40));
    assert!(raw.len() <= 256);
    // Every name takes 6 bytes in the list (`"nNN",`): one more would still have fitted?
    assert!(
        raw.len() + 6 > 256,
        "peer_list of {} bytes holds {} of 40 names; another would fit in 256: {}",
        raw.len(),
        names(&list["peers"]).len(),
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn watch_is_bounded_by_max_watch() {
    let r = Relay::start(&["--max-watch", "2"]);
    let w = join(&r, "W");
    let _a = join(&r, "a");
    w.drain();
    w.send(w.authed(json!({"type": "watch", "names": ["a", "b", "c"]})));
    let got = drain_raw(&w);
    let parsed: Vec<Value> = got
        .iter()
        .map(|d| serde_json::from_slice(d).unwrap())
        .collect();
    let ack = parsed
        .iter()
        .find(|v| v["type"] == "watch_ack")
        .unwrap_or_else(|| panic!("no watch_ack: {parsed:?}"));
    assert_eq!(names(&ack["online"]), set(&["a"]));
    let err = parsed
        .iter()
        .find(|v| v["type"] == "error")
        .unwrap_or_else(|| panic!("no error: {parsed:?}"));
    assert_eq!(err["code"], "watch_limit", "{err}");
    assert_eq!(r.refused("watch_limit"), 1);
    assert_eq!(r.metric("udp_relay_watch_entries"), 2);
}

/// Part 2: `unwatch` ends the announcements of the names it lists; its `watch_ack` holds what is
/// still watched and live.
#[test]
fn unwatch_stops_the_announcements_of_a_name() {
    // Beyond --announce-max only watchers hear of joins and leaves.
    let r = Relay::start(&["--announce-max", "1"]);
    let w = join(&r, "W");
    w.send(w.authed(json!({"type": "watch", "names": ["X", "Y", "Z"]})));
    assert_eq!(names(&w.expect("watch_ack")["online"]), set(&[]));
    let x = join(&r, "X");
    assert_eq!(w.expect("peer_joined")["peer_name"], "X");
    let y = join(&r, "Y");
    assert_eq!(w.expect("peer_joined")["peer_name"], "Y");
    assert_eq!(r.metric("udp_relay_watch_entries"), 3);
    // Still watched: Y (live) and Z (not live); X is no longer.
    w.send(w.authed(json!({"type": "unwatch", "names": ["X", "Nobody"]})));
    assert_eq!(names(&w.expect("watch_ack")["online"]), set(&["Y"]));
    assert_eq!(r.metric("udp_relay_watch_entries"), 2);
    // X registers again (a register is announced) and leaves: W hears nothing of it.
    x.register("X");
    x.send(x.authed(json!({"type": "unregister", "name": "X"})));
    x.drain();
    w.expect_nothing();
    assert!(!lookup(&w, "X"));
    // Y, still watched, is announced as before.
    y.send(y.authed(json!({"type": "unregister", "name": "Y"})));
    assert_eq!(w.expect("peer_left")["peer_name"], "Y");
    // Unwatching everything leaves nothing; unwatching again changes nothing.
    for _ in 0..2 {
        w.send(w.authed(json!({"type": "unwatch", "names": ["Y", "Z"]})));
        assert_eq!(names(&w.expect("watch_ack")["online"]), set(&[]));
    }
    assert_eq!(r.metric("udp_relay_watch_entries"), 0);
    let _z = join(&r, "Z");
    w.expect_nothing();
}

/// Part 2: `unregister`, `watch`, `unwatch` and `connect` must be authenticated: without the
/// session of the name they speak for (or with another one) they are refused with
/// `session_required`; with it, from the name's address, they are served.
#[test]
fn session_required_for_unregister_watch_unwatch_and_connect() {
    let r = Relay::start(&["--error-rate", "1000"]);
    let a = join(&r, "A");
    let b = join(&r, "B");
    a.drain();
    let requests = [
        json!({"type": "watch", "names": ["B"]}),
        json!({"type": "unwatch", "names": ["B"]}),
        json!({"type": "connect", "target": "B"}),
        json!({"type": "unregister", "name": "A"}),
    ];
    let wrong = [
        json!(null),
        json!(b.session()),
        json!("0123456789abcdef0123456789abcdef"),
        json!("not a session"),
    ];
    for msg in &requests {
        for session in &wrong {
            let mut m = msg.clone();
            if !session.is_null() {
                m["session"] = session.clone();
            }
            let e = send_expect_error(&a, m.clone(), "session_required");
            assert!(!e["message"].as_str().unwrap().is_empty(), "{m}: {e}");
            // And naming the name explicitly changes nothing.
            m["name"] = json!("A");
            send_expect_error(&a, m, "session_required");
        }
    }
    let refused = (requests.len() * wrong.len() * 2) as u64;
    assert_eq!(r.refused("session_required"), refused);
    // Nothing was done: B was introduced to nobody, A is still registered.
    b.expect_nothing();
    assert!(lookup(&b, "A"));
    assert_eq!(r.metric("udp_relay_watch_entries"), 0);
    // With the session, each is served.
    a.send(a.authed(requests[0].clone()));
    assert_eq!(names(&a.expect("watch_ack")["online"]), set(&["B"]));
    assert_eq!(r.metric("udp_relay_watch_entries"), 1);
    a.send(a.authed(requests[1].clone()));
    assert_eq!(names(&a.expect("watch_ack")["online"]), set(&[]));
    assert_eq!(r.metric("udp_relay_watch_entries"), 0);
    a.send(a.authed(requests[2].clone()));
    assert_eq!(b.expect("connect_request")["peer_name"], "A");
    b.send(b.authed(json!({"type": "connect", "target": "A"})));
    assert_eq!(b.expect("introduce")["peer_name"], "A");
    assert_eq!(a.expect("introduce")["peer_name"], "B");
    a.send(a.authed(requests[3].clone()));
    assert_eq!(b.expect("peer_left")["peer_name"], "A");
    assert!(!lookup(&b, "A"));
    assert_eq!(r.refused("session_required"), refused);
}

/// Part 2: a move issues a new session, and the old one authenticates nothing any more, from
/// either address; nor does it move the name back.
#[test]
fn a_moved_peers_old_session_no_longer_authenticates() {
    let r = Relay::start(&["--error-rate", "1000"]);
    let bob = join(&r, "Bob");
    let (home, ack) = join_ack(&r, "Alice");
    bob.drain();
    let old = ack["session"].as_str().unwrap().to_owned();
    let moved = Peer::new(&r);
    moved.send(json!({"type": "keepalive", "name": "Alice", "session": old}));
    let kack = moved.expect("keepalive_ack");
    let new = kack["session"]
        .as_str()
        .expect("keepalive_ack carries the session")
        .to_owned();
    assert_ne!(new, old, "a move issues a new session");
    // The old session, from the new address: refused, and the new address is told.
    for msg in [
        json!({"type": "watch", "names": ["Bob"], "name": "Alice", "session": old}),
        json!({"type": "connect", "target": "Bob", "name": "Alice", "session": old}),
        json!({"type": "unregister", "name": "Alice", "session": old}),
    ] {
        send_expect_error(&moved, msg, "session_required");
    }
    // From the old address, which holds nothing now: refused, and not answered.
    for msg in [
        json!({"type": "connect", "target": "Bob", "name": "Alice", "session": old}),
        json!({"type": "unregister", "name": "Alice", "session": old}),
        json!({"type": "keepalive", "name": "Alice", "session": old}),
        json!({"type": "register", "name": "Alice", "session": old}),
    ] {
        home.send(pad(msg));
    }
    // (Only the register's requester is answered.)
    let got = home.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["code"], "name_in_use", "{got:?}");
    bob.expect_nothing();
    // Alice is still at the new address, and the new session works there.
    bob.send_raw(relay_msg("Bob", "Alice", r#""here?""#).as_bytes());
    check_relayed(&moved.recv_raw(), "Bob", r#""here?""#);
    moved.send(json!({"type": "connect", "target": "Bob", "name": "Alice", "session": new}));
    assert_eq!(bob.expect("connect_request")["peer_name"], "Alice");
    bob.send(bob.authed(json!({"type": "connect", "target": "Alice"})));
    assert_eq!(bob.expect("introduce")["address"], moved.addr().to_string());
    assert_eq!(moved.expect("introduce")["address"], bob.addr().to_string());
    // Moving once more retires the second session too.
    let third = Peer::new(&r);
    third.send(json!({"type": "register", "name": "Alice", "session": new}));
    let ack3 = third.expect("register_ack");
    third.expect("peer_list");
    assert_eq!(bob.expect("peer_joined")["peer_name"], "Alice");
    assert_ne!(ack3["session"], json!(new));
    assert_ne!(ack3["session"], json!(old));
    // The second session, from the address it was sent to (which holds nothing now).
    moved.send(pad(
        json!({"type": "unregister", "name": "Alice", "session": new}),
    ));
    moved.expect_nothing();
    assert!(lookup(&bob, "Alice"));
    home.expect_nothing();
}

#[test]
fn unregister_follows_the_rules_of_taking_a_name() {
    let r = Relay::start(&["--error-rate", "1000"]);
    let a = join(&r, "A");
    let b = join(&r, "B");
    let c = join(&r, "C");
    a.drain();
    b.drain();
    // Another address cannot remove A: not without the token, nor with it (a token counts only
    // from the address it was sent to).
    send_expect_error(
        &c,
        json!({"type": "unregister", "name": "A"}),
        "not_registered",
    );
    send_expect_error(
        &c,
        json!({"type": "unregister", "name": "A", "session": a.session()}),
        "not_registered",
    );
    // A itself must show its session.
    send_expect_error(
        &a,
        json!({"type": "unregister", "name": "A"}),
        "session_required",
    );
    assert!(lookup(&b, "A"));
    a.expect_nothing();
    b.expect_nothing();
    // A removes itself: everyone hears peer_left (small registry).
    a.send(a.authed(json!({"type": "unregister", "name": "A"})));
    for p in [&b, &c] {
        let v = p.expect("peer_left");
        assert_eq!(v["peer_name"], "A");
        assert_eq!(names(&v["peers"]), set(&["B", "C"]));
    }
    assert!(!lookup(&b, "A"));
    a.send_raw(relay_msg("A", "B", "1").as_bytes());
    a.expect_nothing();
    b.expect_nothing();
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
    // D's token from an address that holds nothing: refused, and nobody is answered or told.
    let d = join(&r, "D");
    b.drain();
    c.drain();
    let other = Peer::new(&r);
    other.send(pad(
        json!({"type": "unregister", "name": "D", "session": d.session()}),
    ));
    other.expect_nothing();
    b.expect_nothing();
    c.expect_nothing();
    assert!(lookup(&b, "D"));
    // 2 from C, A's relay once unregistered, and this one.
    assert_eq!(r.refused("not_registered"), 4);
    assert_eq!(r.refused("session_required"), 1);
    // From its own address, it does.
    d.send(d.authed(json!({"type": "unregister", "name": "D"})));
    assert_eq!(b.expect("peer_left")["peer_name"], "D");
    assert_eq!(c.expect("peer_left")["peer_name"], "D");
    assert!(!lookup(&b, "D"));
}

#[test]
fn max_peers_refuses_new_names() {
    let r = Relay::start(&["--max-peers", "2"]);
    let a = join(&r, "A");
    let b = join(&r, "B");
    a.drain();
    let c = Peer::new(&r);
    c.send(pad(json!({"type": "register", "name": "C"})));
    let e = c.expect("error");
    assert!(ERROR_CODES.contains(&e["code"].as_str().unwrap()), "{e}");
    c.expect_nothing();
    assert_eq!(r.refused("registry_full"), 1);
    assert!(!lookup(&a, "C"));
    a.expect_nothing();
    b.expect_nothing();
    // Names already held are still served (and, being registered again, announced).
    a.register("A");
    assert_eq!(b.expect("peer_joined")["peer_name"], "A");
    // Once one leaves, the new name fits.
    a.send(a.authed(json!({"type": "unregister", "name": "A"})));
    assert_eq!(b.expect("peer_left")["peer_name"], "A");
    let (ack, list) = c.register("C");
    assert_eq!(ack["peer_name"], "C");
    assert_eq!(list["count"], json!(2));
}

// ---------------------------------------------------------------------------------------------
// Part 2: introductions

/// Part 2: an address is handed out only with its owner's consent: `connect` tells the target
/// that the sender asks, and once both have asked for each other, each is introduced to the
/// other at once. The sender hears nothing before: not whether the target exists, is online or
/// was told.
#[test]
fn connect_introduces_two_peers_who_asked_for_each_other() {
    let r = Relay::start(&["--error-rate", "1000"]);
    let alice = join(&r, "Alice");
    let bob = join(&r, "Bob");
    alice.drain();
    let session = alice.session();
    alice.send(alice.authed(json!({"type": "connect", "target": "Bob"})));
    assert_eq!(bob.expect("connect_request")["peer_name"], "Alice");
    alice.expect_nothing();
    bob.send(bob.authed(json!({"type": "connect", "target": "Alice"})));
    let to_bob = bob.expect("introduce");
    let to_alice = alice.expect("introduce");
    assert_eq!(to_alice["peer_name"], "Bob");
    assert_eq!(to_alice["address"], bob.addr().to_string());
    assert_eq!(to_bob["peer_name"], "Alice");
    assert_eq!(to_bob["address"], alice.addr().to_string());
    // With several names at one address, `name` says which one asks, with its own session;
    // Bob's consent was to Alice, not to Alice2.
    prove(&alice, "Alice2");
    bob.drain();
    send_expect_error(
        &alice,
        json!({"type": "connect", "target": "Bob", "name": "Alice2", "session": session}),
        "session_required",
    );
    bob.expect_nothing();
    alice.send(alice.authed(json!({"type": "connect", "target": "Bob", "name": "Alice2"})));
    assert_eq!(bob.expect("connect_request")["peer_name"], "Alice2");
    alice.expect_nothing();
    bob.send(bob.authed(json!({"type": "connect", "target": "Alice2"})));
    assert_eq!(bob.expect("introduce")["peer_name"], "Alice2");
    assert_eq!(alice.expect("introduce")["peer_name"], "Bob");
    // Without `name`, from an address that holds two names, nobody is introduced: the name
    // may be left out only where the sender holds one (Part 2).
    send_expect_error(
        &alice,
        json!({"type": "connect", "target": "Bob", "session": session}),
        "bad_request",
    );
    bob.expect_nothing();
    // An unknown target is answered as an online one that has not asked: not at all.
    alice.send(alice.authed(json!({"type": "connect", "target": "Nobody"})));
    alice.expect_nothing();
    // From an address that holds nothing: nobody is introduced, nobody answered.
    let stranger = Peer::new(&r);
    stranger.send(pad(json!({"type": "connect", "target": "Bob"})));
    stranger.expect_nothing();
    bob.expect_nothing();
    alice.expect_nothing();
    assert_eq!(r.refused("not_registered"), 1);
    assert_eq!(r.refused("session_required"), 1);
}

/// Part 2: the requests one name keeps pending are bounded: beyond 16 new targets in 30 s it is
/// refused (`rate_limited`), whoever the targets are; asking again for one it asked for is not
/// a new request.
#[test]
fn one_name_asks_for_a_bounded_number_of_introductions() {
    let r = Relay::start(&["--error-rate", "1000"]);
    let alice = join(&r, "Alice");
    let bob = join(&r, "Bob");
    alice.drain();
    for i in 0..15 {
        alice.send(alice.authed(json!({"type": "connect", "target": format!("n{i}")})));
    }
    alice.send(alice.authed(json!({"type": "connect", "target": "Bob"})));
    bob.expect("connect_request");
    alice.expect_nothing();
    for target in ["Bob", "n0"] {
        alice.send(alice.authed(json!({"type": "connect", "target": target})));
    }
    bob.expect("connect_request");
    for target in ["n15", "Bob2"] {
        let e = send_expect_error(
            &alice,
            alice.authed(json!({"type": "connect", "target": target})),
            "rate_limited",
        );
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(r.refused("rate_limited_connects"), 2);
    // Bob's consent still introduces them.
    bob.send(bob.authed(json!({"type": "connect", "target": "Alice"})));
    assert_eq!(alice.expect("introduce")["peer_name"], "Bob");
}

#[test]
fn no_introductions_refuses_connect() {
    let r = Relay::start(&["--no-introductions"]);
    let alice = join(&r, "Alice");
    let bob = join(&r, "Bob");
    alice.drain();
    alice.send(alice.authed(json!({"type": "connect", "target": "Bob"})));
    let e = alice.expect("error");
    assert!(ERROR_CODES.contains(&e["code"].as_str().unwrap()), "{e}");
    alice.expect_nothing();
    bob.expect_nothing();
    assert_eq!(r.refused("disabled"), 1);
}

// ---------------------------------------------------------------------------------------------
// IPv4 and IPv6

#[test]
fn dual_stack_serves_ipv4_and_ipv6_peers() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: ::1 is not available");
        return;
    }
    let r = Relay::start_with(&[], &[("RUST_LOG", "debug")], "::");
    let v4 = Peer::bind(
        SocketAddr::new([127, 0, 0, 1].into(), r.addr.port()),
        "127.0.0.1:0",
    );
    let v6 = Peer::bind(
        SocketAddr::new("::1".parse().unwrap(), r.addr.port()),
        "[::1]:0",
    );
    let ack4 = prove(&v4, "Four");
    assert_eq!(
        ack4["your_address"],
        format!("127.0.0.1:{}", v4.addr().port())
    );
    let ack6 = prove(&v6, "Six");
    assert_eq!(ack6["your_address"], format!("[::1]:{}", v6.addr().port()));
    assert_eq!(v4.expect("peer_joined")["peer_name"], "Six");
    v4.send(json!({"type": "ping"}));
    assert_eq!(v4.expect("pong")["your_address"], ack4["your_address"]);
    v6.send(json!({"type": "ping"}));
    assert_eq!(v6.expect("pong")["your_address"], ack6["your_address"]);
    let p = r#"{"hello": "v6"}"#;
    v4.send_raw(relay_msg("Four", "Six", p).as_bytes());
    check_relayed(&v6.recv_raw(), "Four", p);
    v6.send_raw(relay_msg("Six", "Four", "4").as_bytes());
    check_relayed(&v4.recv_raw(), "Six", "4");
    v6.send(v6.authed(json!({"type": "connect", "target": "Four"})));
    assert_eq!(v4.expect("connect_request")["peer_name"], "Six");
    v4.send(v4.authed(json!({"type": "connect", "target": "Six"})));
    assert_eq!(v6.expect("introduce")["address"], ack4["your_address"]);
    assert_eq!(v4.expect("introduce")["address"], ack6["your_address"]);
    v4.expect_nothing();
    v6.expect_nothing();
}
