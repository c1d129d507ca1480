//! Rate limits under abuse, over loopback: a flooding source does not crowd out well-behaved
//! peers and its excess is counted, and one source cannot register names without bound.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Relays `n` numbered payloads from `from` to `to`, one every `gap`; returns how many arrived.
fn relay_paced(from: &Peer, src: &str, to: &Peer, dst: &str, n: usize, gap: Duration) -> usize {
    // The receiver reads as they come (a socket buffer holds only a few hundred datagrams) until
    // the end marker, which `from`'s worker forwards after everything `from` sent before it.
    let rx = to.sock.try_clone().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0;
        loop {
            let len = rx.recv(&mut buf).expect("the end marker arrives");
            let m: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
            if m["type"] != "relayed_packet" {
                continue;
            }
            if m["payload"] == "end" {
                return got;
            }
            got += 1;
        }
    });
    let start = Instant::now();
    for i in 0..n {
        from.send(json!({"type": "relay", "source": src, "target": dst, "payload": i}));
        // Paced to a rate, not waiting for anything: the deadline of datagram i.
        let due = start + gap * (i as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    from.send(json!({"type": "relay", "source": src, "target": dst, "payload": "end"}));
    counter.join().unwrap()
}

#[test]
fn a_flood_from_one_source_leaves_other_peers_served() {
    // One worker, so that the flood and the well-behaved peers meet on the same core.
    let r = Relay::start(&["--workers", "1", "--source-rate", "200"]);
    // Well-behaved peers in another /24 than the flooder, so that only the flood is limited.
    let a = Peer::bind(r.addr, "127.0.1.1:0");
    let b = Peer::bind(r.addr, "127.0.1.2:0");
    a.register("A");
    b.register("B");
    a.expect("peer_joined");
    // 100 datagrams/s each, half their allowance.
    let (n, gap) = (100, Duration::from_millis(10));
    let quiet = relay_paced(&a, "A", &b, "B", n, gap);
    assert_eq!(quiet, n, "without a flood everything arrives");

    // The flooder sends ten times its allowance (2,000/s against 200/s) for as long.
    let flooder = UdpSocket::bind("127.0.0.2:0").unwrap();
    let junk = br#"{"type":"ping","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let target = r.addr;
    let flood = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_millis(1000) {
            // Bounded: 2 datagrams per millisecond for a second.
            let due = (start.elapsed().as_micros() / 500) as u64;
            while sent < due.min(2_000) {
                flooder.send_to(junk, target).unwrap();
                sent += 1;
            }
            std::thread::yield_now();
        }
        sent
    });
    let flooded = relay_paced(&a, "A", &b, "B", n, gap);
    let sent = flood.join().unwrap();
    assert!(
        flooded * 10 >= quiet * 9,
        "well-behaved delivery fell from {quiet} to {flooded} under a flood of {sent}"
    );
    // The flooder got its burst (two seconds' worth) and its refill, and no more.
    let limited = r.refused("rate_limited_source");
    assert!(
        limited >= sent.saturating_sub(400 + 250),
        "{limited} of {sent} refused"
    );
    assert_eq!(r.refused("rate_limited_prefix"), 0);
}

#[test]
fn new_names_from_one_source_are_limited_but_refreshes_are_not() {
    // Beyond --announce-max nobody is told of joins, so replies come in order.
    // Fifty registrations' replies to one address exceed its host's reply credit.
    let r = Relay::start(&[
        "--registration-rate",
        "5",
        "--announce-max",
        "1",
        "--reply-credit",
        "0",
        "--reply-prefix-credit",
        "0",
    ]);
    let p = Peer::new(&r);
    // A burst of ten seconds' worth (50) is allowed at once.
    for i in 0..50 {
        p.register(&format!("n{i}"));
    }
    // Padded, so that the error reply fits within the request.
    let pad = "x".repeat(100);
    p.send(json!({"type": "register", "name": "one-too-many", "pad": pad}));
    let e = p.expect("error");
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(r.refused("rate_limited_registrations"), 1);
    // Names already held are refreshed without cost.
    let (ack, _) = p.register("n7");
    assert_eq!(ack["peer_name"], "n7");
    // Another source address has its own allowance (the limit is per IP: ports are free).
    let q = Peer::bind(r.addr, "127.0.0.3:0");
    q.register("fresh");
    assert_eq!(r.refused("rate_limited_registrations"), 1);
}

