//! Three relays on 127.0.0.1, .2 and .3, one real Redis (started by each test on a free port):
//! old peers (Part 1 only) on different relays register, hear each other, list each other and
//! relay both ways byte for byte; a name is unique across the cluster, also in a race; a relay
//! killed with SIGKILL leaves with its names; Redis killed and started again; mesh datagrams
//! forged, replayed or from an unknown node refused.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::signing::{key, signed_register};
use common::{Peer, Relay, TIMEOUT, bind_channel, expect, frame};
use relay_core::mesh::Keys;
use relay_wire::mesh::{Head, Via, write_head};
use relay_wire::peer;
use relay_wire::reply::{RELAYED_SUFFIX, relayed_prefix};
use serde_json::{Value, json};

const KEY: &[u8] = b"the test cluster's mesh key, 32 bytes or more";

/// The mesh key in a file of the test's own.
fn key_file(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("udp-relay-{test}-{}.key", std::process::id()));
    std::fs::write(&path, KEY).unwrap();
    path
}

/// A relay of the cluster: node `relay-{i}` on 127.0.0.`i`.
struct Node {
    relay: Relay,
    /// Its mesh address.
    mesh: SocketAddr,
    i: u8,
}

impl Node {
    fn start(redis: &Redis, key: &Path, i: u8, extra: &[&str]) -> Node {
        let host = format!("127.0.0.{i}");
        let node = format!("relay-{i}");
        let mesh = format!("{host}:0");
        let url = redis.url();
        let key = key.to_str().unwrap();
        let args = [
            "--workers",
            "2",
            "--cluster",
            &url,
            "--node-id",
            &node,
            "--mesh-listen",
            &mesh,
            "--mesh-key-file",
            key,
            "--node-ttl",
            "1s",
        ];
        let args = [&args[..], extra].concat();
        let relay = Relay::start_with(&args, &[("RUST_LOG", "debug")], &host);
        let logs = relay.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("joining the cluster"))
            .expect("the relay says it joins");
        let mesh = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mesh="))
            .expect("its mesh address")
            .parse()
            .unwrap();
        Node { relay, mesh, i }
    }

    /// A gauge or counter of this relay's cluster metrics.
    fn metric(&self, series: &str) -> u64 {
        self.relay.metric(series)
    }

    /// Waits until `series` reads `want`.
    fn wait_metric(&self, series: &str, want: u64) {
        let deadline = Instant::now() + TIMEOUT * 2;
        loop {
            let got = self.metric(series);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay-{}: {series} is {got}, never {want}",
                self.i
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until this relay's metrics hold the line `line`.
    fn wait_line(&self, line: &str) {
        let deadline = Instant::now() + TIMEOUT * 2;
        while !self.relay.metrics_text().lines().any(|l| l == line) {
            assert!(
                Instant::now() < deadline,
                "relay-{}: never `{line}`",
                self.i
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until this relay holds `n` names homed here (published in the directory).
    fn wait_log_metric_names_here(&self, n: u64) {
        self.wait_metric("udp_relay_cluster_names{home=\"here\"}", n);
    }

    /// Waits until this relay knows `n` names homed elsewhere.
    fn knows_elsewhere(&self, n: u64) {
        self.wait_metric("udp_relay_cluster_names{home=\"elsewhere\"}", n);
    }
}

/// Three relays of one cluster, each knowing the two others.
fn cluster(redis: &Redis, test: &str) -> [Node; 3] {
    cluster_with(redis, test, &[])
}

/// Three relays of one cluster started with `extra` flags, each knowing the two others.
fn cluster_with(redis: &Redis, test: &str, extra: &[&str]) -> [Node; 3] {
    let key = key_file(test);
    let nodes = [1, 2, 3].map(|i| Node::start(redis, &key, i, extra));
    for n in &nodes {
        n.wait_metric("udp_relay_cluster_nodes", 2);
    }
    nodes
}

/// The names of a `peer_list` or presence message.
fn names(v: &Value) -> BTreeSet<String> {
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `relayed_packet` from `from` with `payload`, as a single relay writes it.
fn relayed(from: &str, payload: &str) -> Vec<u8> {
    let mut want = Vec::new();
    relayed_prefix(&mut want, from);
    want.extend_from_slice(payload.as_bytes());
    want.extend_from_slice(RELAYED_SUFFIX);
    want
}

fn relay_msg(source: &str, target: &str, payload: &str) -> Vec<u8> {
    let mut d = Vec::new();
    peer::relay(&mut d, source, target, payload.as_bytes());
    d
}

#[test]
fn old_peers_on_three_relays_register_hear_list_and_relay_both_ways_byte_for_byte() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = cluster(&redis, "byte-for-byte");
    let alice = Peer::new(&a.relay);
    let (ack, list) = alice.register_old("alice");
    assert_eq!(ack["status"], "success");
    assert_eq!(names(&list), set(&["alice"]));
    b.knows_elsewhere(1);
    let bob = Peer::new(&b.relay);
    let (_, list) = bob.register_old("bob");
    assert_eq!(names(&list), set(&["alice", "bob"]));
    let joined = alice.expect("peer_joined");
    assert_eq!(joined["peer_name"], "bob");
    assert_eq!(names(&joined), set(&["alice", "bob"]));
    c.knows_elsewhere(2);
    let carol = Peer::new(&c.relay);
    let (_, list) = carol.register_old("carol");
    assert_eq!(names(&list), set(&["alice", "bob", "carol"]));
    for p in [&alice, &bob] {
        let j = p.expect("peer_joined");
        assert_eq!(j["peer_name"], "carol");
    }
    // Relays both ways across relays: what arrives is what one relay would have sent, and it
    // comes from the recipient's own relay (Peer checks the source).
    let payload = r#"{"type": "handshake", "ct":"AAEC\"x\\u00e9\"", "n": [1, 2.5e3]}"#;
    alice.send_raw(&relay_msg("alice", "bob", payload));
    assert_eq!(bob.recv_raw(), relayed("alice", payload));
    bob.send_raw(&relay_msg("bob", "alice", payload));
    assert_eq!(alice.recv_raw(), relayed("bob", payload));
    carol.send_raw(&relay_msg("carol", "alice", "\"hi\""));
    assert_eq!(alice.recv_raw(), relayed("carol", "\"hi\""));
    assert_eq!(a.metric("udp_relay_mesh_sent_total"), 1);
    assert_eq!(b.metric("udp_relay_mesh_delivered_total"), 1);
    // A lookup sees every relay's names.
    alice.send(json!({"type": "lookup", "name": "carol"}));
    let info = alice.expect("peer_info");
    assert_eq!(
        (&info["name"], &info["online"]),
        (&json!("carol"), &json!(true))
    );
    // A name is the cluster's: live at one relay, it is in use at the others.
    let mallory = Peer::new(&c.relay);
    mallory.send(json!({"type": "register", "name": "alice"}));
    let e = mallory.expect("error");
    assert_eq!(e["code"], "name_in_use");
    // Two relays racing for one name: exactly one wins.
    let (p1, p3) = (Peer::new(&a.relay), Peer::new(&c.relay));
    p1.send(json!({"type": "register", "name": "erin"}));
    p3.send(json!({"type": "register", "name": "erin"}));
    let answers: Vec<String> = [&p1, &p3]
        .iter()
        .map(|p| {
            let v = p.recv();
            if v["type"] == "error" {
                v["code"].as_str().unwrap().to_string()
            } else {
                v["type"].as_str().unwrap().to_string()
            }
        })
        .collect();
    let mut sorted = answers.clone();
    sorted.sort();
    assert_eq!(sorted, ["name_in_use", "register_ack"], "{answers:?}");
    // Every directory operation so far found Redis.
    for n in [&a, &b, &c] {
        assert_eq!(
            n.metric(
                "udp_relay_cluster_directory_operations_total{op=\"claim\",outcome=\"failed\"}"
            ),
            0
        );
    }
}

#[test]
fn signed_peers_on_different_relays_keep_their_names_and_relay_to_each_other() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = cluster_with(&redis, "signed", &["--auth", "signed"]);
    let alice = Peer::new(&a.relay);
    assert_eq!(
        signed_register(&alice, "alice", &key(1))["type"],
        "register_ack"
    );
    alice.expect("peer_list");
    b.knows_elsewhere(1);
    let bob = Peer::new(&b.relay);
    assert_eq!(
        signed_register(&bob, "bob", &key(2))["type"],
        "register_ack"
    );
    bob.expect("peer_list");
    alice.send_raw(&relay_msg("alice", "bob", "\"signed\""));
    assert_eq!(bob.recv_raw(), relayed("alice", "\"signed\""));
    // Another key at a third relay: the name is the cluster's, and stays with its key.
    let thief = Peer::new(&c.relay);
    let e = signed_register(&thief, "alice", &key(3));
    assert_eq!(e["code"], "name_in_use", "{e}");
    // Alice herself, at the third relay with her key, while relay-1 lives: the name moves with
    // her, relay-1 lets it go, and bob's relays reach her there.
    let moved = Peer::new(&c.relay);
    assert_eq!(
        signed_register(&moved, "alice", &key(1))["type"],
        "register_ack"
    );
    moved.expect("peer_list");
    a.wait_metric("udp_relay_cluster_names{home=\"here\"}", 0);
    b.wait_line(&format!(
        "udp_relay_cluster_node_info{{node=\"relay-3\",mesh=\"{}\"}} 1",
        c.mesh
    ));
    // Until relay-2 has heard of the move (the join event), its relays still go to relay-1,
    // which refuses them: each relay is sent once, and lands at one of the two.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let refused_at_a = a.relay.refused("mesh_unknown_target");
        let delivered_at_c = c.metric("udp_relay_mesh_delivered_total");
        bob.send_raw(&relay_msg("bob", "alice", "\"moved\""));
        let landed = loop {
            if c.metric("udp_relay_mesh_delivered_total") > delivered_at_c {
                break true;
            }
            if a.relay.refused("mesh_unknown_target") > refused_at_a {
                break false;
            }
            assert!(Instant::now() < deadline, "bob's relay landed nowhere");
            std::thread::sleep(Duration::from_millis(10));
        };
        if landed {
            assert_eq!(moved.recv_raw(), relayed("bob", "\"moved\""));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob's relays never reached alice at relay-3"
        );
    }
    // An unsigned newcomer is refused as on one relay.
    let old = Peer::new(&c.relay);
    old.send(json!({"type": "register", "name": "mallory"}));
    assert_eq!(old.expect("error")["code"], "auth_required");
}

/// A flood through the mesh is paid where it enters: a peer of relay A sending relays to a peer
/// of relay B as fast as it can gets no more through than A's limits let one source send, and
/// B forwards nothing beyond what A sent it.
#[test]
fn a_flood_across_relays_is_bounded_by_the_first_relays_limits() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, _c] = cluster_with(&redis, "flood", &["--source-rate", "100"]);
    let victim = Peer::new(&b.relay);
    victim.register("victim");
    a.knows_elsewhere(1);
    let flooder = Peer::new(&a.relay);
    flooder.register_old("flooder");
    let sent = 1_000;
    let d = relay_msg("flooder", "victim", "\"x\"");
    for _ in 0..sent {
        flooder.send_raw(&d);
    }
    // Every datagram decided at A: forwarded to B, or refused there.
    let deadline = Instant::now() + TIMEOUT;
    let forwarded = loop {
        let (through, refused) = (
            a.metric("udp_relay_mesh_sent_total"),
            a.relay.refused("rate_limited_source"),
        );
        // The flooder's registration was one of its datagrams too.
        if through + refused >= sent {
            break through;
        }
        assert!(
            Instant::now() < deadline,
            "A decided {through} + {refused} of {sent}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // A source's burst is two seconds of its rate: about 200 of 1,000, whatever B would take.
    assert!((150..=300).contains(&forwarded), "{forwarded} forwarded");
    b.wait_metric("udp_relay_mesh_delivered_total", forwarded);
    let got = victim
        .drain()
        .iter()
        .filter(|m| m["type"] == "relayed_packet")
        .count() as u64;
    assert_eq!(got, forwarded);
}

/// An upgrade (`--takeover`) keeps the node id and the names: the new process serves the old
/// one's peers at once (a keepalive needs no claim), the directory keeps their epochs, and the
/// other relays reach them through the new process.
#[test]
fn a_takeover_keeps_the_node_its_names_and_the_forwards_to_them() {
    let Some(redis) = Redis::start() else { return };
    let socket =
        std::env::temp_dir().join(format!("udp-relay-cluster-{}.sock", std::process::id()));
    let takeover = ["--takeover", socket.to_str().unwrap()];
    let key = key_file("takeover");
    let a = Node::start(&redis, &key, 1, &takeover);
    let b = Node::start(&redis, &key, 2, &[]);
    a.wait_metric("udp_relay_cluster_nodes", 1);
    let alice = Peer::new(&a.relay);
    alice.register_old("alice");
    b.knows_elsewhere(1);
    let bob = Peer::new(&b.relay);
    bob.register_old("bob");
    alice.expect("peer_joined");
    let claims_before = redis_epoch(&redis);
    let mut old = a;
    let mut new = Node::start(&redis, &key, 1, &takeover);
    new.relay.wait_log("took over: serving");
    old.relay.wait_exit();
    new.wait_log_metric_names_here(1);
    // Alice's keepalive is served by the new process, without a claim.
    alice.send(json!({"type": "keepalive", "name": "alice"}));
    assert_eq!(alice.expect("keepalive_ack")["peer_name"], "alice");
    assert_eq!(
        redis_epoch(&redis),
        claims_before,
        "no new epoch: nothing claimed again"
    );
    // Bob reaches her through the new process, at its new mesh port once relay-2 heard it.
    let at_new = format!(
        "udp_relay_cluster_node_info{{node=\"relay-1\",mesh=\"{}\"}}",
        new.mesh
    );
    b.wait_line(&format!("{at_new} 1"));
    bob.send_raw(&relay_msg("bob", "alice", "3"));
    assert_eq!(alice.recv_raw(), relayed("bob", "3"));
    alice.send_raw(&relay_msg("alice", "bob", "4"));
    assert_eq!(bob.recv_raw(), relayed("alice", "4"));
}

/// The epoch counter of `redis`'s directory: how many claims it has issued.
fn redis_epoch(redis: &Redis) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "GET", "udp-relay:epoch"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A channel between peers of two relays: bound as on one relay (`bind_ack`, `channel_bound`),
/// frames both ways under each side's own number, byte for byte and from each peer's own
/// relay; `unbind` closes the other end; the death of a relay closes the ends that pointed
/// there.
#[test]
fn a_channel_across_relays_carries_frames_both_ways_and_closes() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, mut c] = cluster(&redis, "channels");
    let alice = Peer::new(&a.relay);
    alice.register("alice");
    b.knows_elsewhere(1);
    let bob = Peer::new(&b.relay);
    bob.register("bob");
    a.knows_elsewhere(1);
    let (ab, ba) = bind_channel(&alice, &bob, "bob");
    // Binding again gives the same numbers.
    alice.send(alice.authed(json!({"type": "bind", "target": "bob"})));
    assert_eq!(expect(&alice, "bind_ack")["channel"], ab);
    let payload = |i: u8| [i; 300];
    for i in 0..20 {
        alice.send_raw(&frame(ab, &payload(i)));
        assert_eq!(bob.recv_raw(), frame(ba, &payload(i)), "frame {i}");
        bob.send_raw(&frame(ba, &payload(i)));
        assert_eq!(alice.recv_raw(), frame(ab, &payload(i)), "frame {i} back");
    }
    alice.send(alice.authed(json!({"type": "unbind", "channel": ab})));
    assert_eq!(expect(&alice, "channel_closed")["channel"], ab);
    assert_eq!(expect(&bob, "channel_closed")["channel"], ba);
    // A channel to a peer of relay-3, which dies: its end here closes, and alice hears it.
    let carol = Peer::new(&c.relay);
    carol.register("carol");
    a.knows_elsewhere(2);
    let (ac, _) = bind_channel(&alice, &carol, "carol");
    c.relay.stop_with(libc::SIGKILL);
    let mut heard = None;
    let deadline = Instant::now() + TIMEOUT * 2;
    while heard.is_none() {
        assert!(
            Instant::now() < deadline,
            "alice never heard her channel close"
        );
        let v = alice.recv();
        if v["type"] == "channel_closed" {
            heard = Some(v["channel"].clone());
        }
    }
    assert_eq!(heard.unwrap(), ac);
    alice.send_raw(&frame(ac, b"x"));
    wait_refused(&a, "channel_gone", 1);
}

