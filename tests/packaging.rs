//! What ships beside the binary: the container recipe (checked by its contents, since building
//! an image needs a registry this test cannot reach) and the seccomp helper that lets
//! `--io uring` run in a container.

use std::process::Command;

use serde_json::{Value, json};

const CONTAINERFILE: &str = include_str!("../dist/container/Containerfile");

#[test]
fn the_container_image_is_built_in_two_stages_and_runs_unprivileged() {
    let lines: Vec<&str> = CONTAINERFILE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "a builder and a runtime stage: {from:?}");
    assert!(from[0].ends_with(" AS build"), "{from:?}");
    assert!(
        !from[1].contains("rust"),
        "no toolchain at run time: {from:?}"
    );
    let runtime = &lines[lines.iter().position(|l| l == from[1]).unwrap()..];
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("RUN cargo build --release --locked")),
        "the locked release build"
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("COPY --from=build /src/target/release/udp-relay ")),
        "only the binary is copied: {runtime:?}"
    );
    let user = runtime
        .iter()
        .find(|l| l.starts_with("USER "))
        .expect("a USER in the runtime stage");
    let id = user["USER ".len()..].split(':').next().unwrap();
    assert!(id != "root" && id != "0", "{user}");
    assert!(
        runtime.iter().any(|l| l.contains("8000/udp")),
        "{runtime:?}"
    );
    assert!(runtime.iter().any(|l| l.starts_with("ENTRYPOINT [")));
}

#[test]
fn the_seccomp_helper_allows_io_uring_and_changes_nothing_else() {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("SKIPPED the_seccomp_helper_allows_io_uring_and_changes_nothing_else: no python3");
        return;
    }
    let dir = std::env::temp_dir().join(format!("seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("default.json");
    let output = dir.join("out.json");
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read", "write", "recvmmsg"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load"],
             "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["io_uring_setup"], "action": "SCMP_ACT_ERRNO"}
        ]
    });
    std::fs::write(&input, profile.to_string()).unwrap();
    let run = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dist/container/seccomp-io_uring.py"
        ))
        .args([&input, &output])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(got["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(
        got["syscalls"],
        json!([
            {"names": ["read", "write", "recvmmsg", "io_uring_setup", "io_uring_enter",
                       "io_uring_register"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ])
    );
}
