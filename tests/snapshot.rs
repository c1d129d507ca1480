//! Restart from a snapshot (`--state-file`): the state written on SIGTERM comes back at the
//! next start — registrations with their sessions, channels with their numbers — without the
//! registrations that went stale meanwhile; a corrupt or truncated file is refused, moved
//! aside, and the relay starts empty and serves. Attacked as a careless operator would: a
//! relay that crashed after it started from the file, a temporary file left in the way, a
//! symlink planted where the temporary file goes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

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
    let [alice, bob, carol, dave] = registered(&old, ["alice", "bob", "carol", "dave"]);
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
    // Read once: a relay that crashed after it started from the file must not start from it
    // again (it would issue the tokens the crashed one issued).
    let aside = set_aside(&path);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        aside[0].to_str().unwrap().ends_with(".restored"),
        "{aside:?}"
    );
    assert!(!path.exists());
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

fn cleanup(path: &std::path::Path) {
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A session token never repeats, even across a crash: a relay started from the state file,
/// then killed before it could write it again, leaves the file with the registration number it
/// started from; the next start from that file must not issue the tokens the crashed one did
/// (a token is the keystream of its number alone), or whoever held one in the crashed run takes
/// over the name that gets it now.
#[test]
fn a_restart_after_a_crash_issues_no_token_the_crashed_relay_issued() {
    let path = state_path("crash");
    let p = path.to_str().unwrap();
    let mut first = Relay::start(&["--state-file", p]);
    Peer::new(&first).register("carol");
    let (status, _) = first.stop();
    assert!(status.success());
    assert!(path.exists(), "the state was written");

    let mut crashed = Relay::start(&["--state-file", p]);
    assert!(crashed.logs().contains("restored the state file"));
    let mallory = Peer::new(&crashed);
    mallory.register("mallory");
    let token = mallory.session();
    // Killed: nothing is written.
    crashed.stop_with(libc::SIGKILL);

    let mut again = Relay::start(&["--state-file", p]);
    let alice = Peer::new(&again);
    alice.register("alice");
    let logs = again.logs();
    cleanup(&path);
    assert_ne!(
        alice.session(),
        token,
        "alice got the token mallory was given before the crash:\n{logs}"
    );
    let thief = Peer::new(&again);
    thief.send(json!({"type": "register", "name": "alice", "session": token}));
    let v = thief.expect("error");
    assert_eq!(v["code"], "name_in_use", "{v}");
    let _ = again.stop();
}

/// The state file holds the keys that sessions derive from: it is the relay's user's alone,
/// even where a temporary file of another mode was left where it writes.
#[test]
fn the_state_file_is_the_relay_users_alone() {
    let path = state_path("mode");
    let tmp = path.with_file_name("state.tmp");
    std::fs::write(&tmp, b"left over").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut r = Relay::start(&["--state-file", path.to_str().unwrap()]);
    Peer::new(&r).register("alice");
    let (status, _) = r.stop();
    assert!(status.success());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    cleanup(&path);
    assert_eq!(mode, 0o600, "the state file is {mode:o}");
}

/// A symlink planted where the temporary file goes is not followed: the file it points at stays
/// as it was, and the state is written.
#[test]
fn a_symlink_at_the_temporary_file_is_not_followed() {
    let path = state_path("symlink");
    let victim = path.with_file_name("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, path.with_file_name("state.tmp")).unwrap();
    let mut r = Relay::start(&["--state-file", path.to_str().unwrap()]);
    Peer::new(&r).register("alice");
    let _ = r.stop();
    let victim_now = std::fs::read(&victim).unwrap();
    let is_file = std::fs::symlink_metadata(&path).map(|m| m.file_type().is_file());
    let logs = r.logs();
    cleanup(&path);
    assert_eq!(
        victim_now, b"precious",
        "the symlink's target was written over"
    );
    assert!(matches!(is_file, Ok(true)), "{logs}");
}

/// A state that cannot be written is said, and the exit fails, so that the service manager
/// tells the operator the state was not kept.
#[test]
fn a_state_that_cannot_be_written_fails_the_exit() {
    let path = state_path("unwritable").join("no-such-dir").join("state");
    let mut r = Relay::start(&["--state-file", path.to_str().unwrap()]);
    Peer::new(&r).register("alice");
    let (status, _) = r.stop();
    assert!(!status.success());
    assert!(r.logs().contains("the state is lost"), "{}", r.logs());
}
