//! What an operator reads in the log: the start-up line, the warning when the kernel caps the
//! socket buffers, and the rate-limited warning when a limit starts refusing traffic.

mod common;

use common::{Peer, Relay};
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
        let capped = max < udp_relay::io::SOCKET_BUFFER;
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
