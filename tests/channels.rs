//! Channels (PROTOCOL.md Part 4) through the real binary over loopback, as peers would use them:
//! every message and rule. CI runs this file on both backends.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{Value, json};

/// Asserts that nothing but presence news waits for `p`.
fn quiet(p: &Peer) {
    for v in p.drain() {
        let t = v["type"].as_str().unwrap_or("");
        assert!(t.starts_with("peer_"), "{} got {v}", p.addr());
    }
}

fn number(v: &Value) -> u32 {
    u32::try_from(v["channel"].as_u64().expect("a channel number")).unwrap()
}

/// Waits until the relay has refused `n` more datagrams for `reason` than `before`.
fn wait_refused(r: &Relay, reason: &str, n: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while r.refused(reason) < n {
        assert!(Instant::now() < deadline, "{reason}: {}", r.refused(reason));
        std::thread::yield_now();
    }
}

#[test]
fn frames_go_both_ways_byte_for_byte_but_the_channel_field() {
    let r = Relay::start(&[]);
    let (alice, bob) = (Peer::new(&r), Peer::new(&r));
    alice.register("alice");
    bob.register("bob");
    let (a, b) = bind_channel(&alice, &bob, "bob");
    assert!(a != 0 && b != 0 && a != b);
    // Binding again, from either side, gives the same numbers and tells nobody anew.
    alice.send(alice.authed(json!({"type": "bind", "target": "bob"})));
    assert_eq!(number(&expect(&alice, "bind_ack")), a);
    bob.send(bob.authed(json!({"type": "bind", "target": "alice"})));
    assert_eq!(number(&expect(&bob, "bind_ack")), b);
    quiet(&alice);
    for len in [0, 1, 100, 1200, 8000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        alice.send_raw(&frame(a, &payload));
        assert_eq!(bob.recv_raw(), frame(b, &payload), "{len} bytes A to B");
        bob.send_raw(&frame(b, &payload));
        assert_eq!(alice.recv_raw(), frame(a, &payload), "{len} bytes B to A");
    }
    assert_eq!(r.metric("udp_relay_channel_frames_forwarded_total"), 10);
    assert_eq!(r.metric("udp_relay_channels_bound"), 1);
}

#[test]
fn frames_from_elsewhere_for_gone_channels_or_with_flags_are_dropped() {
    let r = Relay::start(&[]);
    let (alice, bob, eve) = (Peer::new(&r), Peer::new(&r), Peer::new(&r));
    alice.register("alice");
    bob.register("bob");
    eve.register("eve");
    let (a, b) = bind_channel(&alice, &bob, "bob");
    // Eve knows both numbers; from her address neither is routed.
    eve.send_raw(&frame(a, b"forged"));
    eve.send_raw(&frame(b, b"forged"));
    wait_refused(&r, "channel_wrong_source", 2);
    let mut flagged = frame(a, b"x");
    flagged[1] = 1;
    alice.send_raw(&flagged);
    alice.send_raw(&[0xD1, 0, 0]);
    alice.send_raw(&frame(a ^ b ^ 1, b"guess"));
    wait_refused(&r, "frame_flags", 1);
    wait_refused(&r, "frame_short", 1);
    wait_refused(&r, "channel_gone", 1);
    // Nothing reached anyone, and frames are never answered.
    quiet(&bob);
    quiet(&alice);
    quiet(&eve);
    assert_eq!(r.metric("udp_relay_channel_frames_forwarded_total"), 0);
}

#[test]
fn unbind_closes_both_ends() {
    let r = Relay::start(&[]);
    let (alice, bob) = (Peer::new(&r), Peer::new(&r));
    alice.register("alice");
    bob.register("bob");
    let (a, b) = bind_channel(&alice, &bob, "bob");
    // Only the owner of a number may unbind it.
    bob.send(bob.authed(json!({"type": "unbind", "channel": a})));
    assert_eq!(expect(&bob, "error")["code"], "bad_request");
    alice.send(json!({"type": "unbind", "channel": a}));
    assert_eq!(expect(&alice, "error")["code"], "session_required");
    alice.send(alice.authed(json!({"type": "unbind", "channel": a})));
    assert_eq!(
        expect(&alice, "channel_closed"),
        json!({"type": "channel_closed", "channel": a})
    );
    assert_eq!(
        expect(&bob, "channel_closed"),
        json!({"type": "channel_closed", "channel": b})
    );
    alice.send_raw(&frame(a, b"late"));
    wait_refused(&r, "channel_gone", 1);
    quiet(&bob);
    assert_eq!(r.metric("udp_relay_channels_bound"), 0);
}

