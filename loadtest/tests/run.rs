//! Drives the `loadtest` binary against a real relay (and the reflector) on loopback, and checks
//! that its reports are consistent and its failures say what went wrong.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use clap::Parser;
use loadtest::reflector::{self, Reflected};
use loadtest::report::Report;
use serde_json::Value;
use udp_relay::config::Args;
use udp_relay::server;

fn relay() -> server::Relay {
    let args = Args::parse_from([
        "udp-relay",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "1",
        // One host drives every virtual peer: the per-source and per-prefix limits would
        // measure themselves.
        "--source-rate",
        "0",
        "--source-bytes",
        "0",
        "--prefix-rate",
        "0",
        "--prefix-bytes",
        "0",
        "--registration-rate",
        "0",
        "--reply-credit",
        "0",
        "--reply-prefix-credit",
        "0",
        "--reply-global-credit",
        "0",
        "--fanout-allowance",
        "0",
        "--presence-rate",
        "0",
    ]);
    server::start(&args).expect("start relay")
}

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_json(args: &[&str]) -> Report {
    let dir = tempdir();
    let path = dir.join("report.json");
    let mut all = args.to_vec();
    let p = path.to_str().unwrap();
    all.extend(["--json", p]);
    let o = loadtest(&all);
    assert!(o.status.success(), "loadtest failed: {}", stderr(&o));
    let text = std::fs::read_to_string(&path).expect("report written");
    std::fs::remove_dir_all(&dir).ok();
    serde_json::from_str(&text).expect("report parses")
}

fn tempdir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "loadtest-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The invariants every report must hold, whatever the machine's speed.
fn check_consistent(r: &Report) {
    assert!(r.sent > 0, "nothing sent: {r:?}");
    assert_eq!(r.delivered + r.lost, r.sent, "{r:?}");
    assert_eq!(r.corrupt, 0, "payloads altered: {r:?}");
    assert!(r.delivered > 0, "nothing delivered: {r:?}");
    let l = &r.latency_us;
    for v in [l.p50, l.p90, l.p99, l.p999, l.max] {
        assert!(v.is_finite() && v > 0.0, "latency {v} in {r:?}");
    }
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
    assert!((0.0..=1.0).contains(&r.loss_ratio));
    assert!((r.loss_ratio - r.lost as f64 / r.sent as f64).abs() < 1e-9);
    let rate = r.delivered as f64 / r.seconds;
    assert!(
        (r.delivered_per_sec - rate).abs() < 1e-6 * rate.max(1.0),
        "{r:?}"
    );
    assert!(r.generator_cpu_us_per_datagram >= 0.0);
    assert!(r.datagram > r.payload);
}

#[test]
fn capacity_run_against_the_relay_is_consistent() {
    let relay = relay();
    let addr = relay.local_addr.to_string();
    let pid = std::process::id().to_string();
    let r = run_json(&[
        "run",
        "--relay",
        &addr,
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--pairs",
        "4",
        "--pid",
        &pid,
    ]);
    check_consistent(&r);
    assert_eq!(r.shape, "capacity");
    assert!(!r.echo);
    assert_eq!(r.pairs, 4);
    assert!(r.registrations_per_sec.is_some_and(|x| x > 0.0));
    assert!(r.target_cpu_us_per_datagram.is_some_and(|x| x > 0.0));
    relay.shutdown();
}

#[test]
fn channel_run_binds_channels_and_carries_frames() {
    let relay = relay();
    let addr = relay.local_addr.to_string();
    let r = run_json(&[
        "run",
        "--relay",
        &addr,
        "--channels",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--pairs",
        "4",
        "--payload",
        "100",
    ]);
    check_consistent(&r);
    assert!(r.channels && !r.echo);
    // A frame is its 6-byte header and the payload: no JSON around it.
    assert_eq!(r.datagram, 106);
    assert!(r.delivered > 0, "{r:?}");
    relay.shutdown();
}

#[test]
fn fixed_rate_run_offers_no_more_than_asked() {
    let relay = relay();
    let addr = relay.local_addr.to_string();
    let r = run_json(&[
        "run",
        "--relay",
        &addr,
        "--duration",
        "1",
        "--warmup",
        "0.1",
        "--rate",
        "2000",
        "--payload",
        "300",
    ]);
    check_consistent(&r);
    assert_eq!(r.shape, "rate");
    assert_eq!(r.offered_rate, Some(2000.0));
    assert_eq!(r.payload, 300);
    // Open loop: the window sees at most rate × duration, plus one batch of rounding.
    assert!(r.sent <= 2000 + 8, "sent {} at 2000/s for 1 s", r.sent);
    relay.shutdown();
}

type Reflector = (SocketAddr, Arc<AtomicBool>, thread::JoinHandle<Reflected>);

