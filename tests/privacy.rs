//! The relay never logs what peers relay: with every log line switched on (`RUST_LOG=trace`),
//! in text and in JSON, a unique marker carried in payloads, in refused datagrams and in fields
//! the relay ignores appears nowhere in its output. Neither does a session token.

mod common;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::json;

/// A marker no run of the relay could print by chance.
fn marker() -> String {
    let seed = (std::process::id(), SystemTime::now());
    let a = std::collections::hash_map::RandomState::new().hash_one(seed);
    let b = std::collections::hash_map::RandomState::new().hash_one(seed);
    format!("Zmark{a:016x}{b:016x}Q")
}

/// Waits (with a timeout) until `reason` was refused `n` more times than in `before`, and no
/// other reason moved.
fn expect_refused(r: &Relay, before: &BTreeMap<String, u64>, reason: &str, n: u64) {
    assert!(before.contains_key(reason), "no counter for {reason}");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = r.refusals();
        let moved: BTreeMap<&String, u64> = now
            .iter()
            .map(|(k, &v)| (k, v - before[k]))
            .filter(|&(_, d)| d > 0)
            .collect();
        let mine = moved.get(&reason.to_string()).copied().unwrap_or(0);
        if mine == n && moved.len() == 1 {
            return;
        }
        let others = moved.len() - usize::from(mine > 0);
        assert!(
            others == 0 && mine < n && Instant::now() < deadline,
            "expected {n} more {reason}, refusals moved by {moved:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the metric `series` reaches `n`.
fn wait_metric(r: &Relay, series: &str, n: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while r.metric(series) < n {
        assert!(Instant::now() < deadline, "{series} never reached {n}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every encoding of `secret` a careless log line could hold: as is, in hex, and as the
/// `Debug` of its bytes.
fn encodings(secret: &str) -> Vec<String> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let bytes = format!("{:?}", secret.as_bytes());
    vec![
        secret.to_string(),
        secret.to_lowercase(),
        hex.clone(),
        hex.to_uppercase(),
        bytes[1..bytes.len() - 1].to_string(),
    ]
}

/// Asserts no encoding of `secret` appears in `logs`, showing the offending lines.
fn assert_absent(logs: &str, secret: &str, what: &str) {
    for enc in encodings(secret) {
        let hits: Vec<&str> = logs.lines().filter(|l| l.contains(&enc)).collect();
        assert!(hits.is_empty(), "{what} leaked into the logs:\n{hits:#?}");
    }
}

/// Writes every character of `s` as a `\u00XX` escape, so the marker is only there once decoded.
fn escaped(s: &str) -> String {
    s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
}

/// What a run left behind: its whole output, the addresses it served, a session token.
struct Run {
    logs: String,
    alice: String,
    stranger: String,
    session: String,
}

/// Registers two peers, relays and gets refused datagrams carrying `m`, stops the relay and
/// returns its complete output.
fn exercise(format: &str, m: &str) -> Run {
    let mut r = Relay::start_with(
        &["--log-format", format, "--max-datagram", "4096"],
        &[("RUST_LOG", "trace")],
        "127.0.0.1",
    );
    let a = Peer::new(&r);
    let b = Peer::new(&r);
    let (ack, _) = a.register("alice");
    let session = ack["session"].as_str().unwrap().to_string();
    b.register("bob");
    a.expect("peer_joined");

    // Delivered: the marker in a string, a nested object, an object key, escapes, and in a
    // field of the relay message that the relay ignores.
    let sent = [
        json!(format!(r#"{{"type": "message", "ciphertext": "{m}"}}"#)),
        json!({"outer": {"inner": [1, {"deep": m}]}}),
        json!({ m: {"k": true}, "list": [{ m: null }] }),
        json!([m, m, m]),
    ];
    for p in &sent {
        a.send(json!({"type": "relay", "target": "bob", "source": "alice", "payload": p}));
        let got = b.expect("relayed_packet");
        assert_eq!(&got["payload"], p);
    }
    let raw = format!(
        r#"{{"type":"relay","target":"bob","source":"alice","payload":"{}"}}"#,
        escaped(m)
    );
    a.send_raw(raw.as_bytes());
    assert_eq!(b.expect("relayed_packet")["payload"], m);
    a.send(json!({"type": "relay", "target": "bob", "source": "alice", "note": m, "payload": 1}));
    assert_eq!(b.expect("relayed_packet")["payload"], 1);
    b.send(json!({"type": "relay", "target": "alice", "source": "bob", "payload": {"re": m}}));
    assert_eq!(a.expect("relayed_packet")["payload"]["re"], m);
    wait_metric(&r, "udp_relay_relay_messages_forwarded_total", 7);

    // Refused, each under its reason: the marker rides along in the refused bytes.
    let stranger = Peer::new(&r);
    let head = r#"{"type":"relay","target":"bob","source":"alice","payload":"#;
    let refused: Vec<(&Peer, Vec<u8>, &str)> = vec![
        (&a, format!(r#"{head}"{m}"#).into_bytes(), "malformed_json"),
        (
            &a,
            format!(r#"{head}{{"{m}":}}}}"#).into_bytes(),
            "malformed_json",
        ),
        (
            &a,
            format!("{head}\"{m}\n\"}}").into_bytes(),
            "malformed_json",
        ),
        (
            &a,
            [format!(r#"{head}"{m}"#).as_bytes(), b"\xff\"}"].concat(),
            "not_utf8",
        ),
        (
            &a,
            format!(r#"{head}{}"{m}"{}}}"#, "[".repeat(200), "]".repeat(200)).into_bytes(),
            "too_deep",
        ),
        (
            &a,
            format!(r#"{head}"{m}","payload":"{m}"}}"#).into_bytes(),
            "duplicate_field",
        ),
        (
            &a,
            format!(r#"{{"type":"relay","target":{{"{m}":1}},"source":"alice","payload":1}}"#)
                .into_bytes(),
            "wrong_field_type",
        ),
        (
            &a,
            format!(r#"{{"type":"relay","source":"alice","payload":"{m}"}}"#).into_bytes(),
            "missing_field",
        ),
        (
            &a,
            format!(r#"{{"type":"relay","target":"nobody","source":"alice","payload":"{m}"}}"#)
                .into_bytes(),
            "unknown_target",
        ),
        (
            &stranger,
            format!(r#"{head}"{m}"}}"#).into_bytes(),
            "not_registered",
        ),
        (
            &a,
            format!(r#"{head}"{}"}}"#, m.repeat(4096 / m.len() + 1)).into_bytes(),
            "too_large",
        ),
        (
            &a,
            format!(r#"{{"type":"whisper","payload":"{m}","{m}":1}}"#).into_bytes(),
            "unknown_type",
        ),
        (
            &a,
            format!(r#"{{"type":"register","name":{{"{m}":1}}}}"#).into_bytes(),
            "wrong_field_type",
        ),
        (
            &a,
            format!(r#"{{"type":"lookup","name":"x","name":"{m}"}}"#).into_bytes(),
            "duplicate_field",
        ),
    ];
    for (from, d, reason) in &refused {
        let before = r.refusals();
        from.send_raw(d);
        expect_refused(&r, &before, reason, 1);
    }
    // Alice was answered with errors, which carry no part of what she sent.
    for v in a.drain() {
        assert_eq!(v["type"], "error", "{v}");
        assert!(!v.to_string().contains(m), "marker echoed in {v}");
    }
    a.send(json!({"type": "lookup", "name": "bob", "why": m}));
    assert_eq!(a.expect("peer_info")["online"], true);

    // Served, with the marker in fields the relay ignores.
    let c = Peer::new(&r);
    c.send(json!({"type": "register", "name": "carol", "note": m, "profile": {m: [m]}}));
    c.expect("register_ack");
    c.send(json!({"type": "keepalive", "name": "carol", "extra": m}));
    c.expect("peer_list");
    c.expect("keepalive_ack");
    c.send(json!({"type": "ping", "padding": m}));
    c.expect("pong");

    // Nothing the marker was in reached anyone but bob and alice as payload.
    for p in [&a, &b, &c, &stranger] {
        for v in p.drain() {
            assert!(
                !v.to_string().contains(m) || v["type"] == "relayed_packet",
                "marker sent back outside a payload: {v}"
            );
        }
    }

    let (status, _) = r.stop();
    assert!(status.success(), "relay exited with {status}");
    // The last line: everything before it has been captured.
    r.wait_log("stopped");
    Run {
        logs: r.logs(),
        alice: a.addr().to_string(),
        stranger: stranger.addr().to_string(),
        session,
    }
}

/// Checks that the output is the verbose log of this run (so silence cannot pass), then that
/// neither the marker nor the session token is in it.
fn assert_private(run: &Run, m: &str, debug_level: &str) {
    let logs = &run.logs;
    assert!(!logs.trim().is_empty(), "the relay wrote nothing");
    assert!(!logs.contains("panicked"), "relay panicked:\n{logs}");
    // Datagram-level debug lines are there, naming the peers and the refusals of this run.
    let debug: Vec<&str> = logs.lines().filter(|l| l.contains(debug_level)).collect();
    assert!(
        debug.len() >= 10,
        "expected per-datagram debug lines at RUST_LOG=trace:\n{logs}"
    );
    for needle in [
        "refused",
        "claim",
        "malformed_json",
        "not_utf8",
        "too_deep",
        "duplicate_field",
        "unknown_target",
        "not_registered",
        "too_large",
        "unknown_type",
        run.alice.as_str(),
        run.stranger.as_str(),
    ] {
        assert!(
            debug.iter().any(|l| l.contains(needle)),
            "no debug line mentions {needle:?}:\n{logs}"
        );
    }
    assert_absent(logs, m, "the payload marker");
    assert_absent(logs, &run.session, "a session token");
}

#[test]
fn payloads_stay_out_of_text_logs() {
    let m = marker();
    let run = exercise("text", &m);
    assert_private(&run, &m, " DEBUG ");
}

#[test]
fn payloads_stay_out_of_json_logs() {
    let m = marker();
    let run = exercise("json", &m);
    // Every line is a JSON object, so the search below reads real log records.
    for line in run.logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert_private(&run, &m, r#""level":"DEBUG""#);
}

#[test]
fn the_leak_check_can_fail() {
    // The checks above would see a marker that did reach the output: the relay does log the
    // names peers register, so a name carrying the marker must be found.
    let m = marker();
    let mut r = Relay::start_with(
        &["--log-format", "text"],
        &[("RUST_LOG", "trace")],
        "127.0.0.1",
    );
    let p = Peer::new(&r);
    p.register(&format!("n{m}"));
    r.stop();
    r.wait_log("stopped");
    let logs = r.logs();
    let caught = std::panic::catch_unwind(|| assert_absent(&logs, &m, "probe"));
    assert!(caught.is_err(), "a logged name was not found:\n{logs}");
}
