//! What the end-to-end tests share: a `udp-chat` process driven through its terminal, and
//! relays started inside a lab's relay namespace.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use clap::Parser;
use netlab::Lab;

pub const BIN: &str = env!("CARGO_BIN_EXE_udp-chat");
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `udp-chat`: its input, and its output lines as they come.
pub struct Chat {
    pub name: &'static str,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Chat {
    pub fn start(mut child: Child, name: &'static str) -> Chat {
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
            });
        }
        Chat {
            name,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    /// Waits for a line that `want` accepts; returns it.
    pub fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        if let Some(l) = self.seen.iter().find(|l| want(l)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if want(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{}: no {what} in {WAIT:?}; it said:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Chat {
    /// Waits until `deadline` for a line that `want` accepts.
    pub fn wait_for(&mut self, deadline: Instant, want: impl Fn(&str) -> bool) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| want(l)) {
            return Some(l.clone());
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let l = self.lines.recv_timeout(left).ok()?;
            self.seen.push(l.clone());
            if want(&l) {
                return Some(l);
            }
        }
    }
}

/// Relays on `ports` of the lab's relay namespace (in this process), with `extra` flags. The
/// lab's "public" side is private address space, allowed as an operator whose peers come from
/// such a network would.
pub fn relays(lab: &Lab, ports: &[u16], extra: &[&str]) -> Vec<udp_relay::server::Relay> {
    ports
        .iter()
        .map(|port| {
            lab.run_in(lab.relay(), || {
                let port = port.to_string();
                let mut args = vec![
                    "udp-relay",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    &port,
                    "--workers",
                    "1",
                    "--allowed-peer-ip",
                    "10.200.0.0/16",
                ];
                args.extend_from_slice(extra);
                let args = udp_relay::config::Args::parse_from(args);
                udp_relay::server::start(&args).expect("the relay starts")
            })
        })
        .collect()
}

/// The identity key in `dir`, made by `udp-chat keygen` unless it is there already.
pub fn keygen(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("key");
    if key.exists() {
        return key;
    }
    let made = std::process::Command::new(BIN)
        .args(["keygen", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    key
}

/// `udp-chat` as `name` in namespace `ns`, with its key in `dir`, talking to `relay` (and
/// `stun2`), connecting to `peer` if given.
pub fn chat(
    lab: &Lab,
    ns: &str,
    dir: &Path,
    name: &'static str,
    relay: &str,
    stun2: &str,
    peer: Option<&str>,
) -> Chat {
    let key = keygen(&dir.join(name));
    let k = key.to_str().unwrap();
    let mut cmd = vec![
        BIN, "--relay", relay, "--stun2", stun2, "--name", name, "--key", k,
    ];
    if let Some(p) = peer {
        cmd.extend(["--peer", p]);
    }
    Chat::start(lab.spawn(ns, &cmd), name)
}
