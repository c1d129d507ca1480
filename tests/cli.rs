//! The command line as an operator meets it: bad values refused at start-up with a message
//! naming the flag (or its `UDP_RELAY_…` variable), environment variables taking effect, a port
//! already in use, signals, worker counts and the old `--host 0.0.0.0 --port P` invocation.
//!
//! Every wait is on an event (a log line, process exit, a datagram) bounded by [`TIMEOUT`].

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_udp-relay");

/// How long a signalled relay may take to exit.
const STOP_WITHIN: Duration = Duration::from_secs(1);

/// How long a relay that cannot start may take to say so and exit.
const FAIL_WITHIN: Duration = Duration::from_secs(2);

/// The relay binary run directly, for start-ups the harness cannot express (failures, no
/// `--port 0`, JSON logs). The environment is cleaned of `UDP_RELAY_*` and `RUST_LOG`.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything read from stdout and stderr so far.
    text: String,
    spawned: Instant,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UDP_RELAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd.spawn().expect("start udp-relay");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines,
            text: String::new(),
            spawned,
        }
    }

    /// The next line of output, or `None` once both streams are closed (the process exited).
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.text.push_str(&line);
                self.text.push('\n');
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "udp-relay neither wrote nor exited within {TIMEOUT:?}; output:\n{}",
                self.text
            ),
        }
    }

    /// Waits for a line containing `needle`.
    fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.next_line(deadline) {
                Some(line) if line.contains(needle) => return line,
                Some(_) => {}
                None => panic!(
                    "udp-relay exited ({:?}) before writing {needle:?}; output:\n{}",
                    self.child.wait(),
                    self.text
                ),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, not yet reaped, child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits (up to [`TIMEOUT`]) for the process to exit; returns its status, how long the wait
    /// took, and reads the rest of its output into `text`.
    fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t.elapsed() < TIMEOUT,
                "udp-relay did not exit within {TIMEOUT:?}; output:\n{}",
                self.text
            );
            thread::sleep(Duration::from_millis(1));
        };
        let took = t.elapsed();
        let deadline = Instant::now() + TIMEOUT;
        while self.next_line(deadline).is_some() {}
        (status, took)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a start-up went.
enum Start {
    /// The process exited without ever listening.
    Exited {
        status: ExitStatus,
        output: String,
        took: Duration,
    },
    /// It logged `listening on` (and has been killed since).
    Listened { output: String },
}

/// Runs the relay until it either exits or starts listening.
fn try_start(args: &[&str], env: &[(&str, &str)]) -> Start {
    let mut p = Proc::spawn(args, env);
    let deadline = Instant::now() + TIMEOUT;
    while let Some(line) = p.next_line(deadline) {
        if line.contains("listening on ") {
            return Start::Listened {
                output: p.text.clone(),
            };
        }
    }
    let (status, _) = p.wait_exit();
    Start::Exited {
        status,
        took: p.spawned.elapsed(),
        output: p.text.clone(),
    }
}

/// `args` plus `--host 127.0.0.1 --port 0` where neither the flag nor its variable is given,
/// so that a wrongly accepted value never binds the default `0.0.0.0:8000`.
fn safe_args<'a>(args: &[&'a str], env: &[(&str, &str)]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    for (flag, var, value) in [
        ("--host", "UDP_RELAY_HOST", "127.0.0.1"),
        ("--port", "UDP_RELAY_PORT", "0"),
    ] {
        if !args.iter().any(|a| a.starts_with(flag)) && !env.iter().any(|(k, _)| *k == var) {
            all.extend([flag, value]);
        }
    }
    all
}

