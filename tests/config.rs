//! The configuration as an operator meets it: a TOML file, `UDP_RELAY_…` variables and flags,
//! flags > env > file > defaults; every way it can be wrong, named; `check-config`,
//! `print-config`, `completions`, `man`; `dist/udp-relay.toml` kept equal to the defaults; and
//! reloads on SIGHUP.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_udp-relay");

/// A file under the temporary directory, unique to this test process and `name`.
fn file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("udp-relay-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary to completion with the environment cleaned of `UDP_RELAY_*` (CI sets some)
/// and `env` added: exit code, stdout, stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("UDP_RELAY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run udp-relay");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// `print-config`'s `key = value` lines, each with the source its comment gives.
fn printed(args: &[&str], env: &[(&str, &str)]) -> BTreeMap<String, (String, String)> {
    let mut all = vec!["print-config"];
    all.extend_from_slice(args);
    let (code, out, err) = run(&all, env);
    assert_eq!(code, 0, "print-config {args:?} failed:\n{err}");
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (kv, source) = l.split_once("  # from ").expect("a source comment");
            let (k, v) = kv.split_once(" = ").expect("key = value");
            (k.to_string(), (v.to_string(), source.to_string()))
        })
        .collect()
}

/// Asserts that `check-config` with `args` and `env` fails, its message containing every one of
/// `want`, and that running the relay with the same configuration fails alike.
fn refused(args: &[&str], env: &[(&str, &str)], want: &[&str]) {
    let mut check = vec!["check-config"];
    check.extend_from_slice(args);
    let mut start = args.to_vec();
    start.extend_from_slice(&["--host", "127.0.0.1", "--port", "0"]);
    for argv in [check, start] {
        let (code, out, err) = run(&argv, env);
        assert_ne!(code, 0, "{argv:?} {env:?} accepted:\n{out}{err}");
        assert!(!err.contains("listening on"), "{argv:?} started:\n{err}");
        for w in want {
            assert!(err.contains(w), "{argv:?} {env:?}: no {w:?} in:\n{err}");
        }
    }
}

#[test]
fn flags_override_the_environment_which_overrides_the_file_which_overrides_the_defaults() {
    let f = file(
        "precedence",
        "announce_max = 7\nreply_budget = 300\nmax_watch = 9\n",
    );
    let f = f.to_str().unwrap();
    let got = printed(
        &["--config", f, "--max-watch", "11"],
        &[
            ("UDP_RELAY_REPLY_BUDGET", "400"),
            ("UDP_RELAY_MAX_WATCH", "10"),
        ],
    );
    let want = |v: &str, s: &str| (v.to_string(), s.to_string());
    assert_eq!(got["announce_max"], want("7", &format!("file {f} line 1")));
    assert_eq!(
        got["reply_budget"],
        want("400", "env UDP_RELAY_REPLY_BUDGET")
    );
    assert_eq!(got["max_watch"], want("11", "flag --max-watch"));
    assert_eq!(got["max_peers"], want("1000000", "default"));

    // The relay itself runs with the same values.
    let f = file(
        "precedence-run",
        "workers = 1\npeer_timeout = \"5s\"\nkeepalive_interval = \"1s\"\n",
    );
    let r = Relay::start_with(
        &["--config", f.to_str().unwrap(), "--workers", "2"],
        &[("UDP_RELAY_PEER_TIMEOUT", "7s")],
        "127.0.0.1",
    );
    let line = r
        .logs()
        .lines()
        .find(|l| l.contains("listening on "))
        .unwrap()
        .to_string();
    for field in ["workers=2 ", "peer_timeout_ms=7000 ", "keepalive_ms=1000"] {
        assert!(line.contains(field), "no {field:?} in {line:?}");
    }
    // The file can also be named by its variable.
    let f = file("by-variable", "max_channels = 5\n");
    let got = printed(&[], &[("UDP_RELAY_CONFIG", f.to_str().unwrap())]);
    assert_eq!(got["max_channels"].0, "5");
}

