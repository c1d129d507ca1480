//! The state file (`--state-file`): written on SIGTERM, read at start. Attacked as a careless
//! operator would: a relay that crashed after it started from the file, a temporary file left
//! in the way, a symlink planted where the temporary file goes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;
use serde_json::json;

/// A state file path of this test's own, in a fresh directory.
fn state_path(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udp-relay-state-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state")
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
