//! The workspace's layering, read from its sources: no crate names one above it or a library it
//! must not know, no module of a crate imports one that imports it back, and no source file
//! outside tests is over 700 lines. `ARCHITECTURE.md` states these invariants; this holds them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each crate's sources, and the names it must not use (crates above it, libraries it must not
/// know).
const CRATES: &[(&str, &[&str])] = &[
    (
        "relay-wire/src",
        &[
            "relay_core",
            "relay_udp",
            "udp_relay",
            "serde",
            "libc",
            "std::net::UdpSocket",
        ],
    ),
    (
        "relay-core/src",
        &[
            "relay_udp",
            "udp_relay",
            "clap",
            "hyper",
            "tokio",
            "io_uring",
            "tracing_subscriber",
            "std::thread",
            "Instant",
            "SystemTime",
            "UdpSocket",
        ],
    ),
    (
        "relay-udp/src",
        &["relay_core", "relay_wire", "udp_relay", "simd_json"],
    ),
    ("src", &[]),
    (
        "loadtest/src",
        &[
            "relay_core",
            "udp_relay",
            "libc::recvmmsg",
            "libc::sendmmsg",
        ],
    ),
    (
        "udp-peer/src",
        &["relay_core", "relay_udp", "udp_relay", "loadtest", "netlab"],
    ),
];

/// What the peer's sans-IO core must not touch: a socket, a clock, a thread, a file. Only its
/// shell does: the runner, the identity's files and the chat binary.
const PEER_SHELL: &[&str] = &["runner.rs", "identity.rs", "bin"];
const PEER_IO: &[&str] = &[
    "UdpSocket",
    "Instant::now",
    "SystemTime",
    "std::thread",
    "std::fs",
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// Whether `rel` (a path inside a crate's `src`) holds tests only.
fn is_test_file(rel: &Path) -> bool {
    rel.components().any(|c| c.as_os_str() == "tests")
        || rel.file_name().is_some_and(|f| f == "tests.rs")
}

/// The code of `text` before its test module, without comment lines.
fn code(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a code text names with `crate::`.
fn crate_imports(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with('$'))
        .map(|(at, m)| {
            code[at + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == v) {
            return Some(path[at..].to_vec());
        }
        if done.contains(v) {
            return None;
        }
        path.push(v.to_string());
        for w in graph.get(v).into_iter().flatten() {
            if let Some(c) = visit(w, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(v.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|v| visit(v, graph, &mut Vec::new(), &mut done))
}

#[test]
fn every_crate_keeps_to_its_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, banned) in CRATES {
        let src = root.join(dir);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in sources(&src) {
            let rel = path.strip_prefix(&src).unwrap().to_path_buf();
            let text = fs::read_to_string(&path).unwrap();
            if is_test_file(&rel) {
                continue;
            }
            let lines = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default()
                .lines()
                .count();
            assert!(lines <= 700, "{dir}/{}: {lines} lines", rel.display());
            let code = code(&text);
            for name in *banned {
                assert!(
                    !code.contains(name),
                    "{dir}/{} names {name}, which its layer must not know",
                    rel.display()
                );
            }
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let deps = graph.entry(top.clone()).or_default();
            deps.extend(crate_imports(&code).into_iter().filter(|m| *m != top));
        }
        let known: BTreeSet<String> = graph.keys().cloned().collect();
        for deps in graph.values_mut() {
            deps.retain(|d| known.contains(d));
        }
        assert_eq!(cycle(&graph), None, "{dir}: modules that import each other");
    }
}

#[test]
fn the_peer_core_is_sans_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("udp-peer/src");
    for path in sources(&src) {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str();
        if PEER_SHELL.iter().any(|s| top == *s) {
            continue;
        }
        let code = code(&fs::read_to_string(&path).unwrap());
        for name in PEER_IO {
            assert!(
                !code.contains(name),
                "udp-peer/src/{} names {name}: the peer's core is sans-IO",
                rel.display()
            );
        }
    }
}