/// Introductions across relays: a peer's `connect` reaches the other relay's peer as a
/// `connect_request` (no address), and once both asked each learns the other's address.
#[test]
fn peers_of_two_relays_are_introduced_once_both_asked() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, _c] = cluster(&redis, "introductions");
    let alice = Peer::new(&a.relay);
    alice.register("alice");
    b.knows_elsewhere(1);
    let bob = Peer::new(&b.relay);
    bob.register("bob");
    a.knows_elsewhere(1);
    alice.send(alice.authed(json!({"type": "connect", "target": "bob"})));
    let asks = expect(&bob, "connect_request");
    assert_eq!(asks["peer_name"], "alice");
    bob.send(bob.authed(json!({"type": "connect", "target": "alice"})));
    let to_alice = expect(&alice, "introduce");
    assert_eq!(to_alice["peer_name"], "bob");
    assert_eq!(to_alice["address"], bob.addr().to_string());
    let to_bob = expect(&bob, "introduce");
    assert_eq!(to_bob["peer_name"], "alice");
    assert_eq!(to_bob["address"], alice.addr().to_string());
}

/// A mesh link cut (nftables drops what goes to one relay's mesh port, while Redis still hears
/// both) is noticed within a node TTL and logged, and so is its return: never silent.
#[test]
fn a_cut_mesh_link_is_counted_and_logged_and_so_is_its_return() {
    let test = "a_cut_mesh_link_is_counted_and_logged_and_so_is_its_return";
    common::in_own_network(test, &[], || {
        let Some(redis) = Redis::start() else { return };
        let key = key_file("cut");
        let mut a = Node::start(&redis, &key, 1, &[]);
        let b = Node::start(&redis, &key, 2, &[]);
        a.wait_metric("udp_relay_cluster_nodes", 1);
        b.wait_metric("udp_relay_cluster_nodes", 1);
        let silent = "udp_relay_cluster_mesh_links_silent";
        a.wait_metric(silent, 0);
        let nft = |rules: &str| {
            let out = std::process::Command::new("nft").arg(rules).output();
            let out = out.expect("nft (CI installs nftables)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let port = b.mesh.port();
        nft(&format!(
            "table inet cut {{ chain out {{ type filter hook output priority 0; udp dport {port} drop; }}; }}"
        ));
        // relay-2 hears nothing of relay-1 (its pings to relay-2 are dropped); relay-1 still
        // hears relay-2.
        b.wait_metric(silent, 1);
        a.wait_metric(silent, 0);
        assert_eq!(
            b.metric("udp_relay_cluster_nodes"),
            1,
            "still a node: Redis hears it"
        );
        nft("delete table inet cut");
        b.wait_metric(silent, 0);
        let mut b = b;
        b.relay.wait_log("the mesh link to a relay carries nothing");
        b.relay.wait_log("the mesh link to a relay carries again");
        a.relay.stop();
    });
}

#[test]
fn a_relay_killed_leaves_with_its_names_and_its_peers_re_register_elsewhere() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, mut c] = cluster(&redis, "sigkill");
    let alice = Peer::new(&a.relay);
    alice.register_old("alice");
    let carol = Peer::new(&c.relay);
    carol.register_old("carol");
    assert_eq!(alice.expect("peer_joined")["peer_name"], "carol");
    b.knows_elsewhere(2);
    c.relay.stop_with(libc::SIGKILL);
    // Within its node TTL (1 s) and a heartbeat, the others hear that carol left.
    let left = alice.expect("peer_left");
    assert_eq!(left["peer_name"], "carol");
    assert_eq!(names(&left), set(&["alice"]));
    a.wait_metric("udp_relay_cluster_nodes", 1);
    // Carol's peer, pointed at another relay, takes her name there.
    let again = Peer::bind(b.relay.addr, "127.0.0.1:0");
    let (ack, list) = again.register_old("carol");
    assert_eq!(ack["status"], "success");
    assert_eq!(names(&list), set(&["alice", "carol"]));
    assert_eq!(alice.expect("peer_joined")["peer_name"], "carol");
    alice.send_raw(&relay_msg("alice", "carol", "1"));
    assert_eq!(again.recv_raw(), relayed("alice", "1"));
}