/// Checks that start-up is refused: a normal non-zero exit, promptly, never listening, with
/// output naming one of `names`. Returns what went wrong instead.
fn refused(args: &[&str], env: &[(&str, &str)], names: &[&str]) -> Result<(), String> {
    let case = format!("env {env:?} args {args:?}");
    match try_start(&safe_args(args, env), env) {
        Start::Listened { output } => Err(format!("{case}: accepted, relay started:\n{output}")),
        Start::Exited {
            status,
            output,
            took,
        } => {
            if status.success() || status.code().is_none() {
                Err(format!(
                    "{case}: exit status {status}, want non-zero:\n{output}"
                ))
            } else if !names.iter().any(|n| output.contains(n)) {
                Err(format!(
                    "{case}: message names none of {names:?}:\n{output}"
                ))
            } else if took > FAIL_WITHIN {
                Err(format!("{case}: took {took:?} to fail"))
            } else {
                Ok(())
            }
        }
    }
}

/// A bad start-up: arguments, environment, and the names of which the message must give one.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

/// Runs every case and fails once, listing every case that went wrong.
fn all_refused(cases: &[Case]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(args, env, names)| refused(args, env, names).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad start-ups went wrong:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn bad_flag_values_stop_start_up_naming_the_flag() {
    let none: &[(&str, &str)] = &[];
    all_refused(&[
        (&["--port", "70000"], none, &["--port"]),
        (&["--port", "abc"], none, &["--port"]),
        (&["--port=-1"], none, &["--port"]),
        (&["--port"], none, &["--port"]),
        (&["--workers", "0"], none, &["--workers"]),
        (&["--workers", "1025"], none, &["--workers"]),
        (&["--workers", "two"], none, &["--workers"]),
        (&["--peer-timeout", "bogus"], none, &["--peer-timeout"]),
        (&["--peer-timeout", "0"], none, &["--peer-timeout"]),
        (&["--peer-timeout=-5s"], none, &["--peer-timeout"]),
        (
            &["--keepalive-interval", "soon"],
            none,
            &["--keepalive-interval"],
        ),
        // Equal to the default peer timeout (60 s), then longer than an explicit one.
        (
            &["--keepalive-interval", "60s"],
            none,
            &["--keepalive-interval"],
        ),
        (
            &["--keepalive-interval", "5s", "--peer-timeout", "2s"],
            none,
            &["--keepalive-interval"],
        ),
        (&["--peer-timeout", "10s"], none, &["--keepalive-interval"]),
        (&["--announce-max=-1"], none, &["--announce-max"]),
        (&["--announce-max", "many"], none, &["--announce-max"]),
        (&["--max-datagram", "0"], none, &["--max-datagram"]),
        (&["--max-datagram", "63"], none, &["--max-datagram"]),
        (&["--max-datagram", "65508"], none, &["--max-datagram"]),
        (&["--max-datagram", "1000000"], none, &["--max-datagram"]),
        (&["--log-format", "xml"], none, &["--log-format"]),
        (&["--host", "not-an-ip"], none, &["--host"]),
        (&["--host", "127.0.0.1:80"], none, &["--host"]),
        (
            &["--metrics-listen", "garbage"],
            none,
            &["--metrics-listen"],
        ),
        (
            &["--metrics-listen", "127.0.0.1"],
            none,
            &["--metrics-listen"],
        ),
        (&["--reply-budget", "100"], none, &["--reply-budget"]),
        (&["--max-peers", "0"], none, &["--max-peers"]),
        (&["--error-rate", "0"], none, &["--error-rate"]),
        (&["--bogus-flag"], none, &["--bogus-flag"]),
        (&["--bogus-flag", "1"], none, &["--bogus-flag"]),
    ]);
}

/// The cluster's flags: each needs the others, and each bad value names its flag (a key file
/// too short or missing, a mesh address nobody can send to, a node id with a space).
#[test]
fn bad_cluster_flags_stop_start_up_naming_the_flag() {
    let none: &[(&str, &str)] = &[];
    let dir = std::env::temp_dir();
    let short = dir.join(format!("udp-relay-short-{}.key", std::process::id()));
    std::fs::write(&short, b"too short").unwrap();
    let long = dir.join(format!("udp-relay-long-{}.key", std::process::id()));
    std::fs::write(&long, [7u8; 32]).unwrap();
    let (short, long) = (short.to_str().unwrap(), long.to_str().unwrap());
    let redis = "redis://127.0.0.1:1";
    let with = |extra: &'static [&'static str]| -> Vec<&str> {
        let mut a = vec![
            "--cluster",
            redis,
            "--node-id",
            "a",
            "--mesh-listen",
            "127.0.0.1:0",
        ];
        a.extend_from_slice(extra);
        a
    };
    let (no_key, short_key) = (with(&[]), with(&["--mesh-key-file"]));
    let short_key: Vec<&str> = short_key.into_iter().chain([short]).collect();
    let missing: Vec<&str> = with(&["--mesh-key-file", "/nonexistent/mesh.key"]);
    let all_refused_owned = |cases: &[(Vec<&str>, &[&str])]| {
        let cases: Vec<Case> = cases
            .iter()
            .map(|(a, names)| (a.as_slice(), none, *names))
            .collect();
        all_refused(&cases);
    };
    all_refused_owned(&[
        (vec!["--cluster", "not a url"], &["--cluster"]),
        (vec!["--cluster", redis], &["--node-id"]),
        (vec!["--node-id", "a"], &["--node-id"]),
        (vec!["--mesh-key-file", long], &["--mesh-key-file"]),
        (vec!["--node-id", "a b"], &["--node-id"]),
        (vec!["--mesh-listen", "0.0.0.0:8001"], &["--mesh-listen"]),
        (vec!["--node-ttl", "100ms"], &["--node-ttl"]),
        (no_key, &["--mesh-key-file"]),
        (short_key, &["--mesh-key-file"]),
        (missing, &["--mesh-key-file"]),
    ]);
}