#[test]
fn bind_needs_a_session_and_a_proven_target() {
    let r = Relay::start(&[]);
    let (alice, old) = (Peer::new(&r), Peer::new(&r));
    alice.register("alice");
    old.register_old("old-peer");
    alice.send(json!({"type": "bind", "target": "old-peer", "name": "alice"}));
    assert_eq!(expect(&alice, "error")["code"], "session_required");
    // An old peer never showed its session: frames would go to an address nobody proved.
    alice.send(alice.authed(json!({"type": "bind", "target": "old-peer"})));
    assert_eq!(expect(&alice, "error")["code"], "unknown_target");
    alice.send(alice.authed(json!({"type": "bind", "target": "nobody"})));
    assert_eq!(expect(&alice, "error")["code"], "unknown_target");
    assert_eq!(r.refused("untrusted_peer"), 1);
    assert_eq!(r.metric("udp_relay_channels_bound"), 0);
}

#[test]
fn channels_per_peer_are_bounded() {
    let r = Relay::start(&["--max-channels", "2"]);
    let alice = Peer::new(&r);
    alice.register("alice");
    let peers: Vec<Peer> = (0..3)
        .map(|i| {
            let p = Peer::new(&r);
            p.register(&format!("p{i}"));
            p
        })
        .collect();
    bind_channel(&alice, &peers[0], "p0");
    bind_channel(&alice, &peers[1], "p1");
    alice.send(alice.authed(json!({"type": "bind", "target": "p2"})));
    assert_eq!(expect(&alice, "error")["code"], "rate_limited");
    assert_eq!(r.refused("channel_limit"), 1);
    quiet(&peers[2]);
}

#[test]
fn channels_follow_an_authenticated_move() {
    let r = Relay::start(&[]);
    let (alice, bob) = (Peer::new(&r), Peer::new(&r));
    alice.register("alice");
    bob.register("bob");
    let (a, b) = bind_channel(&alice, &bob, "bob");
    // Bob's NAT gives him a new port: he re-registers there with his session, then proves it.
    let moved = Peer::new(&r);
    moved.send(json!({"type": "register", "name": "bob", "session": bob.session()}));
    let ack = expect(&moved, "register_ack");
    expect(&moved, "peer_list");
    let session = ack["session"].as_str().unwrap().to_string();
    moved.send(json!({"type": "ping", "name": "bob", "session": session}));
    expect(&moved, "pong");
    alice.drain();
    alice.send_raw(&frame(a, b"to the new address"));
    assert_eq!(moved.recv_raw(), frame(b, b"to the new address"));
    moved.send_raw(&frame(b, b"from it"));
    assert_eq!(alice.recv_raw(), frame(a, b"from it"));
    // The old address's frames are no longer Bob's.
    bob.send_raw(&frame(b, b"stale"));
    wait_refused(&r, "channel_wrong_source", 1);
    quiet(&alice);
}

#[test]
fn channels_end_when_a_peer_is_reaped_and_frames_keep_their_sender_live() {
    // (A stale name replaced by a new holder ends its channels too: `channels::tests`.)
    let r = Relay::start(&["--peer-timeout", "1s", "--keepalive-interval", "300ms"]);
    let (alice, bob, carol) = (Peer::new(&r), Peer::new(&r), Peer::new(&r));
    alice.register("alice");
    bob.register("bob");
    carol.register("carol");
    let (a, _) = bind_channel(&alice, &bob, "bob");
    let (c, a_for_carol) = bind_channel(&carol, &alice, "alice");
    // Alice keeps alive; Carol sends only frames; Bob falls silent and is reaped.
    let next_json = |p: &Peer| loop {
        let d = p.recv_raw();
        if d.first() != Some(&0xD1) {
            break serde_json::from_slice::<Value>(&d).unwrap();
        }
    };
    let deadline = Instant::now() + TIMEOUT;
    let closed = loop {
        assert!(Instant::now() < deadline, "bob was never reaped");
        alice.send(alice.authed(json!({"type": "keepalive"})));
        carol.send_raw(&frame(c, b"beat"));
        let v = next_json(&alice);
        if v["type"] == "channel_closed" {
            break v;
        }
    };
    assert_eq!(closed, json!({"type": "channel_closed", "channel": a}));
    assert_eq!(
        r.metric("udp_relay_channels_bound"),
        1,
        "carol's frames kept her live"
    );
    // Now Carol falls silent too: her channel ends with her.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "carol was never reaped");
        alice.send(alice.authed(json!({"type": "keepalive"})));
        let v = next_json(&alice);
        if v["type"] == "channel_closed" {
            assert_eq!(v["channel"], a_for_carol);
            break;
        }
    }
    assert_eq!(r.metric("udp_relay_channels_bound"), 0);
}