#[test]
fn with_redis_away_each_relay_serves_what_it_knows_and_publishes_again_when_it_is_back() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let [mut a, b, _c] = cluster(&redis, "redis-away");
    let alice = Peer::new(&a.relay);
    alice.register_old("alice");
    b.knows_elsewhere(1);
    let bob = Peer::new(&b.relay);
    bob.register_old("bob");
    alice.expect("peer_joined");
    drop(redis);
    a.wait_metric("udp_relay_cluster_directory_up", 0);
    // Fail-static: the peers of each relay and the names known are served.
    alice.send_raw(&relay_msg("alice", "bob", "2"));
    assert_eq!(bob.recv_raw(), relayed("alice", "2"));
    assert!(http_get(&a.relay, "/readyz").contains("degraded"));
    // A new name cannot be claimed: refused, and counted.
    let frank = Peer::new(&a.relay);
    frank.send(json!({"type": "register", "name": "frank"}));
    let e = frank.expect("error");
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(a.relay.refused("cluster_unavailable"), 1);
    // Redis back, empty: each relay publishes its names again, and they are the cluster's.
    let Ok(back) = Redis::on(port) else {
        panic!("redis-server again on port {port}")
    };
    a.wait_metric("udp_relay_cluster_directory_up", 1);
    a.relay
        .wait_log("published this relay's names in the directory again names=1");
    let thief = Peer::new(&b.relay);
    thief.send(json!({"type": "register", "name": "alice"}));
    assert_eq!(thief.expect("error")["code"], "name_in_use");
    assert!(http_get(&a.relay, "/readyz").starts_with("ready\n"));
    drop(back);
}