/// `--flag -1` (a separate argument starting with `-`) must be refused naming the flag, as
/// `--flag=-1` and `UDP_RELAY_FLAG=-1` are.
#[test]
fn negative_number_as_separate_argument_names_the_flag() {
    let none: &[(&str, &str)] = &[];
    all_refused(&[
        (&["--announce-max", "-1"], none, &["--announce-max"]),
        (&["--port", "-1"], none, &["--port"]),
        (&["--workers", "-1"], none, &["--workers"]),
    ]);
}

#[test]
fn bad_environment_values_stop_start_up_naming_the_variable_or_flag() {
    all_refused(&[
        (
            &[],
            &[("UDP_RELAY_PORT", "abc")],
            &["UDP_RELAY_PORT", "--port"],
        ),
        (
            &[],
            &[("UDP_RELAY_PORT", "70000")],
            &["UDP_RELAY_PORT", "--port"],
        ),
        (
            &[],
            &[("UDP_RELAY_WORKERS", "0")],
            &["UDP_RELAY_WORKERS", "--workers"],
        ),
        (
            &[],
            &[("UDP_RELAY_PEER_TIMEOUT", "bogus")],
            &["UDP_RELAY_PEER_TIMEOUT", "--peer-timeout"],
        ),
        (
            &[],
            &[("UDP_RELAY_KEEPALIVE_INTERVAL", "90s")],
            &["UDP_RELAY_KEEPALIVE_INTERVAL", "--keepalive-interval"],
        ),
        (
            &[],
            &[
                ("UDP_RELAY_PEER_TIMEOUT", "2s"),
                ("UDP_RELAY_KEEPALIVE_INTERVAL", "2s"),
            ],
            &["UDP_RELAY_KEEPALIVE_INTERVAL", "--keepalive-interval"],
        ),
        (
            &[],
            &[("UDP_RELAY_ANNOUNCE_MAX", "-1")],
            &["UDP_RELAY_ANNOUNCE_MAX", "--announce-max"],
        ),
        (
            &[],
            &[("UDP_RELAY_MAX_DATAGRAM", "0")],
            &["UDP_RELAY_MAX_DATAGRAM", "--max-datagram"],
        ),
        (
            &[],
            &[("UDP_RELAY_MAX_DATAGRAM", "65508")],
            &["UDP_RELAY_MAX_DATAGRAM", "--max-datagram"],
        ),
        (
            &[],
            &[("UDP_RELAY_LOG_FORMAT", "xml")],
            &["UDP_RELAY_LOG_FORMAT", "--log-format"],
        ),
        (
            &[],
            &[("UDP_RELAY_HOST", "not-an-ip")],
            &["UDP_RELAY_HOST", "--host"],
        ),
        (
            &[],
            &[("UDP_RELAY_METRICS_LISTEN", "garbage")],
            &["UDP_RELAY_METRICS_LISTEN", "--metrics-listen"],
        ),
        (
            &[],
            &[("UDP_RELAY_NO_INTRODUCTIONS", "maybe")],
            &["UDP_RELAY_NO_INTRODUCTIONS", "--no-introductions"],
        ),
        (
            &[],
            &[("UDP_RELAY_ERROR_RATE", "0")],
            &["UDP_RELAY_ERROR_RATE", "--error-rate"],
        ),
    ]);
}

