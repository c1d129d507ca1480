//! STUN Binding (PROTOCOL.md Part 3) through the binary, over IPv4, IPv6 and a dual-stack
//! socket's IPv4 peers; with our own client and with two that nobody here wrote: coturn's
//! `turnutils_stunclient` (Debian's `coturn` package) and aioice's STUN (PyPI). CI installs
//! both; where one is missing, its test says so and passes, unless `CI` is set.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;

use common::*;
use relay_core::wire::stun;

/// The relay on `::` (IPv6 and, dual-stack, IPv4), logging each Binding request's source.
fn relay() -> Relay {
    Relay::start_with(&[], &[("RUST_LOG", "udp_relay=debug")], "::")
}

fn at(r: &Relay, ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), r.addr.port())
}

/// Asks `relay` from a fresh socket on `local`; returns the socket's address and the answer.
fn ask(relay: SocketAddr, local: &str, fingerprint: bool) -> (SocketAddr, Vec<u8>) {
    let s = UdpSocket::bind(local).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let tx: [u8; 12] = std::array::from_fn(|i| i as u8 * 17 + 3);
    let mut d = Vec::new();
    stun::request(&mut d, &tx, fingerprint);
    s.send_to(&d, relay).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(from, relay);
    assert_eq!(&buf[8..20], &tx, "transaction id echoed");
    (s.local_addr().unwrap(), buf[..n].to_vec())
}

#[test]
fn binding_requests_learn_their_address_over_ipv4_ipv6_and_dual_stack() {
    let r = relay();
    for (relay_ip, local) in [
        ("::1", "[::1]:0"),
        ("127.0.0.1", "127.0.0.1:0"),
        ("127.0.0.1", "127.0.3.4:0"),
    ] {
        for fingerprint in [false, true] {
            let (me, answer) = ask(at(&r, relay_ip), local, fingerprint);
            // The dual-stack socket's IPv4 peers are answered as IPv4, not v4-mapped IPv6.
            assert_eq!(stun::mapped_address(&answer), Some(me), "{local}");
            assert_eq!(
                answer.len() - 20,
                usize::from(u16::from_be_bytes([answer[2], answer[3]]))
            );
            let has_fingerprint =
                answer.len() >= 8 && answer[answer.len() - 8..answer.len() - 6] == [0x80, 0x28];
            assert_eq!(has_fingerprint, fingerprint, "{local}");
        }
    }
    assert_eq!(r.metric("udp_relay_stun_binding_successes_total"), 6);
}

/// Whether `tool` is there to run; if not, says so (and fails under CI, which installs it).
fn have(tool: &str, probe: &mut Command) -> bool {
    if probe.output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is missing, and CI installs it"
    );
    println!("SKIPPED: {tool} is not installed (CI installs it)");
    false
}

#[test]
fn coturns_stunclient_learns_its_address() {
    let mut probe = Command::new("sh");
    probe.args(["-c", "command -v turnutils_stunclient"]);
    if !have("turnutils_stunclient (Debian package coturn)", &mut probe) {
        return;
    }
    let mut r = relay();
    for ip in ["127.0.0.1", "::1"] {
        let out = Command::new("turnutils_stunclient")
            .args(["-p", &r.addr.port().to_string(), ip])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        // "0: : IPv4. UDP reflexive addr: 127.0.0.1:38174" (IPv6 unbracketed: "::1:39635").
        let line = text
            .lines()
            .find(|l| l.contains("reflexive addr:"))
            .unwrap_or_else(|| panic!("no address in {text:?}"));
        let reflexive = line.rsplit("addr: ").next().unwrap().trim();
        let (host, port) = reflexive.rsplit_once(':').unwrap();
        let seen: SocketAddr = SocketAddr::new(host.parse().unwrap(), port.parse().unwrap());
        assert_eq!(seen.ip(), ip.parse::<std::net::IpAddr>().unwrap());
        // The port is the one its datagram came from, as the relay saw it.
        r.wait_log(&format!("from={seen}"));
        println!("turnutils_stunclient over {ip}: {seen}");
    }
}

#[test]
fn aioices_stun_learns_its_address_and_reads_the_420() {
    let mut probe = Command::new("python3");
    probe.args(["-c", "import aioice"]);
    if !have("aioice (PyPI)", &mut probe) {
        return;
    }
    let r = relay();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/stun_aioice.py");
    let run = |ip: &str, flags: &[&str]| {
        let out = Command::new("python3")
            .arg(script)
            .args([ip, &r.addr.port().to_string()])
            .args(flags)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    for ip in ["127.0.0.1", "::1"] {
        for flags in [&[][..], &["fingerprint"]] {
            let got = run(ip, flags);
            let (local, mapped) = got.split_once(' ').unwrap();
            assert_eq!(local, mapped, "aioice over {ip} {flags:?}");
            println!("aioice over {ip} {flags:?}: {mapped}");
        }
        // PRIORITY (0x0024, ICE) is comprehension-required and not this server's: a 420.
        assert_eq!(run(ip, &["priority", "fingerprint"]), "420 0024");
    }
    assert_eq!(
        r.metric("udp_relay_stun_binding_unknown_attributes_total"),
        2
    );
}

#[test]
fn other_stun_messages_are_dropped_and_counted() {
    let r = relay();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut d = Vec::new();
    stun::request(&mut d, &[7; 12], true);
    let relay = at(&r, "127.0.0.1");
    let mut bad_fp = d.clone();
    *bad_fp.last_mut().unwrap() ^= 1;
    let mut response = d.clone();
    response[1] = 0x01;
    response[0] = 0x01;
    let mut cut = d.clone();
    cut.truncate(d.len() - 4);
    for m in [&bad_fp, &response, &cut] {
        s.send_to(m, relay).unwrap();
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while r.refused("stun_bad_fingerprint")
        + r.refused("stun_not_binding_request")
        + r.refused("stun_malformed")
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "{:?}", r.refusals());
        std::thread::yield_now();
    }
    assert_eq!(r.refused("stun_bad_fingerprint"), 1);
    assert_eq!(r.refused("stun_not_binding_request"), 1);
    assert_eq!(r.refused("stun_malformed"), 1);
    s.set_nonblocking(true).unwrap();
    assert!(s.recv(&mut [0u8; 64]).is_err(), "nothing is answered");
}
