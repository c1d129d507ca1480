//! Property: arbitrary mutations of valid Binding requests never panic the router, and each is
//! answered or refused exactly as RFC 8489 says, judged by a reference reading of the RFC
//! written here apart from the relay's parser.

use std::net::SocketAddr;

use proptest::prelude::*;
use relay_core::out::Out;
use relay_core::refusal::Reason;
use relay_core::router::Router;
use relay_core::shared::Shared;
use relay_core::wire::stun;
use udp_relay::config::Settings;

/// What the RFC says of a datagram that starts like STUN.
#[derive(Debug, PartialEq)]
enum Expect {
    /// A success (`0x0101`) or, with unknown comprehension-required attributes, a 420.
    Answer { error: bool, fingerprint: bool },
    /// Dropped, for this reason.
    Refused(&'static str),
    /// Not STUN at all (the first byte, the cookie or the size says so).
    NotStun,
}

fn reference(d: &[u8]) -> Expect {
    if d.len() < 20 || d[0] > 1 || d[4..8] != [0x21, 0x12, 0xA4, 0x42] {
        return Expect::NotStun;
    }
    let ty = u16::from_be_bytes([d[0], d[1]]);
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    if ty & 0xC000 != 0 || len % 4 != 0 || d.len() != 20 + len {
        return Expect::Refused("stun_malformed");
    }
    if ty != 0x0001 {
        return Expect::Refused("stun_not_binding_request");
    }
    let known = [
        0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x0014, 0x0015, 0x001C, 0x001D, 0x001E, 0x0020,
    ];
    let (mut i, mut error, mut fingerprint) = (20, false, false);
    while i < d.len() {
        if fingerprint || i + 4 > d.len() {
            return Expect::Refused("stun_malformed");
        }
        let t = u16::from_be_bytes([d[i], d[i + 1]]);
        let l = u16::from_be_bytes([d[i + 2], d[i + 3]]) as usize;
        let next = i + 4 + l + (4 - l % 4) % 4;
        if next > d.len() {
            return Expect::Refused("stun_malformed");
        }
        if t == 0x8028 {
            if l != 4 {
                return Expect::Refused("stun_malformed");
            }
            let want = crc32fast::hash(&d[..i]) ^ 0x5354_554E;
            if d[i + 4..i + 8] != want.to_be_bytes() {
                return Expect::Refused("stun_bad_fingerprint");
            }
            fingerprint = true;
        } else if t < 0x8000 && !known.contains(&t) {
            error = true;
        }
        i = next;
    }
    Expect::Answer { error, fingerprint }
}

/// A valid Binding request with `attrs` (type, value) and, if asked, FINGERPRINT.
fn request(tx: [u8; 12], attrs: &[(u16, Vec<u8>)], fingerprint: bool) -> Vec<u8> {
    let mut d = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    d.extend_from_slice(&tx);
    for (t, v) in attrs {
        d.extend_from_slice(&t.to_be_bytes());
        d.extend_from_slice(&(v.len() as u16).to_be_bytes());
        d.extend_from_slice(v);
        d.resize(d.len().next_multiple_of(4), 0);
    }
    let set_len = |d: &mut Vec<u8>, more: usize| {
        let n = (d.len() - 20 + more) as u16;
        d[2..4].copy_from_slice(&n.to_be_bytes());
    };
    if fingerprint {
        set_len(&mut d, 8);
        let f = crc32fast::hash(&d) ^ 0x5354_554E;
        d.extend_from_slice(&[0x80, 0x28, 0, 4]);
        d.extend_from_slice(&f.to_be_bytes());
    }
    set_len(&mut d, 0);
    d
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    SetLength(u16),
}

/// The attribute types of a STUN message, in order (walked by their lengths: a fixed offset
/// would take an address that happens to hold 0x8028 for a FINGERPRINT).
fn attribute_types(m: &[u8]) -> Vec<u16> {
    let mut types = Vec::new();
    let mut at = 20;
    while at + 4 <= m.len() {
        types.push(u16::from_be_bytes([m[at], m[at + 1]]));
        let len = usize::from(u16::from_be_bytes([m[at + 2], m[at + 3]]));
        at += 4 + len.div_ceil(4) * 4;
    }
    types
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..12).prop_map(Mutation::Append),
        any::<u16>().prop_map(Mutation::SetLength),
    ]
}

fn attribute() -> impl Strategy<Value = (u16, Vec<u8>)> {
    let ty = prop_oneof![
        Just(0x0006u16),
        Just(0x0008),
        Just(0x0003),
        Just(0x0024),
        Just(0x8022),
        Just(0x802A),
        any::<u16>(),
    ];
    (ty, proptest::collection::vec(any::<u8>(), 0..24))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_binding_requests_are_answered_or_refused_as_the_rfc_says(
        tx in any::<[u8; 12]>(),
        attrs in proptest::collection::vec(attribute(), 0..4),
        fingerprint in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 0..3),
        v6 in any::<bool>(),
    ) {
        let mut d = request(tx, &attrs, fingerprint);
        for m in &mutations {
            match m {
                Mutation::Flip(i, x) => {
                    let n = d.len().max(1);
                    if let Some(b) = d.get_mut(i % n) {
                        *b ^= x;
                    }
                }
                Mutation::Truncate(i) => d.truncate(i % (d.len() + 1)),
                Mutation::Append(b) => d.extend_from_slice(b),
                Mutation::SetLength(l) => {
                    if d.len() >= 4 {
                        d[2..4].copy_from_slice(&l.to_be_bytes());
                    }
                }
            }
        }
        let expect = reference(&d);
        let shared = Shared::new(Settings::default(), 1);
        let mut router = Router::new(shared.clone(), 0);
        let mut out = Out::default();
        let from: SocketAddr = if v6 {
            "[2001:db8::7]:4242".parse().unwrap()
        } else {
            "192.0.2.7:4242".parse().unwrap()
        };
        let mut input = d.clone();
        router.handle(&mut input, from, relay_core::clock::Now { ms: 0, unix: 0.0 }, &mut out);
        match expect {
            Expect::Answer { error, fingerprint } => {
                prop_assert_eq!(out.sends.len(), 1, "{:?}", expect);
                let answer = out.segments(&out.sends[0], &input).concat();
                prop_assert_eq!(out.sends[0].to, from);
                prop_assert_eq!(&answer[8..20], &d[8..20]);
                let len = u16::from_be_bytes([answer[2], answer[3]]) as usize;
                prop_assert_eq!(len + 20, answer.len());
                let has_fp = attribute_types(&answer).last() == Some(&0x8028);
                prop_assert_eq!(has_fp, fingerprint);
                if error {
                    prop_assert_eq!(&answer[..2], &[0x01, 0x11]);
                } else {
                    prop_assert_eq!(&answer[..2], &[0x01, 0x01]);
                    prop_assert_eq!(stun::mapped_address(&answer), Some(from));
                }
            }
            Expect::Refused(reason) => {
                prop_assert!(out.sends.is_empty());
                let r = Reason::ALL.iter().find(|r| r.as_str() == reason).unwrap();
                prop_assert_eq!(shared.metrics.refused(*r), 1, "{}", reason);
            }
            Expect::NotStun => {
                prop_assert_eq!(shared.metrics.refused(Reason::StunMalformed), 0);
                prop_assert_eq!(shared.metrics.refused(Reason::StunNotRequest), 0);
                prop_assert_eq!(shared.metrics.refused(Reason::StunFingerprint), 0);
            }
        }
    }
}
