//! Two `udp-chat` processes through real NATs (netlab's network namespaces, nftables): they
//! register signed, are introduced, and talk both ways — directly through cone NATs, over a
//! channel through symmetric ones — while a capture of everything the relay's namespace carries
//! holds none of their words. Root only (CI runs it); without root it says it skipped.

mod common;

use common::chat;
use netlab::{Lab, Nat, Site, relay_ip};

fn run(test: &str, nat: Nat) {
    if !netlab::can_run(test) {
        return;
    }
    let lab = Lab::new("ch", &[Site::new(nat, 1), Site::new(nat, 1)]);
    let capture = lab.capture();
    // Two relays of one host, the second only for STUN: a NAT that maps per destination shows
    // a different port to each.
    let _relays = common::relays(&lab, &[3478, 3479], &["--auth", "signed"]);
    let dir = std::env::temp_dir().join(format!("udp-chat-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut chats = Vec::new();
    for (site, name, peer) in [(1u8, "alice", Some("bob")), (2, "bob", None)] {
        let relay = format!("{}:3478", relay_ip(site));
        let stun2 = format!("{}:3479", relay_ip(site));
        let ns = lab.peer(site, 1);
        chats.push(chat(&lab, ns, &dir, name, &relay, &stun2, peer));
    }
    let [alice, bob] = &mut chats[..] else {
        unreachable!()
    };
    for (c, other) in [(&mut *alice, "bob"), (&mut *bob, "alice")] {
        c.expect("registration", |l| l.starts_with("* registered as"));
        c.expect("the session", |l| {
            l == format!("* connected to {other}, end-to-end encrypted")
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