#[test]
fn switches_from_the_environment_take_one_and_zero_and_words() {
    for (v, want) in [
        ("1", "true"),
        ("yes", "true"),
        ("on", "true"),
        ("TRUE", "true"),
        ("0", "false"),
        ("no", "false"),
        ("off", "false"),
    ] {
        let got = printed(&[], &[("UDP_RELAY_NO_INTRODUCTIONS", v)]);
        assert_eq!(
            got["no_introductions"].0, want,
            "UDP_RELAY_NO_INTRODUCTIONS={v}"
        );
    }
    let f = file("switch", "pin_workers = true\ngso = false\n");
    let got = printed(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(got["pin_workers"].0, "true");
    assert_eq!(got["gso"].0, "\"off\"");
}

#[test]
fn every_bad_configuration_stops_start_up_naming_where_it_is() {
    let none: &[(&str, &str)] = &[];
    let unknown = file("unknown", "port = 1\n\nbogus_key = 2\n");
    let u = unknown.to_str().unwrap();
    refused(
        &["--config", u],
        none,
        &[u, "line 3", "unknown key `bogus_key`"],
    );
    let kebab = file("kebab", "peer-timeout = \"5s\"\n");
    let k = kebab.to_str().unwrap();
    refused(&["--config", k], none, &[k, "line 1", "`peer_timeout`"]);
    let bad = file("bad-value", "# limits\nmax_peers = 10\nsource_rate = -5\n");
    let b = bad.to_str().unwrap();
    refused(&["--config", b], none, &[b, "line 3", "source_rate", "-5"]);
    let dur = file("bad-duration", "peer_timeout = \"soon\"\n");
    let d = dur.to_str().unwrap();
    refused(
        &["--config", d],
        none,
        &[d, "line 1", "peer_timeout", "soon"],
    );
    let table = file("table", "[limits]\nmax_peers = 1\n");
    refused(
        &["--config", table.to_str().unwrap()],
        none,
        &["unknown key `limits`"],
    );
    let broken = file("unparsable", "port = 1\nmax_peers = \n");
    let p = broken.to_str().unwrap();
    refused(&["--config", p], none, &[p, "line 2"]);
    refused(
        &["--config", "/nonexistent/udp-relay.toml"],
        none,
        &["/nonexistent/udp-relay.toml", "cannot read"],
    );
    refused(
        &[],
        &[("UDP_RELAY_CONFIG", "/nonexistent/by-variable.toml")],
        &["/nonexistent/by-variable.toml"],
    );

    // A bad variable is named as the variable, not as the flag it stands for.
    for (var, value) in [
        ("UDP_RELAY_PORT", "abc"),
        ("UDP_RELAY_MAX_PEERS", "0"),
        ("UDP_RELAY_IO", "fast"),
        ("UDP_RELAY_NO_INTRODUCTIONS", "maybe"),
    ] {
        let (code, _, err) = run(&["check-config"], &[(var, value)]);
        assert_ne!(code, 0, "{var}={value} accepted");
        assert!(err.contains(var), "{var}={value}: {err}");
        let flag = format!(
            "'--{}",
            var["UDP_RELAY_".len()..].to_lowercase().replace('_', "-")
        );
        assert!(
            !err.contains(&flag),
            "{var}={value} named as the flag: {err}"
        );
    }
    refused(&["--port", "abc"], none, &["--port"]);
    refused(&["--max-peers", "0"], none, &["--max-peers"]);
}

#[test]
fn check_config_binds_nothing_and_fails_as_start_up_would() {
    // The port is taken: a relay could not start on it, but a check does not bind.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let f = file("check-ok", "max_peers = 10\n");
    let args = ["check-config", "--host", "127.0.0.1", "--port", &port];
    let (code, out, err) = run(
        &[&args[..], &["--config", f.to_str().unwrap()]].concat(),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration ok"), "{out}");
    let (code, _, err) = run(
        &[
            "check-config",
            "--peer-timeout",
            "1s",
            "--keepalive-interval",
            "2s",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("--keepalive-interval"), "{err}");
}

#[test]
fn print_config_output_is_a_configuration_file_giving_the_same_values() {
    let f = file(
        "round-trip-in",
        "announce_max = 3\nhost = \"::1\"\ngro = \"off\"\n",
    );
    let args = [
        "--config",
        f.to_str().unwrap(),
        "--peer-timeout",
        "90.5s",
        "--pin-workers",
    ];
    let env = [
        ("UDP_RELAY_METRICS_LISTEN", "127.0.0.1:9100"),
        ("UDP_RELAY_WORKERS", "3"),
    ];
    let first = printed(&args, &env);
    let (_, text, _) = run(&[&["print-config"][..], &args].concat(), &env);
    let again = file("round-trip-out", &text);
    let second = printed(&["--config", again.to_str().unwrap()], &[]);
    let values = |m: &BTreeMap<String, (String, String)>| {
        m.iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&first), values(&second));
    assert!(
        second.values().all(|(_, s)| s.starts_with("file ")),
        "{second:?}"
    );
}

#[test]
fn print_config_writes_numbers_toml_reads_back_whatever_their_spelling() {
    // 0300 is 300 to the flag's parser but no TOML integer; too large for TOML's i64 as well.
    for v in ["0300", "18446744073709551615"] {
        let (code, printed, err) = run(&["print-config"], &[("UDP_RELAY_SOURCE_RATE", v)]);
        assert_eq!(code, 0, "{err}");
        let f = file("print-spelling", &printed);
        let (code, _, err) = run(&["check-config", "--config", f.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{v}: the printed file is refused: {err}");
    }
}

#[test]
fn the_shipped_example_file_has_every_key_at_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/udp-relay.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let defaults = printed(&[], &[]);
    let shipped = printed(&["--config", path], &[]);
    let values = |m: &BTreeMap<String, (String, String)>| {
        m.iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&shipped), values(&defaults));
    // And the keys without a default (printed as unset) are there, commented.
    let (_, all, _) = run(&["print-config"], &[]);
    for line in all
        .lines()
        .filter(|l| !l.starts_with("# ") || l.contains(" is unset"))
    {
        let key = line.trim_start_matches("# ").split(' ').next().unwrap();
        let set = format!("\n{key} = ");
        let commented = format!("\n# {key} = ");
        assert!(
            text.contains(&set) || text.contains(&commented),
            "dist/udp-relay.toml lacks `{key}`"
        );
    }
    assert!(shipped.values().all(|(_, s)| s.starts_with("file ")));
}

#[test]
fn completions_and_man_page() {
    let (code, out, err) = run(&["completions", "bash"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("--peer-timeout") && out.contains("check-config"),
        "{out}"
    );
    let (code, _, err) = run(&["completions", "tcsh"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("tcsh"), "{err}");
    let (code, out, err) = run(&["man"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(".ie") || out.contains(".TH"), "{out}");
    assert!(out.contains("peer\\-timeout"), "{out}");
}

/// Sends `n` pings from `flooder` (far over a low `--source-rate`), then waits, through `barrier`
/// on the same single worker, until the relay has decided them all.
fn flood(r: &Relay, flooder: &UdpSocket, barrier: &Peer, n: usize) {
    for _ in 0..n {
        flooder.send_to(br#"{"type":"ping"}"#, r.addr).unwrap();
    }
    barrier.drain();
}

/// SIGHUP to the relay.
fn hangup(r: &Relay) {
    // SAFETY: signals our own child.
    unsafe { libc::kill(r.pid() as i32, libc::SIGHUP) };
}

#[test]
fn sighup_raises_a_rate_limit_under_load_losing_no_datagram_and_no_registration() {
    let f = file("reload-live", "source_rate = 50\n");
    let args = ["--config", f.to_str().unwrap(), "--workers", "1"];
    let mut r = Relay::start_with(&args, &[], "127.0.0.1");
    let (a, b) = (Peer::new(&r), Peer::new(&r));
    a.register("A");
    b.register("B");
    a.drain();
    b.drain();
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood(&r, &flooder, &a, 150);
    let refused_before = r.refused("rate_limited_source");
    assert!(refused_before > 0, "the low limit refused nothing");

    // A relay loop between two peers, paced under the low limit, runs across the reload.
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (done.clone(), stop.clone());
    let pair = std::thread::spawn(move || {
        let mut seq = 0u64;
        while !s.load(Ordering::Relaxed) {
            for (from, to, name) in [(&a, &b, "B"), (&b, &a, "A")] {
                let src = if name == "B" { "A" } else { "B" };
                from.send(from.authed(json!({
                    "type": "relay", "target": name, "source": src, "payload": {"seq": seq},
                })));
                let v = to.expect("relayed_packet");
                assert_eq!(v["payload"]["seq"], seq, "{v}");
            }
            seq += 1;
            d.store(seq, Ordering::Relaxed);
            // 40 datagrams a second from each peer, under the 50 of the limit.
            std::thread::sleep(Duration::from_millis(25));
        }
        (a, b, seq)
    });
    let wait_for = |n: u64| {
        let deadline = Instant::now() + TIMEOUT;
        while done.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the relay loop stalled");
            std::thread::yield_now();
        }
    };
    wait_for(10);
    std::fs::write(&f, "source_rate = 100000\n").unwrap();
    hangup(&r);
    let line = r.wait_log("reloaded");
    assert!(line.contains("source_rate 50 -> 100000"), "{line}");
    wait_for(done.load(Ordering::Relaxed) + 10);
    stop.store(true, Ordering::Relaxed);
    let (a, b, exchanged) = pair.join().expect("every datagram of the loop was relayed");
    println!("{exchanged} round trips across the reload, none lost");

    // The new limit is in force: the same flood is refused no more.
    flood(&r, &flooder, &a, 150);
    assert_eq!(r.refused("rate_limited_source"), refused_before);
    // And the registrations from before are still there.
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
    a.send(a.authed(json!({"type": "relay", "target": "B", "source": "A", "payload": "after"})));
    assert_eq!(b.expect("relayed_packet")["payload"], "after");
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_names_what_needs_a_restart_and_refuses_a_bad_file_keeping_the_old_values() {
    let f = file("reload-fixed", "source_rate = 50\n");
    let args = ["--config", f.to_str().unwrap(), "--workers", "1"];
    let mut r = Relay::start_with(&args, &[], "127.0.0.1");
    let a = Peer::new(&r);
    a.register("A");
    a.drain();

    std::fs::write(&f, "source_rate = 50\nmax_datagram = 1000\n").unwrap();
    hangup(&r);
    let warning = r.wait_log("take a restart");
    assert!(warning.contains("max_datagram 65507 -> 1000"), "{warning}");
    assert!(r.wait_log("reloaded").contains("no live setting changed"));

    std::fs::write(&f, "# raised\nsource_rate = -1\n").unwrap();
    hangup(&r);
    let refused = r.wait_log("reload refused");
    for want in [f.to_str().unwrap(), "line 2", "source_rate", "-1"] {
        assert!(refused.contains(want), "no {want:?} in {refused}");
    }
    // The old limit still holds, and the relay still serves.
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = r.refused("rate_limited_source");
    flood(&r, &flooder, &a, 150);
    assert!(r.refused("rate_limited_source") > before);
    assert_eq!(r.metric("udp_relay_peers_registered"), 1);
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn a_reload_that_changes_no_rate_gives_a_flood_no_fresh_burst() {
    let f = file("reload-noop", "source_rate = 50\n");
    let args = ["--config", f.to_str().unwrap(), "--workers", "1"];
    let mut r = Relay::start_with(&args, &[], "127.0.0.1");
    let barrier = Peer::new(&r);
    barrier.register("barrier");
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The first flood spends the source's burst; the next ones get only what refills.
    flood(&r, &flooder, &barrier, 1000);
    let admitted = |r: &Relay, flooder: &UdpSocket, barrier: &Peer| {
        let before = r.refused("rate_limited_source");
        flood(r, flooder, barrier, 1000);
        1000 - (r.refused("rate_limited_source") - before)
    };
    let spent = admitted(&r, &flooder, &barrier);
    std::fs::write(&f, "source_rate = 50\nlog_level = \"info\"\n").unwrap();
    hangup(&r);
    r.wait_log("reloaded");
    let after = admitted(&r, &flooder, &barrier);
    println!("admitted of 1,000 after the burst was spent: {spent}; after a reload: {after}");
    assert!(
        after < 50,
        "the reload refilled the burst: {after} admitted"
    );
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_raises_the_registration_rate_keeping_the_peers_registered() {
    let f = file("reload-registrations", "registration_rate = 1\n");
    let args = ["--config", f.to_str().unwrap(), "--workers", "1"];
    let mut r = Relay::start_with(&args, &[], "127.0.0.1");
    let barrier = Peer::new(&r);
    barrier.register("barrier");
    let _early = register_many(&r, &barrier, 0);
    let refused_before = r.refused("rate_limited_registrations");
    let peers_before = r.metric("udp_relay_peers_registered");
    assert!(refused_before > 0, "the low rate refused nothing");
    assert!(peers_before < 31, "{peers_before} registered");

    std::fs::write(&f, "registration_rate = 1000\n").unwrap();
    hangup(&r);
    let line = r.wait_log("reloaded");
    assert!(line.contains("registration_rate 1 -> 1000"), "{line}");
    let _late = register_many(&r, &barrier, 100);
    assert_eq!(r.refused("rate_limited_registrations"), refused_before);
    // The peers registered before the reload are all still there, beside the 30 new.
    assert_eq!(r.metric("udp_relay_peers_registered"), peers_before + 30);
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_changes_announce_max_so_that_joins_go_to_watchers_only() {
    let f = file("reload-announce", "announce_max = 100\n");
    let args = ["--config", f.to_str().unwrap(), "--workers", "1"];
    let mut r = Relay::start_with(&args, &[], "127.0.0.1");
    let (a, b) = (Peer::new(&r), Peer::new(&r));
    a.register("A");
    b.register("B");
    assert_eq!(a.expect("peer_joined")["peer_name"], "B");
    std::fs::write(&f, "announce_max = 1\n").unwrap();
    hangup(&r);
    let line = r.wait_log("reloaded");
    assert!(line.contains("announce_max 100 -> 1"), "{line}");
    // Beyond announce_max only watchers hear of a join: A, who watches nobody, hears nothing.
    let c = Peer::new(&r);
    c.register("C");
    a.expect_nothing();
    assert_eq!(r.metric("udp_relay_peers_registered"), 3);
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_lowers_max_peers_and_names_per_address_refusing_new_claims_only() {
    let f = file(
        "reload-bounds",
        "max_peers = 100\nmax_names_per_address = 8\n",
    );
    let args = ["--config", f.to_str().unwrap(), "--workers", "1"];
    let mut r = Relay::start_with(&args, &[], "127.0.0.1");
    assert_eq!(r.metric("udp_relay_max_peers"), 100);
    let (a, b) = (Peer::new(&r), Peer::new(&r));
    a.register("A");
    b.register("B");
    a.drain();
    // A second name at A's address, proven there as the others are (a full registry makes
    // room by displacing a registration that never proved itself).
    let (ack, _) = a.register_old("A2");
    a.send(json!({"type": "ping", "name": "A2", "session": ack["session"]}));
    a.expect("pong");
    a.drain();
    b.drain();

    // Lowered to what is held: three names, and one name an address.
    std::fs::write(&f, "max_peers = 3\nmax_names_per_address = 1\n").unwrap();
    hangup(&r);
    let line = r.wait_log("reloaded");
    for want in [
        "max_peers 100 -> 3",
        "max_names_per_address 8 -> 1",
        "max-peers=3 ",
        "max-names-per-address=1 ",
    ] {
        assert!(line.contains(want), "no {want:?} in {line}");
    }
    assert!(!r.logs().contains("take a restart"), "{}", r.logs());
    assert_eq!(r.metric("udp_relay_max_peers"), 3);

    // A new name is refused, the relay being full; so is B's move, with its session, to A's
    // address, which holds two names already.
    let c = Peer::new(&r);
    c.send(json!({"type": "register", "name": "C"}));
    c.expect("error");
    assert_eq!(r.refused("registry_full"), 1);
    a.send(json!({"type": "register", "name": "B", "session": b.session()}));
    a.expect("error");
    assert_eq!(r.refused("address_full"), 1);
    assert_eq!(r.metric("udp_relay_peers_registered"), 3);
    // The names held keep working: both refresh at A's address, and A still relays to B, whom
    // the refused move left where it was.
    a.register("A");
    a.register_old("A2");
    b.drain();
    a.send(a.authed(json!({"type": "relay", "target": "B", "source": "A", "payload": "kept"})));
    assert_eq!(b.expect("relayed_packet")["payload"], "kept");

    // Raised again, new names fit, at A's address too.
    std::fs::write(&f, "max_peers = 100\nmax_names_per_address = 8\n").unwrap();
    hangup(&r);
    r.wait_log("reloaded: max_peers 3 -> 100");
    assert_eq!(c.register("C").0["peer_name"], "C");
    a.drain();
    a.register_old("A3");
    assert_eq!(r.metric("udp_relay_peers_registered"), 5);
    assert_eq!(r.metric("udp_relay_max_peers"), 100);
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

/// Registers 30 names from 30 new peers, all on 127.0.0.1 (one host, one registration budget),
/// then waits through `barrier` until the relay has decided them all.
/// Registers 30 names from one source address (the registration rate's key).
fn register_many(r: &Relay, barrier: &Peer, from: usize) -> Peer {
    let p = Peer::bind(r.addr, "127.0.0.1:0");
    for i in 0..30 {
        p.send(json!({"type": "register", "name": format!("n{}", from + i)}));
    }
    barrier.drain();
    p
}

#[test]
fn sighup_changes_the_log_level() {
    let f = file("reload-log", "log_level = \"info\"\n");
    let mut r = Relay::start_with(&["--config", f.to_str().unwrap()], &[], "127.0.0.1");
    Peer::new(&r).register("quiet");
    std::fs::write(&f, "log_level = \"udp_relay=debug\"\n").unwrap();
    hangup(&r);
    let line = r.wait_log("reloaded");
    assert!(line.contains("log_level info -> udp_relay=debug"), "{line}");
    assert!(
        !r.logs().contains("name=quiet"),
        "a debug line before the reload"
    );
    Peer::new(&r).register("loud");
    r.wait_log("name=loud");
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn address_ranges_are_lists_checked_where_they_are_given_and_reloaded_live() {
    let none: &[(&str, &str)] = &[];
    refused(
        &["--allowed-peer-ip", "10.0.0.1/8"],
        none,
        &["--allowed-peer-ip", "10.0.0.0/8"],
    );
    refused(
        &["--denied-peer-ip", "1.2.3.0/24,bogus"],
        none,
        &["--denied-peer-ip", "bogus"],
    );
    refused(
        &[],
        &[("UDP_RELAY_DENIED_PEER_IP", "fd00::/129")],
        &["UDP_RELAY_DENIED_PEER_IP"],
    );
    let bad = file(
        "bad-range",
        "port = 1\nallowed_peer_ip = [\"10.0.0.0/8\", \"x\"]\n",
    );
    let b = bad.to_str().unwrap();
    refused(
        &["--config", b],
        none,
        &[b, "line 2", "allowed_peer_ip", "`x`"],
    );
    // Flags repeated or comma-separated, the environment's comma list, a file's array.
    let listed = printed(
        &[
            "--allowed-peer-ip",
            "10.0.0.0/8",
            "--allowed-peer-ip",
            "fd00::/8,192.168.0.0/16",
        ],
        &[("UDP_RELAY_DENIED_PEER_IP", "203.0.113.0/24,2001:db8::/32")],
    );
    let denied = "\"203.0.113.0/24,2001:db8::/32\"";
    assert_eq!(
        listed["allowed_peer_ip"].0,
        "\"10.0.0.0/8,fd00::/8,192.168.0.0/16\""
    );
    assert_eq!(listed["denied_peer_ip"].0, denied);
    let array = file(
        "range-array",
        "denied_peer_ip = [\"203.0.113.0/24\", \"2001:db8::/32\"]\nallowed_peer_ip = []\n",
    );
    let from_file = printed(&["--config", array.to_str().unwrap()], &[]);
    assert_eq!(from_file["denied_peer_ip"].0, denied);
    assert!(
        !from_file.contains_key("allowed_peer_ip"),
        "an empty list is none"
    );

    // Live: a reload that denies a peer's range refuses it from its next datagram on, and one
    // that allows it again serves it.
    let f = file("reload-ranges", "");
    let args = ["--config", f.to_str().unwrap(), "--workers", "2"];
    let mut r = Relay::start_with(&args, &[], "127.0.0.1");
    let p = Peer::bind(r.addr, "127.30.0.1:0");
    p.register("inside");
    std::fs::write(&f, "denied_peer_ip = \"127.30.0.0/16\"\n").unwrap();
    hangup(&r);
    assert!(r.wait_log("reloaded").contains("denied_peer_ip"));
    p.send(p.ping());
    let deadline = Instant::now() + TIMEOUT;
    while r.refused("denied_address") == 0 {
        assert!(Instant::now() < deadline, "the denied range was served");
        std::thread::yield_now();
    }
    std::fs::write(
        &f,
        "denied_peer_ip = \"127.30.0.0/16\"\nallowed_peer_ip = [\"127.30.0.1/32\"]\n",
    )
    .unwrap();
    hangup(&r);
    assert!(r.wait_log("reloaded").contains("allowed_peer_ip"));
    assert!(p.drain().is_empty(), "served again, and nothing was owed");
    assert_eq!(r.refused("denied_address"), 1);
}