fn reflector() -> Reflector {
    reflector_gso(false)
}

/// A reflector on a thread; with `gso` it segments its returns. Joining says what it did.
fn reflector_gso(gso: bool) -> Reflector {
    let sock = reflector::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = thread::spawn(move || reflector::serve(sock, s, gso).unwrap());
    (addr, stop, h)
}

#[test]
fn echo_run_against_the_reflector_is_consistent() {
    let (addr, stop, h) = reflector();
    let r = run_json(&[
        "run",
        "--relay",
        &addr.to_string(),
        "--echo",
        "--duration",
        "1",
        "--warmup",
        "0.1",
    ]);
    check_consistent(&r);
    assert!(r.echo);
    assert_eq!(r.registrations_per_sec, None);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn the_segmenting_reflector_returns_every_datagram_whole() {
    let (addr, stop, h) = reflector_gso(true);
    let addr = addr.to_string();
    // Two pairs under a window of 64: bursts of 16 from each socket, which the reflector
    // returns as segmented sends. The window stays within any receive buffer, so that nothing
    // may be lost (segments too: JSON of 1,295 bytes, frames of 1,206, both below 1,452).
    for (payload, channels) in [("100", false), ("1200", false), ("1200", true)] {
        let mut args = vec![
            "run",
            "--relay",
            &addr,
            "--echo",
            "--pairs",
            "2",
            "--window",
            "64",
            "--payload",
            payload,
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ];
        if channels {
            args.push("--channels");
        }
        let r = run_json(&args);
        check_consistent(&r);
        assert_eq!((r.lost, r.corrupt, r.out_of_order), (0, 0, 0), "{r:?}");
        assert_eq!(r.payload, payload.parse::<usize>().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let done = h.join().unwrap();
    assert!(done.datagrams > 0);
    if done.gso_refused {
        println!("the kernel refused UDP_SEGMENT: every datagram came back one by one");
    } else {
        assert!(done.segmented_sends > 0, "nothing segmented: {done:?}");
    }
}

/// A run of 512 pairs (1,024 flows, more than the window of 256): every flow sends one datagram
/// a turn, at most the window is ever in flight, and every flow is heard from.
fn check_many_pairs(r: &Report) {
    check_consistent(r);
    assert_eq!((r.pairs, r.flows), (512, 1024), "{r:?}");
    assert_eq!(r.window, Some(256));
    assert!(
        r.max_in_flight > 0 && r.max_in_flight <= 256,
        "window exceeded: {r:?}"
    );
    assert_eq!(r.starved_flows, 0, "a flow never delivered: {r:?}");
    assert!(r.flow_delivered_min > 0 && r.flow_delivered_min <= r.flow_delivered_max);
    assert!(r.datagram >= 1200, "{r:?}");
}

#[test]
fn many_pairs_with_big_payloads_against_the_reflector() {
    let (addr, stop, h) = reflector();
    let r = run_json(&[
        "run",
        "--relay",
        &addr.to_string(),
        "--echo",
        "--pairs",
        "512",
        "--payload",
        "1200",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]);
    check_many_pairs(&r);
    assert!(r.echo);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn many_pairs_with_big_payloads_through_the_relay() {
    let relay = relay();
    let addr = relay.local_addr.to_string();
    for channels in [false, true] {
        let mut args = vec![
            "run",
            "--relay",
            &addr,
            "--pairs",
            "512",
            "--payload",
            "1200",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ];
        if channels {
            args.push("--channels");
        }
        let r = run_json(&args);
        check_many_pairs(&r);
        assert_eq!(r.channels, channels);
        if channels {
            assert_eq!(r.datagram, 1206, "6-byte header and the payload");
        }
    }
    relay.shutdown();
}

#[test]
fn interleaved_run_sends_round_robin_within_each_flows_share() {
    let relay = relay();
    let addr = relay.local_addr.to_string();
    let r = run_json(&[
        "run",
        "--relay",
        &addr,
        "--channels",
        "--interleave",
        "--pairs",
        "4",
        "--window",
        "64",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]);
    check_consistent(&r);
    assert!(r.interleave && r.channels);
    assert_eq!(r.flows, 8);
    assert!(r.max_in_flight <= 64, "{r:?}");
    assert_eq!(r.starved_flows, 0, "{r:?}");
    relay.shutdown();
}

#[test]
fn compare_runs_every_target_and_draws_the_chart() {
    let relay = relay();
    let (echo, stop, h) = reflector();
    let dir = tempdir();
    let chart = dir.join("compare.svg");
    let json = dir.join("compare.json");
    let o = loadtest(&[
        "compare",
        "--target",
        &format!("relay={}", relay.local_addr),
        "--target",
        &format!("floor={echo},echo"),
        "--rounds",
        "1",
        "--interleave",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--chart",
        chart.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("relay") && table.contains("floor"),
        "{table}"
    );
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (&c["interleave"], &c["window"]),
        (&Value::Bool(true), &Value::from(256))
    );
    let targets = c["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert_eq!(t["capacity_runs"].as_array().unwrap().len(), 1);
        assert_eq!(t["rate_runs"].as_array().unwrap().len(), 1);
        for run in t["capacity_runs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(t["rate_runs"].as_array().unwrap())
        {
            let r: Report = serde_json::from_value(run.clone()).unwrap();
            check_consistent(&r);
            assert!(r.interleave, "{r:?}");
        }
    }
    let rate = c["rate"].as_f64().unwrap();
    let slowest = targets
        .iter()
        .map(|t| t["delivered_per_sec"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!(
        (rate - slowest * 0.5).abs() < 1e-6 * rate,
        "rate {rate}, slowest {slowest}"
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("relay") && svg.contains("floor"));
    std::fs::remove_dir_all(&dir).ok();
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    relay.shutdown();
}

#[test]
fn an_unreachable_relay_is_named() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = loadtest(&["run", "--relay", &port.to_string(), "--duration", "0.2"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("unreachable") && e.contains(&port.to_string()),
        "{e}"
    );
}

#[test]
fn a_relay_that_never_acks_is_named() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let o = loadtest(&[
        "run",
        "--relay",
        &addr,
        "--duration",
        "0.2",
        "--register-timeout",
        "0.3",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("never acknowledged registration") && e.contains(&addr),
        "{e}"
    );
}

#[test]
fn a_reflector_port_in_use_is_named() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = loadtest(&["reflector", "--port", &port]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cannot listen on") && e.contains(&port), "{e}");
}

#[test]
fn beyond_the_fd_limit_says_which_limit_to_raise() {
    let o = loadtest(&["run", "--relay", "127.0.0.1:9", "--pairs", "100000000"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ulimit -n"), "{}", stderr(&o));
    let o = loadtest(&[
        "register",
        "--relay",
        "127.0.0.1:9",
        "--peers",
        "1000000",
        "--sockets",
        "1000000000",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ulimit -n"), "{}", stderr(&o));
}

#[test]
fn a_registration_storm_counts_every_peer() {
    let relay = relay();
    let addr = relay.local_addr.to_string();
    let pid = std::process::id().to_string();
    let dir = tempdir();
    let json = dir.join("storm.json");
    let o = loadtest(&[
        "register",
        "--relay",
        &addr,
        "--peers",
        "3000",
        "--sockets",
        "100",
        "--pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["peers"], 3000);
    assert!(r["registrations_per_sec"].as_f64().unwrap() > 0.0);
    assert!(r["rss_after"].as_u64().unwrap() > 0);
    assert_eq!(relay.shared.registry.len(), 3000);
    std::fs::remove_dir_all(&dir).ok();
    relay.shutdown();
}

/// A coturn `turnserver` on loopback with user `u:p` in realm `test`, stopped on drop.
struct Coturn {
    child: std::process::Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Starts coturn (one relay thread, loopback peers allowed, UDP only, `extra` flags) and waits
/// until it answers a STUN Binding request; `None`, having said so, where it is not installed.
fn coturn(test: &str, extra: &[&str]) -> Option<Coturn> {
    if Command::new("turnserver")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED {test}: turnserver not installed");
        return None;
    }
    // A port the kernel just handed out is free; were it taken in between, the next try
    // takes another.
    let mut last_log = String::new();
    for _ in 0..3 {
        let dir = tempdir();
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("turnserver.log")).unwrap();
        let port_arg = port.to_string();
        let pidfile = dir.join("turnserver.pid");
        let db = dir.join("turndb");
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
                "--listening-port",
                &port_arg,
                // Above the kernel's ephemeral ports, where the peers' sockets are.
                "--min-port",
                "61000",
                "--max-port",
                "65000",
                "--lt-cred-mech",
                "--user",
                "u:p",
                "--realm",
                "test",
                "--allow-loopback-peers",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--relay-threads",
                "1",
                "--log-file",
                "stdout",
                "--pidfile",
                pidfile.to_str().unwrap(),
                "--userdb",
                db.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start turnserver");
        let mut t = Coturn {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        if stun_answers(&mut t) {
            return Some(t);
        }
        last_log = std::fs::read_to_string(t.dir.join("turnserver.log")).unwrap_or_default();
    }
    panic!("turnserver never answered STUN on loopback:\n{last_log}");
}

/// Sends STUN Binding requests until one is answered, for 10 s at most, or the server exits.
fn stun_answers(t: &mut Coturn) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(t.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut req = Vec::new();
    relay_wire::stun::request(&mut req, &[9; 12], false);
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        if t.child.try_wait().unwrap().is_some() {
            return false;
        }
        let _ = s.send(&req);
        let answer = s.recv(&mut buf).map(|n| &buf[..n]);
        if answer.is_ok_and(|a| relay_wire::stun::mapped_address(a).is_some()) {
            return true;
        }
    }
    false
}

#[test]
fn coturn_carries_channel_data_from_allocation_to_allocation() {
    let test = "coturn_carries_channel_data_from_allocation_to_allocation";
    let Some(mut turn) = coturn(test, &[]) else {
        return;
    };
    let addr = turn.addr.to_string();
    let pid = turn.child.id().to_string();
    let r = run_json(&[
        "run",
        "--relay",
        &addr,
        "--turn",
        "u:p",
        "--pairs",
        "4",
        "--payload",
        "1200",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--pid",
        &pid,
    ]);
    check_consistent(&r);
    assert!(r.turn && !r.channels && !r.echo);
    // ChannelData: a 4-byte header and the payload.
    assert_eq!(r.datagram, 1204);
    assert_eq!(r.starved_flows, 0, "{r:?}");
    assert!(r.target_cpu_us_per_datagram.is_some_and(|c| c > 0.0));
    // Wrong credentials are named, not waited out.
    let o = loadtest(&[
        "run",
        "--relay",
        &addr,
        "--turn",
        "u:wrong",
        "--duration",
        "0.2",
        "--register-timeout",
        "5",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    // And beside the reflector in a comparison.
    let (echo, stop, h) = reflector();
    let dir = tempdir();
    let json = dir.join("compare.json");
    let o = loadtest(&[
        "compare",
        "--target",
        &format!("coturn={addr},turn=u:p,pid={pid}"),
        "--target",
        &format!("floor={echo},echo"),
        "--rounds",
        "1",
        "--pairs",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let t = &c["targets"][0];
    assert_eq!(
        (&t["name"], &t["turn"]),
        (&Value::from("coturn"), &Value::Bool(true))
    );
    for run in t["capacity_runs"].as_array().unwrap() {
        let r: Report = serde_json::from_value(run.clone()).unwrap();
        check_consistent(&r);
        assert!(r.turn);
    }
    std::fs::remove_dir_all(&dir).ok();
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(turn.child.try_wait().unwrap().is_none(), "turnserver died");
}

#[test]
fn coturn_sessions_are_refreshed_past_their_lifetime() {
    let test = "coturn_sessions_are_refreshed_past_their_lifetime";
    // Allocations, channels and permissions of 2 s, in a run of 3 s: without refreshes, the
    // last third would be lost.
    let short = [
        "--max-allocate-lifetime=2",
        "--channel-lifetime=2",
        "--permission-lifetime=2",
    ];
    let Some(turn) = coturn(test, &short) else {
        return;
    };
    let r = run_json(&[
        "run",
        "--relay",
        &turn.addr.to_string(),
        "--turn",
        "u:p",
        "--pairs",
        "2",
        "--rate",
        "2000",
        "--duration",
        "3",
        "--warmup",
        "0.2",
    ]);
    check_consistent(&r);
    assert!(r.turn_refreshes > 0 && r.turn_refused == 0, "{r:?}");
    assert!(r.loss_ratio < 0.05, "sessions lapsed: {r:?}");
}

/// A peer whose port an earlier run's allocation still holds (the kernel handed the port out
/// again; coturn answers 437 for a while even after a release) moves to a port of its own,
/// rather than failing the run.
#[test]
fn a_port_an_earlier_allocation_holds_is_left_for_another() {
    let test = "a_port_an_earlier_allocation_holds_is_left_for_another";
    let Some(turn) = coturn(test, &[]) else {
        return;
    };
    let creds = loadtest::turn::parse_credentials("u:p").unwrap();
    let socket = |port: u16| {
        let s = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        s.connect(turn.addr).unwrap();
        s
    };
    let timeout = std::time::Duration::from_secs(10);
    let mut first = [socket(0), socket(0)];
    let ports = first.each_ref().map(|s| s.local_addr().unwrap().port());
    loadtest::turn::setup(turn.addr, &mut first, &creds, timeout).unwrap();
    drop(first);
    let mut again = ports.map(socket);
    let sessions = loadtest::turn::setup(turn.addr, &mut again, &creds, timeout)
        .expect("allocated from other ports");
    assert_eq!(sessions.len(), 2);
    let now = again.each_ref().map(|s| s.local_addr().unwrap().port());
    assert!(
        now.iter().zip(&ports).all(|(a, b)| a != b),
        "{now:?} {ports:?}"
    );
}
