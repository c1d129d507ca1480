//! The README's table: per NAT pair of the lab, how often two `udp-chat`s open a direct path in
//! `ATTEMPTS` (20) tries and how long it takes, next to the app's existing Python peers
//! (`secure_chat` of BitDataCoin/decentralized-chat, fetched for the run into the directory
//! `SECURE_CHAT_REPO`, never committed) through the same lab. A measurement of minutes, run by
//! hand as root:
//!
//! ```text
//! SECURE_CHAT_REPO=/tmp/dcrepo cargo test --release -p udp-peer --test nat_table -- --ignored --nocapture
//! ```

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netlab::{Lab, Nat, Site, relay_ip};

/// How long an attempt may take to go direct.
const DIRECT_WITHIN: Duration = Duration::from_secs(15);
/// Attempts run at once, each in a lab of its own.
const PARALLEL: usize = 4;

/// A pair of the lab: alice's and bob's sites (one site: both behind one NAT).
struct Pair {
    label: &'static str,
    sites: Vec<Site>,
    /// (site, peer) of alice and of bob.
    at: [(u8, u8); 2],
}

fn pairs() -> Vec<Pair> {
    let two = |a, b| vec![Site::new(a, 1), Site::new(b, 1)];
    vec![
        Pair {
            label: "cone / cone",
            sites: two(Nat::Cone, Nat::Cone),
            at: [(1, 1), (2, 1)],
        },
        Pair {
            label: "cone / symmetric",
            sites: two(Nat::Cone, Nat::Symmetric),
            at: [(1, 1), (2, 1)],
        },
        Pair {
            label: "symmetric / symmetric",
            sites: two(Nat::Symmetric, Nat::Symmetric),
            at: [(1, 1), (2, 1)],
        },
        Pair {
            label: "one cone NAT, hairpinning",
            sites: vec![Site::new(Nat::Cone, 2).hairpin(true)],
            at: [(1, 1), (1, 2)],
        },
        Pair {
            label: "one cone NAT, no hairpinning",
            sites: vec![Site::new(Nat::Cone, 2).hairpin(false)],
            at: [(1, 1), (1, 2)],
        },
    ]
}

/// One attempt of two `udp-chat`s: the time from their start until both are direct.
fn chat_attempt(p: &Pair, i: usize) -> Option<Duration> {
    let lab = Lab::new("tb", &p.sites);
    let _relays = common::relays(&lab, &[3478, 3479], &[]);
    let dir = std::env::temp_dir().join(format!("nat-table-{}-{i}", std::process::id()));
    // Keys first: the time counts from the chats' start.
    for who in ["alice", "bob"] {
        common::keygen(&dir.join(who));
    }
    let start = Instant::now();
    let mut chats = Vec::new();
    for (who, (site, peer), other) in [("alice", p.at[0], Some("bob")), ("bob", p.at[1], None)] {
        let relay = format!("{}:3478", relay_ip(site));
        let stun2 = format!("{}:3479", relay_ip(site));
        chats.push(common::chat(
            &lab,
            lab.peer(site, peer),
            &dir,
            who,
            &relay,
            &stun2,
            other,
        ));
    }
    let deadline = start + DIRECT_WITHIN;
    let mut direct = true;
    for c in &mut chats {
        direct &= c
            .wait_for(deadline, |l| {
                l.starts_with("* path to") && l.contains(": direct ")
            })
            .is_some();
    }
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    direct.then_some(took)
}

/// Chat messages of the Python peers that arrived directly (each attempt sends one each way).
static MESSAGES_DIRECT: AtomicU64 = AtomicU64::new(0);

/// One attempt of two `secure_chat` peers, through netlab/python/secure_chat_attempt.py: the
/// time from alice's start until a datagram of the other arrived directly at both.
fn python_attempt(p: &Pair, repo: &Path) -> Option<Duration> {
    let lab = Lab::new("tp", &p.sites);
    let _relays = common::relays(&lab, &[3478], &[]);
    let driver = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../netlab/python/secure_chat_attempt.py"
    );
    let mut kids = Vec::new();
    for (who, (site, peer), other) in [("alice", p.at[0], "bob"), ("bob", p.at[1], "alice")] {
        let relay = format!("{}:3478", relay_ip(site));
        let cmd = [
            "python3",
            driver,
            "--repo",
            repo.to_str().unwrap(),
            "--relay",
            &relay,
            "--name",
            who,
            "--peer",
            other,
            "--timeout",
            "30",
            // Their README's peer_ip for a peer behind NAT is `UNKNOWN`, which a resolver on the
            // internet refuses at once; the lab has no resolver, where it would stall each of
            // their 10 direct attempts. An address that never answers fails as fast.
            "--peer-ip",
            "192.0.2.1",
        ];
        kids.push(lab.spawn(lab.peer(site, peer), &cmd));
    }
    let mut times = Vec::new();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default().to_string();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|_| {
            panic!(
                "the driver's last line is its JSON: {last:?}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        MESSAGES_DIRECT.fetch_add(
            v["messages_direct"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        times.push(
            v["direct"]
                .as_bool()
                .unwrap_or(false)
                .then(|| v["seconds_to_direct"].as_f64())
                .flatten(),
        );
    }
    let both = times.iter().all(Option::is_some);
    both.then(|| Duration::from_secs_f64(times.iter().flatten().fold(0.0, |a: f64, b| a.max(*b))))
}

/// Runs `attempts` of `one` at most `PARALLEL` at a time; returns the times of those that went
/// direct.
fn measure(attempts: usize, one: impl Fn(usize) -> Option<Duration> + Sync) -> Vec<Duration> {
    let mut times = Vec::new();
    for chunk in (0..attempts).collect::<Vec<_>>().chunks(PARALLEL) {
        std::thread::scope(|s| {
            let one = &one;
            let hs: Vec<_> = chunk.iter().map(|&i| s.spawn(move || one(i))).collect();
            times.extend(hs.into_iter().filter_map(|h| h.join().unwrap()));
        });
    }
    times.sort();
    times
}

fn cell(attempts: usize, times: &[Duration]) -> String {
    let median = times
        .get(times.len() / 2)
        .map_or("–".into(), |t| format!("{:.2} s", t.as_secs_f64()));
    let max = times
        .last()
        .map_or("–".into(), |t| format!("{:.2} s", t.as_secs_f64()));
    format!("{}/{attempts} | {median} | {max}", times.len())
}

#[test]
#[ignore = "a measurement of minutes, run by hand for the README"]
fn nat_table() {
    if !netlab::can_run("nat_table") {
        return;
    }
    let attempts: usize = std::env::var("ATTEMPTS")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let repo = std::env::var_os("SECURE_CHAT_REPO").map(std::path::PathBuf::from);
    let mut rows = vec![
        "| NAT pair | udp-chat direct | median time to direct | slowest | secure_chat direct | median time to direct | slowest | secure_chat messages direct |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for p in pairs() {
        let ours = measure(attempts, |i| chat_attempt(&p, i));
        MESSAGES_DIRECT.store(0, Ordering::Relaxed);
        let theirs = match &repo {
            Some(r) => {
                let c = cell(attempts, &measure(attempts, |_| python_attempt(&p, r)));
                let m = MESSAGES_DIRECT.load(Ordering::Relaxed);
                format!("{c} | {m}/{}", 2 * attempts)
            }
            None => "not run (set SECURE_CHAT_REPO) | | | ".into(),
        };
        rows.push(format!(
            "| {} | {} | {theirs} |",
            p.label,
            cell(attempts, &ours)
        ));
        println!("{}", rows.last().unwrap());
    }
    println!("\n{}", rows.join("\n"));
}
