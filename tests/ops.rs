//! What an operator reads in the log: the start-up line, the warning when the kernel caps the
//! socket buffers, and the rate-limited warning when a limit starts refusing traffic.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;

use common::{Peer, Relay, TIMEOUT};
use serde_json::json;

/// The line the harness waited for.
fn listening_line(r: &Relay) -> String {
    r.logs()
        .lines()
        .find(|l| l.contains("listening on "))
        .expect("listening line")
        .to_string()
}

#[test]
fn the_start_up_line_says_version_backend_and_why_auth_and_limits() {
    let r = Relay::start(&[
        "--io",
        "auto",
        "--workers",
        "2",
        "--auth",
        "signed",
        "--source-rate",
        "0",
        "--max-peers",
        "777",
    ]);
    let line = listening_line(&r);
    for field in [
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))[..],
        "workers=2",
        "backend=\"mmsg\"",
        "backend_reason=\"recvmmsg/sendmmsg measured faster",
        "auth=\"signed\"",
        "gso=\"",
        "gro=\"",
        "limits=source-rate=off source-bytes=8000000 ",
        " max-peers=777 ",
        " max-channels-total=262144",
    ] {
        assert!(line.contains(field), "no {field:?} in {line}");
    }
    let r = Relay::start(&["--io", "mmsg"]);
    let line = listening_line(&r);
    assert!(
        line.contains("backend_reason=\"asked for with --io\""),
        "{line}"
    );
    assert!(line.contains("auth=\"open\""), "{line}");
}

#[test]
fn a_capped_socket_buffer_is_warned_of_naming_its_sysctl() {
    let r = Relay::start(&[]);
    let logs = r.logs();
    for (sysctl, file) in [
        ("net.core.rmem_max", "/proc/sys/net/core/rmem_max"),
        ("net.core.wmem_max", "/proc/sys/net/core/wmem_max"),
    ] {
        let max: usize = std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let warned = logs
            .lines()
            .find(|l| l.contains("capped a socket buffer") && l.contains(sysctl));
        // The kernel caps what it grants at its maximum: warned exactly when that is below
        // the 4 MiB asked for.
        let capped = max < relay_udp::SOCKET_BUFFER;
        assert_eq!(warned.is_some(), capped, "{sysctl} = {max}; logs:\n{logs}");
        if let Some(w) = warned {
            assert!(w.contains(&format!("granted={max}")), "{w}");
            assert!(
                w.contains(&format!("raise {sysctl} to at least 4194304")),
                "{w}"
            );
        }
    }
}

#[test]
fn a_limit_refusing_traffic_is_warned_of_once_with_its_count_and_flags() {
    // Sweeps every 50 ms: the warning comes from the reaper's sweep.
    let mut r = Relay::start(&[
        "--source-rate",
        "1",
        "--peer-timeout",
        "1s",
        "--keepalive-interval",
        "200ms",
    ]);
    let a = Peer::new(&r);
    for _ in 0..20 {
        a.send(json!({"type": "ping"}));
    }
    let line = r.wait_log("a limit is refusing traffic");
    assert!(line.contains("reason=\"rate_limited_source\""), "{line}");
    assert!(
        line.contains("flags=\"--source-rate, --source-bytes\""),
        "{line}"
    );
    let refused: u64 = line
        .split("refused=")
        .nth(1)
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .expect("a count");
    assert!((1..=20).contains(&refused), "{line}");
    // At most one a minute per reason: `metrics::tests` drives the clock past it.
}

/// A socket standing in for systemd's `$NOTIFY_SOCKET`, at a path of this test's own.
fn notify_socket(test: &str) -> (UnixDatagram, String) {
    let path = std::env::temp_dir().join(format!("udp-relay-{}-{test}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    (socket, path.to_str().unwrap().to_string())
}

/// The next notification, as text.
fn notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn readyz(r: &Relay) -> String {
    let mut s = TcpStream::connect(r.metrics).unwrap();
    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn systemd_hears_ready_once_the_relay_serves_and_watchdog_pings_while_it_does() {
    let (socket, path) = notify_socket("watchdog");
    let r = Relay::start_with(
        &["--workers", "2"],
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
        "127.0.0.1",
    );
    assert_eq!(notification(&socket), "READY=1");
    // Ready means serving: the readiness probe agrees, and a peer is answered.
    let probe = readyz(&r);
    assert!(probe.starts_with("HTTP/1.0 200 OK\r\n"), "{probe}");
    Peer::new(&r).register("A");
    for _ in 0..3 {
        assert_eq!(notification(&socket), "WATCHDOG=1");
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_abstract_notify_socket_is_reached_and_no_watchdog_means_no_pings() {
    let name = format!("udp-relay-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let r = Relay::start_with(&[], &[("NOTIFY_SOCKET", &format!("@{name}"))], "127.0.0.1");
    assert_eq!(notification(&socket), "READY=1");
    // No watchdog: the notifying thread ends after READY=1, so no ping can follow.
    wait_thread_gone(&r, "notify");
    drop(r);
    // A watchdog meant for another process (WATCHDOG_PID): the same.
    let r = Relay::start_with(
        &[],
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
        "127.0.0.1",
    );
    assert_eq!(notification(&socket), "READY=1");
    wait_thread_gone(&r, "notify");
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        socket.recv(&mut buf).is_err(),
        "a ping for another process's watchdog"
    );
}

/// Waits until the relay has no thread named `name`.
fn wait_thread_gone(r: &Relay, name: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", r.pid())).unwrap();
        let alive = tasks.filter_map(Result::ok).any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
        });
        if !alive {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "thread {name} still runs"
        );
        std::thread::yield_now();
    }
}

#[test]
fn an_unreachable_notify_socket_is_warned_of_and_the_relay_serves() {
    // A stale variable inherited from elsewhere must not stop a relay (sd_notify(3) ignores it).
    for socket in ["/nonexistent/notify.sock", "@"] {
        let mut r = Relay::start_with(&[], &[("NOTIFY_SOCKET", socket)], "127.0.0.1");
        // Logged before the start-up line, which `start_with` waits for.
        let logs = r.logs();
        let warning = logs
            .lines()
            .find(|l| l.contains("not notifying systemd"))
            .unwrap_or_else(|| panic!("no warning in:\n{logs}"));
        assert!(warning.contains("NOTIFY_SOCKET"), "{warning}");
        let p = Peer::new(&r);
        p.register("served");
        let (status, _) = r.stop();
        assert!(status.success(), "{status}");
    }
}

#[test]
fn a_bad_watchdog_variable_stops_start_up_naming_it() {
    let (_socket, path) = notify_socket("bad");
    {
        let (env, name) = (
            vec![("NOTIFY_SOCKET", path.as_str()), ("WATCHDOG_USEC", "soon")],
            "WATCHDOG_USEC",
        );
        let out = Relay::command(&[], &env, "127.0.0.1").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} started:\n{err}");
        assert!(
            err.contains(name) && !err.contains("listening on"),
            "{env:?}:\n{err}"
        );
    }
    let _ = std::fs::remove_file(path);
}