/// A deterministic stream of pseudo-random numbers (xorshift64*), for reproducible junk.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A valid datagram of some kind, mutated a few times: flips, truncations, insertions. (No
/// `ping`: its `pong` would pass for the barrier's.)
fn junk(rng: &mut Rng) -> Vec<u8> {
    let valid: [&[u8]; 5] = [
        br#"{"type":"relay","source":"a","target":"b","payload":{"k":["v",1,true,null]}}"#,
        br#"{"type":"register","name":"someone","session":"00112233445566778899aabbccddeeff"}"#,
        br#"{"type":"watch","names":["a","b","c"]}"#,
        br#"{"type":"lookup","name":"x"}"#,
        b"\x00\x01\x00\x00\x21\x12\xa4\x42abcdefghijkl",
    ];
    let mut d = valid[rng.below(valid.len())].to_vec();
    if rng.below(10) == 0 {
        let n = rng.below(200);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    for _ in 0..=rng.below(4) {
        if d.is_empty() {
            break;
        }
        let at = rng.below(d.len());
        match rng.below(4) {
            0 => d[at] = rng.next() as u8,
            1 => d.truncate(at),
            2 => d.insert(at, b"{}[]\",:\\u0"[rng.below(10)]),
            _ => {
                let end = (at + rng.below(16)).min(d.len());
                let span = d[at..end].to_vec();
                d.splice(at..at, span);
            }
        }
    }
    d
}

#[test]
fn malformed_input_at_volume_leaves_the_relay_serving_within_a_memory_bound() {
    // Limits lifted so that every datagram reaches the parser.
    let r = Relay::start(&[&["--workers", "1"], NO_LIMITS, NO_BUDGETS].concat());
    let before = r.rss();
    let senders: Vec<Peer> = (0..4).map(|_| Peer::new(&r)).collect();
    let mut rng = Rng(0x0005_eed0_fa11_d47a);
    let total = 201_000;
    // Chunks small enough for a socket buffer (about 200 datagrams at the default size).
    for chunk in 0..total / 150 {
        let p = &senders[chunk % senders.len()];
        for _ in 0..150 {
            p.send_raw(&junk(&mut rng));
        }
        // Served in order for one source: the pong means the chunk has been handled, and the
        // socket buffers never overflow. Junk that is a STUN Binding request is answered in
        // binary; everything else the relay sends is JSON.
        p.send(p.ping());
        loop {
            let d = p.recv_raw();
            if d.first() == Some(&b'{') && d.windows(6).any(|w| w == b"\"pong\"") {
                break;
            }
        }
    }
    let received = r.metric("udp_relay_datagrams_received_total");
    assert!(received >= total as u64, "{received} received");
    // Still serving, and memory did not grow beyond a bound (the registry holds at most the
    // few names junk happened to register).
    let a = Peer::bind(r.addr, "127.0.1.1:0");
    let b = Peer::bind(r.addr, "127.0.1.2:0");
    a.register("after-a");
    b.register("after-b");
    a.send(json!({"type": "relay", "source": "after-a", "target": "after-b", "payload": "ok"}));
    assert_eq!(b.expect("relayed_packet")["payload"], "ok");
    let grown = r.rss().saturating_sub(before);
    assert!(grown < 16 << 20, "resident memory grew by {grown} bytes");
}

#[test]
fn repeating_register_does_not_make_the_relay_broadcast_at_will() {
    // One worker: A's datagrams and B's barrier are served in arrival order. A never echoes its
    // token, so its own replies would soon outrun its credit: no credit limit here.
    let r = Relay::start(&args(&["--workers", "1"], NO_BUDGETS));
    let b = Peer::new(&r);
    b.register("B");
    let a = Peer::new(&r);
    a.register("A");
    assert_eq!(b.expect("peer_joined")["peer_name"], "A");
    for _ in 0..20 {
        a.register("A");
    }
    // The first refresh is announced (as the old relay did); the others, within the keepalive
    // interval, are not.
    let joined = b
        .drain()
        .iter()
        .filter(|m| m["type"] == "peer_joined")
        .count();
    assert_eq!(joined, 1);
}
