//! What `dist/` ships, checked against the real binary: the systemd unit passes
//! `systemd-analyze verify` (CI installs it; elsewhere, missing, the test says so and passes).

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
    let unit = shipped("dist/systemd/udp-relay.service");
    // verify checks that ExecStart's binary exists: a copy runs the one cargo built.
    let installed = "ExecStart=/usr/local/bin/udp-relay ";
    assert!(unit.contains(installed), "{unit}");
    let copy = unit.replace(
        installed,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_udp-relay")),
    );
    let dir = std::env::temp_dir().join(format!("udp-relay-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("udp-relay.service");
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
    ] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "no {key}");
    }
}