/// The `listening on` line the harness already consumed.
fn listening_line(r: &Relay) -> String {
    r.logs()
        .lines()
        .find(|l| l.contains("listening on "))
        .expect("listening line")
        .to_string()
}

#[test]
fn environment_sets_workers_and_timings() {
    let mut r = Relay::start_with(
        &[],
        &[
            ("RUST_LOG", "debug"),
            ("UDP_RELAY_WORKERS", "3"),
            ("UDP_RELAY_PEER_TIMEOUT", "800ms"),
            ("UDP_RELAY_KEEPALIVE_INTERVAL", "0.1s"),
        ],
        "127.0.0.1",
    );
    let line = listening_line(&r);
    for field in ["workers=3 ", "peer_timeout_ms=800 ", "keepalive_ms=100"] {
        assert!(line.contains(field), "no {field:?} in {line:?}");
    }
    // The defaults (10 s, 60 s) would not show either within the test's timeout.
    let a = Peer::new(&r);
    a.register("Alice");
    let ka = a.expect("server_keepalive");
    assert_eq!(ka["peer_name"], "Alice");
    r.wait_log("reaped silent peers");
    assert_eq!(r.metric("udp_relay_peers_registered"), 0);
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn environment_sets_limits_and_switches() {
    let mut r = Relay::start_with(
        &[],
        &[
            ("RUST_LOG", "debug"),
            // One worker serves everyone in arrival order, so `drain` also proves absences.
            ("UDP_RELAY_WORKERS", "1"),
            ("UDP_RELAY_MAX_DATAGRAM", "100"),
            ("UDP_RELAY_NO_INTRODUCTIONS", "true"),
            ("UDP_RELAY_ANNOUNCE_MAX", "1"),
        ],
        "127.0.0.1",
    );
    let a = Peer::new(&r);
    let b = Peer::new(&r);
    a.register("Alice");
    b.register("Bob");
    // Two names exceed --announce-max 1: Alice, who watches nobody, hears nothing of Bob.
    a.expect_nothing();

    // Over --max-datagram 100.
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(80));
    assert!(big.len() > 100, "{}", big.len());
    a.send_raw(big.as_bytes());
    let got = a.drain();
    assert!(
        got.iter()
            .any(|v| v["type"] == "error" && v["code"] == "too_large"),
        "{got:?}"
    );
    assert_eq!(r.refused("too_large"), 1);

    // --no-introductions: connect is refused (padded so the error reply fits within it).
    let pad = "x".repeat(30);
    a.send(json!({"type": "connect", "target": "Bob", "name": "Alice", "pad": pad}));
    let e = a.expect("error");
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(r.refused("disabled"), 1, "{e}");
    b.expect_nothing();
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

/// No flags at all: address, port, metrics and log format all from the environment.
#[test]
fn environment_alone_configures_a_working_relay() {
    let mut p = Proc::spawn(
        &[],
        &[
            ("UDP_RELAY_HOST", "127.0.0.1"),
            ("UDP_RELAY_PORT", "0"),
            ("UDP_RELAY_METRICS_LISTEN", "127.0.0.1:0"),
            ("UDP_RELAY_LOG_FORMAT", "json"),
            ("UDP_RELAY_WORKERS", "2"),
        ],
    );
    let message = |line: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let metrics = message(&p.wait_log("metrics on http://"));
    let metrics: SocketAddr = metrics
        .trim_start_matches("metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let listening_line = p.wait_log("listening on ");
    let listening: serde_json::Value = serde_json::from_str(&listening_line).unwrap();
    assert_eq!(listening["fields"]["workers"], 2, "{listening}");
    let addr: SocketAddr = message(&listening_line)
        .trim_start_matches("listening on ")
        .parse()
        .unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 8000, "UDP_RELAY_PORT=0 ignored");

    let a = Peer::bind(addr, "127.0.0.1:0");
    let (ack, _) = a.register("Alice");
    assert_eq!(ack["your_address"], a.addr().to_string());

    let mut s = TcpStream::connect(metrics).expect("metrics endpoint");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    assert!(page.contains("\nudp_relay_peers_registered 1\n"), "{page}");

    p.signal(libc::SIGTERM);
    let (status, took) = p.wait_exit();
    assert!(status.success(), "{status}\n{}", p.text);
    assert!(took < STOP_WITHIN, "{took:?}");
    for line in p.text.lines() {
        message(line);
    }
}

/// The relay asked for `host:port` while `port` is held fails promptly naming the address.
fn refused_in_use(host: &str, port: u16) {
    let want = format!("{host}:{port}");
    match try_start(&["--host", host, "--port", &port.to_string()], &[]) {
        Start::Listened { output } => panic!("started on a port in use:\n{output}"),
        Start::Exited {
            status,
            output,
            took,
        } => {
            assert!(!status.success() && status.code().is_some(), "{status}");
            assert!(output.contains(&want), "{want} not named:\n{output}");
            assert!(
                output.to_lowercase().contains("in use"),
                "no 'in use':\n{output}"
            );
            assert!(took < FAIL_WITHIN, "took {took:?}");
        }
    }
}

#[test]
fn port_in_use_fails_promptly_naming_the_address() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    refused_in_use("127.0.0.1", port);
    // The wildcard overlaps the held loopback address.
    refused_in_use("0.0.0.0", port);
    drop(holder);
}