#[test]
fn mesh_datagrams_forged_replayed_or_from_an_unknown_node_are_refused() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, _c] = cluster(&redis, "mesh-forged");
    let bob = Peer::new(&b.relay);
    bob.register_old("bob");
    a.knows_elsewhere(1);
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let seal = |key: &[u8], node: &str, seq: u64, payload: &[u8]| {
        let head = Head {
            node,
            seq,
            stream: 0,
            target: "bob",
            via: Via::Source("alice"),
        };
        let mut d = Vec::new();
        assert!(write_head(&mut d, &head, payload.len()));
        d.extend_from_slice(payload);
        let mac = Keys::new(key).unwrap().mac("relay-2", &[&d]);
        d.extend_from_slice(&mac);
        d
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let good = seal(KEY, "relay-1", now_us, b"\"sealed\"");
    let cases: [(Vec<u8>, &str); 4] = [
        (b"not a mesh datagram".to_vec(), "mesh_malformed"),
        (
            seal(
                b"a guess at the key, 32 bytes or more",
                "relay-1",
                now_us + 1,
                b"1",
            ),
            "mesh_bad_mac",
        ),
        (seal(KEY, "relay-9", now_us + 2, b"1"), "mesh_unknown_node"),
        (
            seal(KEY, "relay-1", now_us - 60_000_000, b"1"),
            "mesh_replayed",
        ),
    ];
    // Counted from here: pings between relays that met a moment apart may have been refused
    // as from an unknown node while the cluster formed.
    let before = |reason: &str| b.relay.refused(reason);
    let replayed = before("mesh_replayed");
    for (d, reason) in &cases {
        let was = before(reason);
        forger.send_to(d, b.mesh).unwrap();
        wait_refused(&b, reason, was + 1);
    }
    // One sealed with the key is delivered once; sent again, it is a replay.
    forger.send_to(&good, b.mesh).unwrap();
    assert_eq!(bob.recv_raw(), relayed("alice", "\"sealed\""));
    forger.send_to(&good, b.mesh).unwrap();
    wait_refused(&b, "mesh_replayed", replayed + 2);
    bob.expect_nothing();
}

/// Waits until `n` counts `reason` `want` times.
fn wait_refused(n: &Node, reason: &str, want: u64) {
    n.wait_metric(
        &format!("udp_relay_datagrams_refused_total{{reason=\"{reason}\"}}"),
        want,
    );
}

/// The body of `GET path` on `relay`'s ops endpoint.
fn http_get(relay: &Relay, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(relay.metrics).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
