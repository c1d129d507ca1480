//! What `dist/` ships, checked against the real binary: the systemd unit passes
//! `systemd-analyze verify`, the alerting rules `promtool check rules` (CI installs both;
//! elsewhere, missing, the test says so and passes), and every metric the dashboard and the
//! rules read is one a running relay serves.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Whether `tool` is there to run; if not, says so (and fails under CI, which installs it).
fn have(tool: &str) -> bool {
    if Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is missing, and CI installs it"
    );
    println!("SKIPPED: {tool} is not installed (CI installs it)");
    false
}

/// The shipped file `path` (from the repository's root).
fn shipped(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn the_systemd_unit_verifies_clean() {
    if !have("systemd-analyze") {
        return;
    }
    let unit = shipped("dist/systemd/udp-relay@.service");
    // verify checks that ExecStart's binary exists: a copy runs the one cargo built.
    let installed = "ExecStart=/usr/local/bin/udp-relay ";
    assert!(unit.contains(installed), "{unit}");
    let copy = unit.replace(
        installed,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_udp-relay")),
    );
    let dir = std::env::temp_dir().join(format!("udp-relay-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A template is verified as one of its instances.
    let path = dir.join("udp-relay@a.service");
    std::fs::write(&path, copy).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // verify exits 0 on an unknown key too, only saying so: any word from it is a failure.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "    --takeover /run/udp-relay/takeover --state-file /var/lib/udp-relay/state",
        "RuntimeDirectoryPreserve=yes",
        "User=udp-relay",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "no {key}");
    }
}

#[test]
fn the_alerting_rules_check_with_promtool() {
    if !have("promtool") {
        return;
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/prometheus/udp-relay-rules.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("SUCCESS"), "{said}");
}

/// Every metric name (`udp_relay_…`, `process_…`) that `text` mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["udp_relay_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            let boundary = text[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if boundary && name.len() > prefix.len() {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn the_dashboard_and_the_rules_read_only_metrics_the_relay_serves() {
    let r = common::Relay::start(&[]);
    let page = r.metrics_text();
    let served: BTreeSet<String> = page
        .lines()
        .filter_map(|l| Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_string()))
        .collect();
    for file in [
        "dist/grafana/udp-relay.json",
        "dist/prometheus/udp-relay-rules.yml",
    ] {
        let used = metric_names(&shipped(file));
        assert!(used.len() >= 7, "{file} reads only {used:?}");
        let missing: Vec<_> = used.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{file} reads {missing:?}, not served:\n{page}"
        );
    }
    // The dashboard is JSON Grafana can import: panels, each with its queries.
    let dashboard: serde_json::Value =
        serde_json::from_str(&shipped("dist/grafana/udp-relay.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.iter().all(|p| p["targets"][0]["expr"].is_string()));
}