#[test]
fn second_relay_on_a_running_relays_port_is_refused() {
    let mut r = Relay::start(&["--workers", "2"]);
    refused_in_use("127.0.0.1", r.addr.port());
    // The first relay still has its port to itself.
    let a = Peer::new(&r);
    a.register("Alice");
    a.expect_nothing();
    let (status, _) = r.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn metrics_address_in_use_is_refused_naming_it() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    match try_start(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-listen",
            &addr,
        ],
        &[],
    ) {
        Start::Listened { output } => panic!("started with metrics address in use:\n{output}"),
        Start::Exited { status, output, .. } => {
            assert!(!status.success() && status.code().is_some(), "{status}");
            assert!(
                output.contains("--metrics-listen") && output.contains(&addr),
                "{output}"
            );
        }
    }
}

fn stops_when_idle(signal: i32) {
    let mut r = Relay::start(&[]);
    let a = Peer::new(&r);
    a.register("Alice");
    a.expect_nothing();
    let (status, took) = r.stop_with(signal);
    assert_eq!(status.code(), Some(0), "{status}\n{}", r.logs());
    assert!(took < STOP_WITHIN, "took {took:?}");
    r.wait_log("stopped");
}

#[test]
fn sigterm_exits_zero_promptly() {
    stops_when_idle(libc::SIGTERM);
}

#[test]
fn sigint_exits_zero_promptly() {
    stops_when_idle(libc::SIGINT);
}

