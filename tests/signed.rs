//! Signed registration (Part 5) over loopback: challenge, signature, a name bound to its key,
//! moves by re-signing, `--auth signed`, and what a forger can do in signed mode.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::signing::*;
use common::*;
use serde_json::{Value, json};

#[test]
fn a_signed_peer_registers_and_keeps_its_name_against_other_keys() {
    let r = Relay::start(&[]);
    let alice = Peer::new(&r);
    let ack = signed_register(&alice, "alice", &key(1));
    assert_eq!(ack["type"], "register_ack", "{ack}");
    assert_eq!(ack["peer_name"], "alice");
    alice.expect("peer_list");

    // Another key, from another address: refused, even with a valid signature of its own.
    let thief = Peer::new(&r);
    let e = signed_register(&thief, "alice", &key(2));
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "name_in_use");
    assert_eq!(r.refused("name_in_use"), 1);

    // Alice's traffic keeps arriving.
    let bob = Peer::new(&r);
    bob.register("bob");
    alice.expect("peer_joined");
    bob.send(json!({"type": "relay", "source": "bob", "target": "alice", "payload": "hi"}));
    assert_eq!(alice.expect("relayed_packet")["payload"], "hi");
}

#[test]
fn the_same_key_moves_its_name_by_re_signing() {
    let r = Relay::start(&[]);
    let k = key(3);
    let old = Peer::new(&r);
    assert_eq!(signed_register(&old, "carol", &k)["type"], "register_ack");
    old.expect("peer_list");
    let new = Peer::new(&r);
    assert_eq!(signed_register(&new, "carol", &k)["type"], "register_ack");
    new.expect("peer_list");
    let bob = Peer::new(&r);
    bob.register("bob");
    new.expect("peer_joined");
    bob.send(json!({"type": "relay", "source": "bob", "target": "carol", "payload": 1}));
    assert_eq!(new.expect("relayed_packet")["payload"], 1);
    // The old address is no longer carol's.
    old.drain()
        .iter()
        .for_each(|m| assert_ne!(m["type"], "relayed_packet"));
}

#[test]
fn bad_cookies_and_signatures_are_refused() {
    let r = Relay::start(&[]);
    let p = Peer::new(&r);
    let k = key(4);
    p.send(json!({"type": "register", "name": "dave", "pubkey": pubkey(&k)}));
    let cookie = challenge(&p);
    // Signed by another key.
    p.send(json!({
        "type": "register", "name": "dave", "pubkey": pubkey(&k),
        "cookie": cookie, "sig": sign(&key(5), "dave", &cookie),
    }));
    assert_eq!(p.expect("error")["code"], "bad_signature");
    // A cookie for another name.
    p.send(json!({
        "type": "register", "name": "dan", "pubkey": pubkey(&k),
        "cookie": cookie, "sig": sign(&k, "dan", &cookie),
    }));
    assert_eq!(p.expect("error")["code"], "bad_signature");
    assert_eq!(r.refused("bad_signature"), 2);
    assert!(!p.drain().iter().any(|m| m["type"] == "register_ack"));
}

#[test]
fn signed_mode_requires_signatures_but_keeps_registered_peers_alive() {
    let r = Relay::start(&["--auth", "signed"]);
    let p = Peer::new(&r);
    // Padded, so that the error reply fits within the request.
    let pad = "x".repeat(100);
    p.send(json!({"type": "register", "name": "erin", "pad": pad}));
    assert_eq!(p.expect("error")["code"], "auth_required");
    assert_eq!(r.refused("auth_required"), 1);
    assert_eq!(signed_register(&p, "erin", &key(6))["type"], "register_ack");
    p.expect("peer_list");
    // An unsigned keepalive from the name's own address keeps it live.
    p.send(json!({"type": "keepalive", "name": "erin"}));
    assert_eq!(p.expect("keepalive_ack")["peer_name"], "erin");
    // But it cannot move it elsewhere, session token or not.
    let elsewhere = Peer::new(&r);
    elsewhere.send(json!({"type": "keepalive", "name": "erin", "pad": pad}));
    // Refused and counted; not answered, as it comes from an unregistered address.
    elsewhere.expect_nothing();
    assert_eq!(r.refused("auth_required"), 2);
    p.send(json!({"type": "ping"}));
    p.expect("pong");
}

