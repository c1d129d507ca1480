//! What a registered peer and a bound channel cost in resident memory: `cargo bench -p
//! relay-core --features testing --bench memory [-- SCENARIO]`. Not timed; each scenario runs in a process of its own (this binary run
//! again), so that what one frees cannot be reused by the next and hide its cost, and reports
//! the growth of its resident set (`VmRSS`) over what it built, and of the bytes the allocator
//! holds for live allocations (glibc's `mallinfo2`): what the tables hold, without the
//! allocator's free space.
//!
//! - `shared`: a million peers, fifty per address (what `loadtest register` makes: it has
//!   20,000 sockets);
//! - `distinct`: a million peers, an address each (as real peers have);
//! - `churn`: `distinct`, then sixteen million more joins, each after the oldest peer leaves
//!   (a steady million that turns over sixteen times: a table that tombstones make grow has
//!   grown by then);
//! - `signed`: `distinct` with signed registrations (each name bound to a key);
//! - `channels`: 262,144 channels bound (the default `--max-channels-total`), between
//!   distinct peers, without a registry.

use std::net::SocketAddr;
use std::process::Command;

use relay_core::channels::Channels;
use relay_core::registry::{Claim, Name, Proof, Registry, Session};
use relay_core::settings::Settings;

const PEERS: usize = 1_000_000;
const CHANNELS: usize = 262_144;
const SCENARIOS: [&str; 5] = ["shared", "distinct", "churn", "signed", "channels"];

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Bytes the allocator holds for live allocations (headers and rounding included).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> u64 {
    // SAFETY: `mallinfo2` takes nothing and only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> u64 {
    0
}

/// Resident and heap bytes now.
fn usage() -> (u64, u64) {
    (rss(), heap())
}

/// Peer `k`'s name: 14 bytes, as `loadtest register`'s.
fn name(k: usize) -> String {
    format!("3fa9c1-{k:07}")
}

/// Peer `k`'s address: its own, or (`shared`) one of 20,000 that fifty peers share.
fn addr(k: usize, shared: bool) -> SocketAddr {
    let k = if shared { k % 20_000 } else { k } as u32;
    SocketAddr::from(((0x0A00_0000 + k / 4).to_be_bytes(), 40_000 + (k % 4) as u16))
}

fn joined(c: Claim) -> Session {
    match c {
        Claim::Joined(s) => s,
        c => panic!("{c:?}"),
    }
}

fn grown(before: (u64, u64)) -> (u64, u64) {
    let (rss, heap) = usage();
    (rss - before.0, heap - before.1)
}

/// Runs `scenario`; returns what it built and the resident and heap memory that took.
fn run(scenario: &str) -> (usize, &'static str, (u64, u64)) {
    // The command line's default bounds, which size the tables.
    let s = Settings {
        max_peers: PEERS,
        max_channels_total: CHANNELS,
        ..Settings::default()
    };
    let before;
    match scenario {
        "shared" | "distinct" | "signed" => {
            let reg = Registry::new(&s);
            before = usage();
            let shared = scenario == "shared";
            for k in 0..PEERS {
                let proof = if scenario == "signed" {
                    let mut key = [0u8; 32];
                    key[..8].copy_from_slice(&(k as u64).to_le_bytes());
                    Proof::Key(key, 0)
                } else {
                    Proof::Token(None)
                };
                joined(reg.claim(&name(k), addr(k, shared), proof, 0, usize::MAX));
            }
            assert_eq!(reg.len(), PEERS);
            (PEERS, "peer", grown(before))
        }
        "churn" => {
            let reg = Registry::new(&s);
            // The tokens the leaving peers prove themselves with, allocated before measuring.
            let mut tokens: Vec<Option<Session>> = vec![None; PEERS];
            before = usage();
            for k in 0..17 * PEERS {
                if k >= PEERS {
                    let old = k - PEERS;
                    let t = tokens[old % PEERS];
                    assert!(reg.unregister(&name(old), addr(old, false), t, 0).is_some());
                }
                let t = joined(reg.claim(&name(k), addr(k, false), Proof::Token(None), 0, PEERS));
                tokens[k % PEERS] = Some(t);
            }
            assert_eq!(reg.len(), PEERS);
            (PEERS, "peer", grown(before))
        }
        "channels" => {
            let ch = Channels::new(&s);
            before = usage();
            for i in 0..CHANNELS {
                let (a, b) = (2 * i, 2 * i + 1);
                let (na, nb) = (Name::from(name(a).as_str()), Name::from(name(b).as_str()));
                ch.bind(&na, addr(a, false), &nb, addr(b, false))
                    .expect("bound");
            }
            assert_eq!(ch.len(), CHANNELS);
            (CHANNELS, "channel", grown(before))
        }
        s => panic!("no scenario {s:?}: one of {SCENARIOS:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, scenario] = &args[..] {
        if flag == "--scenario" {
            let (n, what, (rss, heap)) = run(scenario);
            let mib = |b: u64| b as f64 / 1048576.0;
            let per = |b: u64| b as f64 / n as f64;
            println!(
                "{scenario:>9}: {n} {what}s, RSS +{:.1} MiB: {:.0} bytes per {what} \
                 (heap in use +{:.1} MiB: {:.0})",
                mib(rss),
                per(rss),
                mib(heap),
                per(heap)
            );
            return;
        }
    }
    // `cargo bench` passes `--bench`; a word that is not a flag picks scenarios.
    let picked: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let exe = std::env::current_exe().expect("this binary");
    for s in SCENARIOS
        .iter()
        .filter(|s| picked.is_empty() || picked.contains(s))
    {
        let out = Command::new(&exe)
            .args(["--scenario", s])
            .output()
            .expect("a scenario");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
