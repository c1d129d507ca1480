//! `udp-chat`'s errors on loopback, each naming its cause: a key file that is not one, a relay
//! that does not answer, a peer that is not online, a relay that requires signing from a chat
//! told to register unsigned.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{BIN, Chat, keygen};

fn relay(extra: &[&str]) -> udp_relay::server::Relay {
    let mut args = vec![
        "udp-relay",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    udp_relay::server::start(&udp_relay::config::Args::parse_from(args)).expect("the relay starts")
}

fn dir(test: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("udp-chat-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn chat(args: &[&str], name: &'static str) -> Chat {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Chat::start(child, name)
}

#[test]
fn a_file_that_is_not_a_key_is_named() {
    let d = dir("badkey");
    std::fs::create_dir_all(&d).unwrap();
    let bad = d.join("k");
    std::fs::write(&bad, "not a key").unwrap();
    let out = Command::new(BIN)
        .args([
            "--relay",
            "127.0.0.1:9",
            "--name",
            "a",
            "--key",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a key file"), "{err}");
    let out = Command::new(BIN).args(["--name", "a"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--relay HOST:PORT is required"));
}

#[test]
fn a_relay_that_does_not_answer_is_said_so() {
    let d = dir("silent");
    let key = keygen(&d.join("a"));
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = silent.local_addr().unwrap().to_string();
    let mut c = chat(
        &[
            "--relay",
            &at,
            "--name",
            "a",
            "--key",
            key.to_str().unwrap(),
        ],
        "a",
    );
    let said = c.expect("the relay's silence", |l| l.contains("does not answer"));
    assert!(said.contains(&at), "{said}");
}

#[test]
fn a_peer_not_online_is_said_so_and_asked_for_again() {
    let r = relay(&[]);
    let at = r.local_addr.to_string();
    let d = dir("offline");
    let key = keygen(&d.join("a"));
    let k = key.to_str().unwrap();
    let mut c = chat(
        &[
            "--relay", &at, "--name", "a", "--key", k, "--peer", "nobody",
        ],
        "a",
    );
    c.expect("the registration", |l| l.starts_with("* registered as a"));
    c.expect("the peer's absence", |l| {
        l == "* nobody is not available (unknown_target); asking again"
    });
    // When it comes, the chat connects without being told.
    let kb = keygen(&d.join("nobody"));
    let mut b = chat(
        &[
            "--relay",
            &at,
            "--name",
            "nobody",
            "--key",
            kb.to_str().unwrap(),
        ],
        "nobody",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(
        c.wait_for(deadline, |l| l.starts_with("* connected to nobody"))
            .is_some()
    );
    b.expect("the session", |l| l.starts_with("* connected to a"));
}

#[test]
fn a_relay_that_requires_signing_refuses_an_unsigned_chat_with_a_reason() {
    let r = relay(&["--auth", "signed"]);
    let at = r.local_addr.to_string();
    let d = dir("unsigned");
    let key = keygen(&d.join("a"));
    let mut c = chat(
        &[
            "--relay",
            &at,
            "--name",
            "a",
            "--key",
            key.to_str().unwrap(),
            "--open",
        ],
        "a",
    );
    c.expect("the refusal", |l| {
        l.contains("refused \"a\": auth_required") && l.contains("requires signed registration")
    });
}