#[test]
fn in_signed_mode_a_forger_gets_a_victim_nothing_through_the_relay() {
    use std::net::UdpSocket;
    let r = Relay::start(&["--auth", "signed", "--workers", "1"]);
    let victim = UdpSocket::bind("127.0.0.2:0").unwrap();
    // The forger can only speak in the victim's name from the victim's address, which on
    // loopback we can do for real: it cannot answer the challenge without receiving it, and a
    // challenge is never larger than its request.
    let relay = r.addr;
    let register =
        json!({"type": "register", "name": "victim-name", "pubkey": pubkey(&key(7))}).to_string();
    for _ in 0..50 {
        victim.send_to(register.as_bytes(), relay).unwrap();
    }
    let unsigned = json!({"type": "register", "name": "victim-name"}).to_string();
    victim.send_to(unsigned.as_bytes(), relay).unwrap();
    // A registered accomplice relays to that name: it is not registered, so nothing goes.
    let acc = Peer::new(&r);
    assert_eq!(
        signed_register(&acc, "acc", &key(8))["type"],
        "register_ack"
    );
    acc.expect("peer_list");
    acc.send(json!({"type": "relay", "source": "acc", "target": "victim-name", "payload": "x"}));
    acc.drain();
    victim.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut bytes = 0;
    while let Ok(n) = victim.recv(&mut buf) {
        let m: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_ne!(m["type"], "relayed_packet", "{m}");
        bytes += n;
    }
    let sent = 50 * register.len() + unsigned.len();
    assert!(bytes <= sent, "{bytes} bytes back for {sent}");
    assert_eq!(r.metric("udp_relay_peers_registered"), 1);
}

/// A takeover keeps each name bound to its key, and the cookie key: a challenge the old relay
/// issued is answered to the new one.
#[test]
fn a_takeover_keeps_names_bound_to_their_keys_and_challenges_good() {
    let path = std::env::temp_dir().join(format!(
        "udp-relay-signed-takeover-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let args = ["--takeover", path.to_str().unwrap()];
    let mut old = Relay::start(&args);
    let alice = Peer::new(&old);
    assert_eq!(
        signed_register(&alice, "alice", &key(1))["type"],
        "register_ack"
    );
    alice.expect("peer_list");
    let mover = Peer::new(&old);
    mover.send(json!({"type": "register", "name": "alice", "pubkey": pubkey(&key(1))}));
    let cookie = challenge(&mover);

    let mut new = Relay::start(&args);
    new.wait_log("took over: serving");
    let (status, _) = old.wait_exit();
    assert!(status.success());
    // Another key is refused, with a valid signature of its own: the binding came along.
    let thief = Peer::new(&new);
    assert_eq!(
        signed_register(&thief, "alice", &key(2))["code"],
        "name_in_use"
    );
    // The old relay's challenge, signed with alice's key, moves her name at the new relay.
    mover.send(json!({
        "type": "register", "name": "alice", "pubkey": pubkey(&key(1)),
        "cookie": cookie, "sig": sign(&key(1), "alice", &cookie),
    }));
    assert_eq!(mover.recv()["type"], "register_ack");
}

/// Junk signed `register`s forged from a host's address (its other ports) at 200 a second while
/// 40 of its users register by signing (before: the host's registration bucket was charged
/// before the cookie was checked, and 12 of 40 registered at 40/s, 4 of 40 at 200/s). A cookie
/// that does not check is refused before anything is charged, so every user registers.
#[test]
fn forged_junk_signatures_take_nothing_from_a_hosts_users() {
    let t = "forged_junk_signatures_take_nothing_from_a_hosts_users";
    let Some(mut f) = common::forge::Forger::new(t) else {
        return;
    };
    let r = Relay::start(&["--workers", "2", "--auth", "signed"]);
    let junk_key = pubkey(&key(99));
    let mut forged = 0;
    let mut registered = 0;
    for i in 0..40u16 {
        // Five forgeries a user, as fast as the users register (about 200 a second here).
        for j in 0..5u16 {
            let from = format!("127.0.20.1:{}", 1024 + i * 5 + j).parse().unwrap();
            let junk = json!({
                "type": "register", "name": format!("user{i}"), "pubkey": junk_key,
                "cookie": B64.encode([7u8; 24]), "sig": B64.encode([1u8; 64]),
            });
            f.json(from, r.addr, &junk);
            forged += 1;
        }
        let p = Peer::bind(r.addr, "127.0.20.1:0");
        let v = signed_register(&p, &format!("user{i}"), &key(i as u8 + 1));
        registered += usize::from(v["type"] == "register_ack");
    }
    let refused = r.refused("bad_signature");
    println!(
        "{t}: {forged} junk signed registrations forged from the host's other ports; {registered} \
         of 40 users registered; {refused} refused bad_signature, {} rate_limited_signatures",
        r.refused("rate_limited_signatures")
    );
    assert_eq!(registered, 40);
    assert_eq!(r.refused("rate_limited_signatures"), 0);
}
