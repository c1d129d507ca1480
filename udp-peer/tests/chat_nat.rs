//! Two `udp-chat` processes through real NATs (netlab's network namespaces, nftables): they
//! register signed, are introduced, and talk both ways — directly through cone NATs, over a
//! channel through symmetric ones — while a capture of everything the relay's namespace carries
//! holds none of their words. Root only (CI runs it); without root it says it skipped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use clap::Parser;
use netlab::{Lab, Nat, Site, relay_ip};

const BIN: &str = env!("CARGO_BIN_EXE_udp-chat");
const WAIT: Duration = Duration::from_secs(20);

/// A running `udp-chat`: its input, and its output lines as they come.
struct Chat {
    name: &'static str,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Chat {
    fn start(mut child: Child, name: &'static str) -> Chat {
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

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    /// Waits for a line that `want` accepts; returns it.
    fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
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

fn run(test: &str, nat: Nat) {
    if !netlab::can_run(test) {
        return;
    }
    let lab = Lab::new("ch", &[Site::new(nat, 1), Site::new(nat, 1)]);
    let capture = lab.capture();
    // Two relays of one host, the second only for STUN: a NAT that maps per destination shows
    // a different port to each.
    let _relays = [3478, 3479].map(|port| {
        lab.run_in(lab.relay(), || {
            let port = port.to_string();
            let args = udp_relay::config::Args::parse_from([
                "udp-relay",
                "--host",
                "0.0.0.0",
                "--port",
                &port,
                "--workers",
                "1",
                // The lab's "public" side is private address space, allowed as an operator whose
                // peers come from such a network would.
                "--allowed-peer-ip",
                "10.200.0.0/16",
                "--auth",
                "signed",
            ]);
            udp_relay::server::start(&args).expect("the relay starts")
        })
    });
    let dir = std::env::temp_dir().join(format!("udp-chat-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut chats = Vec::new();
    for (site, name, peer) in [(1u8, "alice", Some("bob")), (2, "bob", None)] {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let key = home.join("key");
        let k = key.to_str().unwrap();
        let made = std::process::Command::new(BIN)
            .args(["keygen", k])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let relay = format!("{}:3478", relay_ip(site));
        let stun2 = format!("{}:3479", relay_ip(site));
        let mut cmd = vec![
            BIN, "--relay", &relay, "--stun2", &stun2, "--name", name, "--key", k,
        ];
        if let Some(p) = peer {
            cmd.extend(["--peer", p]);
        }
        chats.push(Chat::start(lab.spawn(lab.peer(site, 1), &cmd), name));
    }
    let [alice, bob] = &mut chats[..] else {
        unreachable!()
    };
    for (c, other) in [(&mut *alice, "bob"), (&mut *bob, "alice")] {
        c.expect("registration", |l| l.starts_with("* registered as"));
        c.expect("the session", |l| {
            l == format!("* connected to {other}, end-to-end encrypted [relay]")
        });
    }
    // Messages flow at once, over the relay, whatever the path becomes.
    alice.say("first words over whatever path");
    bob.expect("alice's first", |l| {
        l.starts_with("alice: first words over whatever path [")
    });
    let direct = nat == Nat::Cone;
    let label = if direct { "[direct]" } else { "[relay]" };
    if direct {
        alice.expect("the direct path", |l| {
            l.starts_with("* path to bob: direct 10.200.2.2:")
        });
        bob.expect("the direct path", |l| {
            l.starts_with("* path to alice: direct 10.200.1.2:")
        });
    }
    alice.say("hello bob, a secret for you");
    bob.say("hello alice, a secret back");
    bob.expect("alice's message", |l| {
        l == format!("alice: hello bob, a secret for you {label}")
    });
    alice.expect("bob's message", |l| {
        l == format!("bob: hello alice, a secret back {label}")
    });
    alice.say("/status");
    let mapping = if direct {
        "endpoint-independent"
    } else {
        "endpoint-dependent"
    };
    alice.expect("the status", |l| {
        l.starts_with("registered: yes") && l.contains(mapping)
    });
    let path = alice.expect("bob's status", |l| l.starts_with("bob: connected, path "));
    assert_eq!(path.contains("path direct"), direct, "{path}");
    if !direct {
        assert!(
            !alice
                .seen
                .iter()
                .chain(&bob.seen)
                .any(|l| l.starts_with("* path to")),
            "no direct path through symmetric NATs"
        );
    }
    let packets = capture.stop();
    assert!(packets.len() > 10, "the capture saw the traffic");
    for p in &packets {
        for secret in [&b"secret"[..], b"first words", b"hello"] {
            assert!(
                !p.windows(secret.len()).any(|w| w == secret),
                "plaintext crossed the relay's network"
            );
        }
    }
    println!(
        "{test}: {} packets captured at the relay, none with plaintext; alice saw:\n{}",
        packets.len(),
        alice.seen.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_chats_talk_directly_through_cone_nats() {
    run("two_chats_talk_directly_through_cone_nats", Nat::Cone);
}

#[test]
fn two_chats_talk_over_a_channel_through_symmetric_nats() {
    run(
        "two_chats_talk_over_a_channel_through_symmetric_nats",
        Nat::Symmetric,
    );
}
