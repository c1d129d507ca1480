//! Tests of names, sessions and packed addresses, whose sizes are a peer's cost.

use super::*;
use crate::registry::name::Repr;

#[test]
fn packed_addresses_round_trip() {
    for s in ["1.2.3.4:5", "[2001:db8::1]:65535", "[::1]:80", "0.0.0.0:0"] {
        assert_eq!(Packed::from(a(s)).get(), a(s));
    }
    let long = "x".repeat(INLINE_NAME + 1);
    for n in ["", "Alice", "é🙂", &long[1..], &long] {
        assert_eq!(&*Name::from(n), n);
    }
    let r = registry(60_000);
    r.claim("n", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
    assert!(r.announce_refresh("n", 0, 10_000));
    assert!(!r.announce_refresh("n", 9_000, 10_000));
    assert!(r.announce_refresh("n", 10_000, 10_000));
    assert!(!r.announce_refresh("nobody", 0, 10_000));
}

/// What a registered peer costs rests on these sizes (README, "Memory per peer"): a
/// regression here is one in bytes per peer, a million times over.
#[test]
fn a_peer_is_small() {
    assert!(size_of::<Name>() <= 16);
    assert!(size_of::<Packed>() <= 18);
    assert!(size_of::<Entry>() <= 48);
    assert!(size_of::<AtAddr>() <= 16);
    // The buckets of `peers`, `by_addr` and (signed names only) `keys`.
    assert!(size_of::<(Name, Entry)>() <= 64);
    assert!(size_of::<(Packed, AtAddr)>() <= 40);
    assert!(size_of::<(Name, (Key, u64))>() <= 56);
    // Inline names need no heap; a single name at an address needs no list.
    assert!(matches!(
        Name::from("a-15-byte-name!").0,
        Repr::Inline { .. }
    ));
    assert!(matches!(Name::from("a-16-byte-name!!").0, Repr::Heap(_)));
    let r = registry(60_000);
    for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
        r.claim(n, a("1.1.1.1:1"), Proof::Token(None), 0, 10);
        r.claim(
            &format!("{n}{i}"),
            a(&format!("2.2.2.{i}:2")),
            Proof::Token(None),
            0,
            10,
        );
    }
    let at = |addr: &str| {
        r.by_addr
            .get(&a(addr).into(), |_, at| matches!(at, AtAddr::One(_)))
    };
    assert_eq!(at("2.2.2.0:2"), Some(true));
    assert_eq!(at("1.1.1.1:1"), Some(false));
    // Back to one name, the address keeps it inline again; the order stays oldest first.
    let token = r.session_at("a", a("1.1.1.1:1"), 0);
    r.unregister("a", a("1.1.1.1:1"), token, 0).unwrap();
    assert_eq!(
        names_at(&r, a("1.1.1.1:1")),
        [Name::from("b"), Name::from("c")]
    );
    r.reap("b", 60_001).unwrap();
    assert_eq!(at("1.1.1.1:1"), Some(true));
    assert_eq!(r.only_name_at(a("1.1.1.1:1")).unwrap(), Name::from("c"));
}

#[test]
fn session_round_trips() {
    let t = Tokens { key: [7; 32] };
    assert_ne!(t.of(1), t.of(2));
    assert_ne!(t.of(u64::MAX), t.of(0));
    assert_ne!(t.of(1), Tokens { key: [8; 32] }.of(1));
    let s = t.of(1);
    assert_eq!(Session::parse(&s.to_hex()), Some(s));
    assert_eq!(Session::parse("xyz"), None);
    let signed = format!("+{}", &s.to_hex()[1..]);
    assert_eq!(Session::parse(&signed), None);
}