/// Two senders relay to a receiver as fast as they can while the relay is signalled.
fn stops_under_traffic(signal: i32) {
    let mut r = Relay::start(&["--workers", "4"]);
    let sink = Peer::new(&r);
    sink.register("Sink");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..2 {
        let p = Peer::new(&r);
        let name = format!("Sender{i}");
        p.register(&name);
        let stop = stop.clone();
        senders.push(thread::spawn(move || {
            let d = json!({"type": "relay", "target": "Sink", "source": name, "payload": "x"})
                .to_string();
            while !stop.load(Ordering::Relaxed) {
                let _ = p.sock.send_to(d.as_bytes(), p.relay);
            }
        }));
    }
    // Traffic is flowing once the sink has relayed packets from both senders.
    let mut from = HashSet::new();
    while from.len() < 2 {
        let v = sink.recv();
        if v["type"] == "relayed_packet" {
            from.insert(v["from_peer"].as_str().unwrap().to_string());
        }
    }
    let (status, took) = r.stop_with(signal);
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(status.code(), Some(0), "{status}\n{}", r.logs());
    assert!(took < STOP_WITHIN, "took {took:?}");
    r.wait_log("stopped");
}

#[test]
fn sigterm_under_traffic_exits_zero_promptly() {
    stops_under_traffic(libc::SIGTERM);
}

#[test]
fn sigint_under_traffic_exits_zero_promptly() {
    stops_under_traffic(libc::SIGINT);
}

/// Six peers register, then each relays to the next; with several workers the peers' sockets
/// spread over them, so packets cross workers.
fn relays_among(peers: &[Peer]) {
    let names: Vec<String> = (0..peers.len()).map(|i| format!("P{i}")).collect();
    for (p, name) in peers.iter().zip(&names) {
        let (ack, _) = p.register(name);
        assert_eq!(ack["your_address"], p.addr().to_string());
    }
    // Each peer hears of everyone who registered after it. Announcements come from the
    // newcomer's worker, so they may land after the peer's own `pong`: wait for each by name.
    for (i, p) in peers.iter().enumerate() {
        let mut want: HashSet<&str> = names[i + 1..].iter().map(String::as_str).collect();
        while !want.is_empty() {
            let v = p.expect("peer_joined");
            let name = v["peer_name"].as_str().unwrap();
            assert!(
                want.remove(name),
                "{} heard of {name} twice or unexpectedly: {v}",
                names[i]
            );
        }
    }
    for (i, p) in peers.iter().enumerate() {
        let to = (i + 1) % peers.len();
        p.send(json!({
            "type": "relay", "target": names[to], "source": names[i],
            "payload": {"seq": i, "text": "hello"},
        }));
    }
    for (i, p) in peers.iter().enumerate() {
        let from = (i + peers.len() - 1) % peers.len();
        let v = p.expect("relayed_packet");
        assert_eq!(v["from_peer"], names[from], "{v}");
        assert_eq!(v["via_relay"], true, "{v}");
        assert_eq!(v["payload"], json!({"seq": from, "text": "hello"}), "{v}");
        p.expect_nothing();
    }
}

fn serves_with_workers(n: &str) {
    let mut r = Relay::start(&["--workers", n]);
    let line = listening_line(&r);
    assert!(line.contains(&format!("workers={n} ")), "{line}");
    // Each on a network of its own, as on the internet (peers behind one address hear of each
    // other's joins as their budget allows: see the protocol tests).
    let peers: Vec<Peer> = (0..6)
        .map(|i| Peer::bind(r.addr, &format!("127.0.{}.1:0", 10 + i)))
        .collect();
    relays_among(&peers);
    assert_eq!(r.metric("udp_relay_relay_messages_forwarded_total"), 6);
    let (status, took) = r.stop();
    assert!(status.success(), "{status}");
    assert!(took < STOP_WITHIN, "took {took:?}");
}

#[test]
fn one_worker_serves_peers() {
    serves_with_workers("1");
}

#[test]
fn four_workers_serve_peers() {
    serves_with_workers("4");
}

