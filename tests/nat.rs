//! Through real NATs: a `netlab` lab of network namespaces, two NAT routers (nftables
//! masquerade) in front of two peers, and the relay on the "public" side. Through cone-like
//! NATs (mappings that keep their port for every destination) the peers learn their public
//! addresses over STUN, ask for each other, are introduced and punch a direct path; through
//! symmetric NATs (a random port per destination) punching fails and they bind a channel and
//! talk through the relay.
//! The test asserts which path carried what. Root only (CI runs it); without root, or without
//! `ip` and `nft`, it says it skipped.
//!
//! ```text
//!  peer_a 192.168.1.2 ── nat_a ── 10.200.1.2 ─┐                 ┌─ 10.200.2.2 ── nat_b ── 192.168.2.2 peer_b
//!                                            10.200.1.1  relay  10.200.2.1
//! ```

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::TIMEOUT;
use netlab::{Lab, Nat, Site, can_run, public_ip, relay_ip};
use relay_core::wire::{frame, peer, stun};
use serde_json::Value;

/// A socket of namespace `ns` on any port, whose reads time out after [`TIMEOUT`].
fn socket_in(lab: &Lab, ns: &str) -> UdpSocket {
    let s = lab.socket_in(ns, "0.0.0.0:0");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A peer behind its NAT, talking to the relay at `relay`.
struct Peer {
    sock: UdpSocket,
    relay: SocketAddr,
    name: String,
    session: String,
}

impl Peer {
    fn send(&self, to: SocketAddr, d: &[u8]) {
        self.sock.send_to(d, to).unwrap();
    }

    /// The next datagram from the relay that `want` accepts (others skipped).
    fn next_from_relay(&self, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = self.sock.recv_from(&mut buf).expect("the relay answers");
            if from == self.relay && want(&buf[..n]) {
                return buf[..n].to_vec();
            }
        }
    }

    fn json_next_from_relay(&self, ty: &str) -> Value {
        let d = self
            .next_from_relay(|d| serde_json::from_slice::<Value>(d).is_ok_and(|v| v["type"] == ty));
        serde_json::from_slice(&d).unwrap()
    }

    /// Learns its public address over STUN, registers, and shows its session back.
    fn join(sock: UdpSocket, relay: SocketAddr, name: &str) -> (Peer, SocketAddr) {
        let mut p = Peer {
            sock,
            relay,
            name: name.into(),
            session: String::new(),
        };
        let mut d = Vec::new();
        stun::request(&mut d, &[9; 12], true);
        p.send(relay, &d);
        let answer = p.next_from_relay(|d| d.first() == Some(&0x01));
        let public = stun::mapped_address(&answer).expect("XOR-MAPPED-ADDRESS");
        let mut d = Vec::new();
        peer::register(&mut d, name, None);
        p.send(relay, &d);
        let ack = p.json_next_from_relay("register_ack");
        assert_eq!(
            ack["your_address"],
            public.to_string(),
            "STUN and the relay agree"
        );
        p.session = ack["session"].as_str().unwrap().into();
        let mut d = Vec::new();
        peer::ping(&mut d, Some(name), Some(&p.session));
        p.send(relay, &d);
        p.json_next_from_relay("pong");
        (p, public)
    }

    fn request(&self, v: Value) {
        let mut v = v;
        v["name"] = self.name.clone().into();
        v["session"] = self.session.clone().into();
        self.send(self.relay, v.to_string().as_bytes());
    }
}

/// Both peers punch towards each other's public address, a bounded number of times; returns
/// what each received directly (not from the relay), with its source.
fn punch(a: &Peer, a_pub: SocketAddr, b: &Peer, b_pub: SocketAddr) -> [Option<SocketAddr>; 2] {
    let mut got = [None, None];
    for _ in 0..20 {
        for (p, to, msg) in [(a, b_pub, b"punch from a"), (b, a_pub, b"punch from b")] {
            p.send(to, msg);
        }
        for (i, p) in [a, b].into_iter().enumerate() {
            p.sock
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = p.sock.recv_from(&mut buf) {
                if from != p.relay && buf[..n].starts_with(b"punch from") {
                    got[i] = Some(from);
                }
            }
            p.sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        }
        if got.iter().all(Option::is_some) {
            break;
        }
    }
    got
}

