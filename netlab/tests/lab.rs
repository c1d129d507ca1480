//! The lab itself, through its NATs: hairpinning behind one cone NAT, on and off, and the
//! capture on the relay's side. Root only; elsewhere each test says it skipped.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use netlab::{Lab, Nat, Site, can_run, peer_ip, public_ip, relay_ip};

/// How long an expected datagram may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A socket of `ns` on any port, whose reads time out after `timeout`.
fn socket(lab: &Lab, ns: &str, timeout: Duration) -> UdpSocket {
    let s = lab.socket_in(ns, "0.0.0.0:0");
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Two peers behind one cone NAT; peer 1 sends to the public mapping of peer 2, learnt from a
/// server in the relay's namespace. Returns what peer 2 received (and from where) and, if it
/// did, whether its answer to that source came back to peer 1.
fn hairpin(tag: &str, on: bool) -> Option<(Vec<u8>, SocketAddr, bool)> {
    let lab = Lab::new(tag, &[Site::new(Nat::Cone, 2).hairpin(on)]);
    let server = lab.socket_in(lab.relay(), &format!("{}:7000", relay_ip(1)));
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Only the negative case waits out its timeout, so it is short.
    let wait = if on {
        TIMEOUT
    } else {
        Duration::from_millis(300)
    };
    let (p1, p2) = (
        socket(&lab, lab.peer(1, 1), TIMEOUT),
        socket(&lab, lab.peer(1, 2), wait),
    );
    p2.send_to(b"map me", (relay_ip(1), 7000)).unwrap();
    let mut buf = [0u8; 64];
    let (_, mapping) = server
        .recv_from(&mut buf)
        .expect("peer 2 reaches the relay");
    assert_eq!(mapping.ip(), public_ip(1), "through the NAT");
    p1.send_to(b"hairpin", mapping).unwrap();
    match p2.recv_from(&mut buf) {
        Ok((n, from)) => {
            let got = buf[..n].to_vec();
            p2.send_to(b"and back", from).unwrap();
            let back = p1
                .recv_from(&mut buf)
                .is_ok_and(|(n, _)| &buf[..n] == b"and back");
            Some((got, from, back))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("peer 2: {e}"),
    }
}

#[test]
fn hairpin_on_turns_a_datagram_to_a_public_mapping_back_into_the_lan() {
    if !can_run("hairpin_on_turns_a_datagram_to_a_public_mapping_back_into_the_lan") {
        return;
    }
    let (got, from, back) = hairpin("hon", true).expect("the hairpinned datagram arrives");
    assert_eq!(got, b"hairpin");
    assert_eq!(
        from.ip(),
        public_ip(1),
        "it comes from the NAT's public address"
    );
    assert!(back, "an answer to that address reaches peer 1");
}

#[test]
fn hairpin_off_drops_a_datagram_to_a_public_mapping_from_the_lan() {
    if !can_run("hairpin_off_drops_a_datagram_to_a_public_mapping_from_the_lan") {
        return;
    }
    assert_eq!(hairpin("hof", false), None, "nothing arrives");
}

#[test]
fn capture_holds_a_datagram_crossing_the_relay_namespace() {
    if !can_run("capture_holds_a_datagram_crossing_the_relay_namespace") {
        return;
    }
    let lab = Lab::new("cap", &[Site::new(Nat::Cone, 1)]);
    let server = lab.socket_in(lab.relay(), &format!("{}:7000", relay_ip(1)));
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let capture = lab.capture();
    let marker = format!("netlab marker {}", std::process::id());
    let peer = socket(&lab, lab.peer(1, 1), TIMEOUT);
    peer.send_to(marker.as_bytes(), (relay_ip(1), 7000))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = server.recv_from(&mut buf).expect("the datagram arrives");
    assert_eq!(&buf[..n], marker.as_bytes());
    let packets = capture.stop();
    let seen = packets
        .iter()
        .find(|p| p.windows(marker.len()).any(|w| w == marker.as_bytes()));
    let seen = seen.unwrap_or_else(|| panic!("not among {} packets", packets.len()));
    assert_eq!(seen[0] >> 4, 4, "a raw IPv4 packet");
    assert_eq!(
        seen[12..16],
        public_ip(1).octets(),
        "from the NAT's public address"
    );
    let lan = peer_ip(1, 1).octets();
    assert!(
        packets
            .iter()
            .filter(|p| p.len() >= 20 && p[0] >> 4 == 4)
            .all(|p| p[12..16] != lan && p[16..20] != lan),
        "the LAN address never crosses the relay's side"
    );
}