/// The invocation deployments have always used: `udp-relay --host 0.0.0.0 --port P`.
#[test]
fn old_command_line_serves_loopback_peers() {
    let mut attempts = Vec::new();
    let (mut p, port) = loop {
        assert!(attempts.len() < 10, "no free port: {attempts:#?}");
        let port = {
            let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut p = Proc::spawn(&["--host", "0.0.0.0", "--port", &port.to_string()], &[]);
        let deadline = Instant::now() + TIMEOUT;
        let mut listening = None;
        while let Some(line) = p.next_line(deadline) {
            if line.contains("listening on ") {
                listening = Some(line);
                break;
            }
        }
        match listening {
            Some(line) => {
                assert!(
                    line.contains(&format!("listening on 0.0.0.0:{port} ")),
                    "{line}"
                );
                break (p, port);
            }
            None => {
                let (status, _) = p.wait_exit();
                // Someone took the port between the probe and the relay: try another.
                assert!(p.text.contains("in use"), "{status}\n{}", p.text);
                attempts.push(p.text.clone());
            }
        }
    };
    let relay: SocketAddr = ([127, 0, 0, 1], port).into();
    let peers: Vec<Peer> = (0..2).map(|_| Peer::bind(relay, "127.0.0.1:0")).collect();
    relays_among(&peers);
    p.signal(libc::SIGTERM);
    let (status, took) = p.wait_exit();
    assert!(status.success(), "{status}\n{}", p.text);
    assert!(took < STOP_WITHIN, "took {took:?}");
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "-h"] {
        let mut p = Proc::spawn(&[flag], &[]);
        let (status, _) = p.wait_exit();
        assert!(status.success(), "{flag}: {status}\n{}", p.text);
        assert!(p.text.contains("Usage: udp-relay"), "{}", p.text);
        for f in [
            "--host",
            "--port",
            "--workers",
            "--peer-timeout",
            "--metrics-listen",
        ] {
            assert!(p.text.contains(f), "{flag} does not list {f}:\n{}", p.text);
        }
    }
    // The long help also gives each flag's variable.
    let mut p = Proc::spawn(&["--help"], &[]);
    p.wait_exit();
    assert!(p.text.contains("UDP_RELAY_PEER_TIMEOUT"), "{}", p.text);

    for flag in ["--version", "-V"] {
        let mut p = Proc::spawn(&[flag], &[]);
        let (status, _) = p.wait_exit();
        assert!(status.success(), "{flag}: {status}\n{}", p.text);
        let want = format!("udp-relay {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(p.text.trim(), want);
    }
}

#[test]
fn datagrams_the_kernel_drops_for_a_full_queue_are_counted_per_worker() {
    let r = Relay::start(&["--workers", "1"]);
    let p = Peer::new(&r);
    p.register("watcher");
    let before = r.metric("udp_relay_receive_queue_drops_total{worker=\"0\"}");
    // A stopped relay reads nothing: its socket's queue fills and the kernel drops the rest.
    // SAFETY: signals our own child.
    unsafe { libc::kill(r.pid() as i32, libc::SIGSTOP) };
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20_000 {
        let _ = s.send_to(&[b' '; 200], r.addr);
    }
    // SAFETY: as above.
    unsafe { libc::kill(r.pid() as i32, libc::SIGCONT) };
    // The kernel reports its count with each datagram it delivers after the drops.
    let deadline = Instant::now() + TIMEOUT;
    p.sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let drops = loop {
        // The first pings may find the queue still full: each is sent again until one is
        // answered (the answer comes after the queue's datagrams were handled).
        p.send(p.ping());
        let mut buf = [0u8; 2048];
        while let Ok(n) = p.sock.recv(&mut buf) {
            if buf[..n].windows(6).any(|w| w == b"\"pong\"") {
                break;
            }
        }
        let n = r.metric("udp_relay_receive_queue_drops_total{worker=\"0\"}");
        if n > before {
            break n - before;
        }
        assert!(Instant::now() < deadline, "no drop counted");
    };
    println!("20,000 datagrams to a stopped relay: {drops} dropped by the kernel, counted");
    assert!(drops < 20_000);
    assert!(
        r.metrics_text()
            .contains("udp_relay_send_errors_total{worker=\"reaper\"}")
    );
}