fn run(test: &str, symmetric: bool) {
    if !can_run(test) {
        return;
    }
    let (tag, nat) = if symmetric {
        ("s", Nat::Symmetric)
    } else {
        ("c", Nat::Cone)
    };
    let lab = Lab::new(tag, &[Site::new(nat, 1), Site::new(nat, 1)]);
    let bin = env!("CARGO_BIN_EXE_udp-relay");
    // This test's "public" side is private address space, which the relay refuses unless
    // allowed: as an operator whose peers come from such a network would.
    let args = ["--host", "0.0.0.0", "--port", "3478"];
    let allow = ["--allowed-peer-ip", "10.200.0.0/16"];
    // Held, output and all, until the lab kills it.
    #[expect(clippy::zombie_processes, reason = "the lab kills and reaps it")]
    let _relay = lab.spawn(lab.relay(), &[&[bin][..], &args, &allow].concat());
    let (pa, pb) = (lab.peer(1, 1), lab.peer(2, 1));
    let relay_a = SocketAddr::from((relay_ip(1), 3478));
    let relay_b = SocketAddr::from((relay_ip(2), 3478));
    // The relay may still be binding: a peer's STUN request is repeated until answered.
    let wait_for_relay = |ns: &str, relay: SocketAddr| {
        let s = socket_in(&lab, ns);
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let mut d = Vec::new();
        stun::request(&mut d, &[1; 12], false);
        loop {
            assert!(
                Instant::now() < deadline,
                "the relay never answered in {ns}"
            );
            s.send_to(&d, relay).unwrap();
            if s.recv_from(&mut [0u8; 256]).is_ok() {
                return;
            }
        }
    };
    wait_for_relay(pa, relay_a);
    let (alice, a_pub) = Peer::join(socket_in(&lab, pa), relay_a, "alice");
    let (bob, b_pub) = Peer::join(socket_in(&lab, pb), relay_b, "bob");
    // (1) STUN told each its NAT's public address.
    assert_eq!(a_pub.ip(), public_ip(1));
    assert_eq!(b_pub.ip(), public_ip(2));
    // (2) Once each has asked for the other, an introduction gives each the other's public
    // address; until then bob is only told that alice asks.
    alice.request(serde_json::json!({"type": "connect", "target": "bob"}));
    let asks = bob.json_next_from_relay("connect_request");
    assert_eq!(asks["peer_name"], "alice");
    bob.request(serde_json::json!({"type": "connect", "target": "alice"}));
    let to_a = alice.json_next_from_relay("introduce");
    let to_b = bob.json_next_from_relay("introduce");
    assert_eq!(to_a["address"], b_pub.to_string());
    assert_eq!(to_b["address"], a_pub.to_string());
    let direct = punch(&alice, a_pub, &bob, b_pub);
    println!("{test}: alice {a_pub}, bob {b_pub}; direct datagrams arrived from {direct:?}");
    if !symmetric {
        // (3) Through cone NATs the direct path opens, and carries their messages.
        assert_eq!(direct, [Some(b_pub), Some(a_pub)], "the direct path opened");
        alice.send(b_pub, b"hello bob, directly");
        let mut buf = [0u8; 64];
        let (n, from) = bob.sock.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hello bob, directly"[..], a_pub));
        return;
    }
    // (3) Through symmetric NATs nothing arrives directly; a channel carries the frames.
    assert_eq!(
        direct,
        [None, None],
        "punching through symmetric NATs must fail"
    );
    alice.request(serde_json::json!({"type": "bind", "target": "bob"}));
    let ca = alice.json_next_from_relay("bind_ack")["channel"]
        .as_u64()
        .unwrap() as u32;
    let cb = bob.json_next_from_relay("channel_bound")["channel"]
        .as_u64()
        .unwrap() as u32;
    for (from, to, mine, theirs, payload) in [
        (&alice, &bob, ca, cb, &b"frame from alice"[..]),
        (&bob, &alice, cb, ca, &b"frame from bob"[..]),
    ] {
        let mut f = Vec::new();
        frame::write(&mut f, mine, payload);
        from.send(from.relay, &f);
        let got = to.next_from_relay(|d| d.first() == Some(&frame::MARK));
        let mut want = Vec::new();
        frame::write(&mut want, theirs, payload);
        assert_eq!(got, want, "through the relay, the channel field rewritten");
    }
}

#[test]
fn cone_nats_punch_a_direct_path() {
    run("cone_nats_punch_a_direct_path", false);
}

#[test]
fn symmetric_nats_fall_back_to_a_channel_through_the_relay() {
    run(
        "symmetric_nats_fall_back_to_a_channel_through_the_relay",
        true,
    );
}
