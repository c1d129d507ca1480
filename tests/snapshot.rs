//! Restart from a snapshot (`--state-file`): the state written on SIGTERM comes back at the
//! next start — registrations with their sessions, channels with their numbers — without the
//! registrations that went stale meanwhile; a corrupt or truncated file is refused, moved
//! aside, and the relay starts empty and serves.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A state file path of this test's own, with nothing at it or beside it.
fn state_path(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("udp-relay-snapshot-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state")
}

/// The files beside `path` whose names begin with its own, but for it.
fn set_aside(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(&name) && n != name
        })
        .collect()
}

fn frame(channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xD1, 0];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The next message of type `ty` for `p`, past presence news.
fn expect(p: &Peer, ty: &str) -> Value {
    loop {
        let v = p.recv();
        match v["type"].as_str() {
            Some(t) if t == ty => return v,
            Some("peer_joined" | "peer_left" | "peer_list") => continue,
            _ => panic!("expected {ty}, got {v}"),
        }
    }
}

/// Starts a relay on `port` (0: any) with the state file `state` and `extra` flags.
fn relay(port: u16, state: &Path, extra: &[&str]) -> Relay {
    let port = port.to_string();
    let state = state.to_str().unwrap();
    Relay::start(&args(&["--port", &port, "--state-file", state], extra))
}

#[test]
fn a_restart_brings_back_registrations_sessions_and_channels_but_not_stale_ones() {
    let path = state_path("restart");
    // A peer timeout that the wait below outlasts for the early peer only.
    let timeout = ["--peer-timeout", "3s", "--keepalive-interval", "1s"];
    let mut old = relay(0, &path, &timeout);
    let early = Peer::new(&old);
    early.register("early");
    // Silent from here on: by the restart it has been silent 3.5 s, beyond the timeout.
    std::thread::sleep(Duration::from_millis(2000));
    let [alice, bob, carol, dave] = [(); 4].map(|_| Peer::new(&old));
    for (p, name) in [
        (&alice, "alice"),
        (&bob, "bob"),
        (&carol, "carol"),
        (&dave, "dave"),
    ] {
        p.register(name);
    }
    alice.send(alice.authed(json!({"type": "watch", "names": ["bob"]})));
    expect(&alice, "watch_ack");
    carol.send(carol.authed(json!({"type": "bind", "target": "dave"})));
    let c_num = expect(&carol, "bind_ack")["channel"].as_u64().unwrap() as u32;
    let d_num = expect(&dave, "channel_bound")["channel"].as_u64().unwrap() as u32;
    let (status, _) = old.stop();
    assert!(status.success());
    old.wait_log("state written");
    std::thread::sleep(Duration::from_millis(1500));

    let new = relay(old.addr.port(), &path, &timeout);
    // Before "listening on", which the harness waited for.
    let logs = new.logs();
    assert!(logs.contains("restored the state file"), "{logs}");
    assert!(
        logs.contains("peers=4") && logs.contains("stale=1"),
        "{logs}"
    );
    assert_eq!(new.metric("udp_relay_peers_registered"), 4);
    // Every session holds: an authenticated ping (which also keeps them live from here on).
    for p in [&alice, &bob, &carol, &dave] {
        p.send(p.ping());
        expect(p, "pong");
    }
    // The channel routes under its old numbers, with no bind.
    carol.send_raw(&frame(c_num, b"after"));
    assert_eq!(dave.recv_raw(), frame(d_num, b"after"));
    // Sessions hold: alice moves with hers; the early peer's name is free.
    let moved = Peer::new(&new);
    moved.send(json!({"type": "register", "name": "alice", "session": alice.session()}));
    assert!(expect(&moved, "register_ack")["session"].is_string());
    let other = Peer::new(&new);
    other.send(json!({"type": "register", "name": "early"}));
    expect(&other, "register_ack");
    // Relays flow between restored peers.
    bob.send(json!({"type": "relay", "source": "bob", "target": "dave", "payload": "hi"}));
    assert_eq!(expect(&dave, "relayed_packet")["payload"], "hi");
    assert!(set_aside(&path).is_empty(), "{:?}", set_aside(&path));
}

#[test]
fn corrupt_and_truncated_files_are_refused_and_moved_aside() {
    let path = state_path("corrupt");
    let mut old = relay(0, &path, &[]);
    let alice = Peer::new(&old);
    alice.register("alice");
    old.stop();
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    for (what, bytes, says) in [
        ("truncated", good[..good.len() - 3].to_vec(), "truncated"),
        ("corrupt", flipped, "checksum"),
        (
            "foreign",
            b"{\"peers\": []}".to_vec(),
            "not a udp-relay state image",
        ),
        ("empty", Vec::new(), "not a udp-relay state image"),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let mut r = relay(0, &path, &[]);
        let logs = r.logs();
        assert!(logs.contains("the state file is refused"), "{what}: {logs}");
        assert!(logs.contains(says), "{what}: {logs}");
        assert_eq!(r.metric("udp_relay_peers_registered"), 0, "{what}");
        // It serves, empty.
        let p = Peer::new(&r);
        p.register("alice");
        // The bad file is kept aside, byte for byte; the path is free for the next snapshot.
        let aside = set_aside(&path);
        assert_eq!(aside.len(), 1, "{what}: {aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes, "{what}");
        std::fs::remove_file(&aside[0]).unwrap();
        let (status, _) = r.stop();
        assert!(status.success(), "{what}");
        assert!(path.exists(), "{what}: no new snapshot");
    }
}
