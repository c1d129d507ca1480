//! Tests of claims, tokens and trust: who may hold a name is what a forger is after.

use super::*;

#[test]
fn claim_rules() {
    let r = registry(1000);
    let Claim::Joined(s) = r.claim("alice", a("1.1.1.1:1"), Proof::Token(None), 0, 10) else {
        panic!()
    };
    assert_eq!(
        r.claim("alice", a("1.1.1.1:1"), Proof::Token(None), 10, 10),
        Claim::Refreshed(s)
    );
    assert_eq!(
        r.claim("alice", a("2.2.2.2:2"), Proof::Token(None), 20, 10),
        Claim::InUse
    );
    // A move issues a new token.
    let Claim::Moved(moved) = r.claim("alice", a("2.2.2.2:2"), Proof::Token(Some(s)), 30, 10)
    else {
        panic!()
    };
    assert_ne!(moved, s);
    assert_eq!(r.addr_of("alice", 30), Some(a("2.2.2.2:2")));
    assert!(!r.has_addr(a("1.1.1.1:1")));
    assert_eq!(names_at(&r, a("2.2.2.2:2")).len(), 1);
    // Stale: anyone may take it, with a new session.
    match r.claim("alice", a("3.3.3.3:3"), Proof::Token(None), 2000, 10) {
        Claim::Replaced(s2) => assert_ne!(s2, s),
        c => panic!("{c:?}"),
    }
    assert!(!r.has_addr(a("2.2.2.2:2")));
    assert_eq!(r.len(), 1);
}

#[test]
fn full_registry_refuses_new_names_only() {
    let r = registry(1000);
    assert!(matches!(
        r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 0, 1),
        Claim::Joined(_)
    ));
    assert_eq!(
        r.claim("b", a("1.1.1.1:1"), Proof::Token(None), 0, 1),
        Claim::Full
    );
    assert!(matches!(
        r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 0, 1),
        Claim::Refreshed(_)
    ));
}

#[test]
fn sender_check_and_liveness() {
    let r = registry(1000);
    r.claim("a", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
    assert!(r.touch_sender("a", a("1.1.1.1:1"), 900));
    assert!(!r.touch_sender("a", a("1.1.1.1:2"), 900));
    assert!(r.addr_of("a", 1900).is_some());
    assert!(r.addr_of("a", 1901).is_none());
    assert!(r.reap("a", 1500).is_none());
    let gone = r.reap("a", 1901).unwrap();
    assert_eq!(&*gone.name, "a");
    assert!(r.is_empty());
    assert!(!r.has_addr(a("1.1.1.1:1")));
}

#[test]
fn a_registration_is_trusted_once_its_token_comes_back_from_its_address() {
    let r = registry(1000);
    let (here, there) = (a("1.1.1.1:1"), a("2.2.2.2:2"));
    let Claim::Joined(s) = r.claim("a", here, Proof::Token(None), 0, 10) else {
        panic!()
    };
    assert!(!trusted(&r, "a"));
    r.claim("a", here, Proof::Token(None), 1, 10);
    assert!(
        !trusted(&r, "a"),
        "a refresh without the token proves nothing"
    );
    assert!(
        r.authenticate("a", there, Some(s), 1).is_none(),
        "the token from elsewhere"
    );
    assert_eq!(
        r.authenticate("a", here, Some(s), 1),
        Some(true),
        "its first proof"
    );
    assert_eq!(r.authenticate("a", here, Some(s), 1), Some(false));
    assert!(trusted(&r, "a"));
    // Shown from elsewhere, the token moves the name, issuing a new token sent there; the
    // new address is not trusted until it shows that one, and the old token is dead.
    let Claim::Moved(s2) = r.claim("a", there, Proof::Token(Some(s)), 2, 10) else {
        panic!()
    };
    assert_ne!(s2, s);
    assert!(!trusted(&r, "a"));
    assert!(r.authenticate("a", there, Some(s), 3).is_none());
    assert!(!trusted(&r, "a"));
    assert_eq!(
        r.claim("a", here, Proof::Token(Some(s)), 3, 10),
        Claim::InUse,
        "the old token moves nothing any more"
    );
    assert!(r.authenticate("a", there, Some(s2), 4).is_some());
    assert!(trusted(&r, "a"));
    // Trust lasts a timeout from the last authenticated request: unauthenticated refreshes
    // (which anyone can forge from the address) keep the name live but not trusted.
    r.claim("a", there, Proof::Token(None), 900, 10);
    r.peers.get("a", |_, e| {
        assert!(r.trusted(e, 1000));
        assert!(!r.trusted(e, 2_500));
    });
}

#[test]
fn tokens_never_repeat_however_often_a_name_moves() {
    // 16-bit move counters once wrapped after 65,536 moves and revived the first token.
    let r = registry(1_000_000);
    let mut seen = std::collections::HashSet::new();
    let Claim::Joined(mut t) = r.claim("m", a("1.1.1.1:1"), Proof::Token(None), 0, 10) else {
        panic!()
    };
    let first = t;
    seen.insert(t.0);
    for i in 0..70_000u32 {
        let to = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 2 + (i % 2) as u16));
        let Claim::Moved(next) = r.claim("m", to, Proof::Token(Some(t)), 1, 10) else {
            panic!("move {i}")
        };
        assert!(seen.insert(next.0), "token repeated at move {i}");
        t = next;
    }
    let at = r.addr_of("m", 1).unwrap();
    assert!(r.authenticate("m", at, Some(first), 2).is_none());
    assert_eq!(
        r.claim("m", a("9.9.9.9:9"), Proof::Token(Some(first)), 2, 10),
        Claim::InUse
    );
}

#[test]
fn a_signed_name_is_bound_to_its_key_while_live() {
    let r = registry(1000);
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let here = a("1.1.1.1:1");
    assert!(matches!(
        r.claim("s", here, Proof::Key(k1, 0), 0, 10),
        Claim::Joined(_)
    ));
    assert!(trusted(&r, "s"), "a signed claim echoed a cookie sent here");
    // Another key, or an unsigned claim elsewhere even with the token, cannot take it.
    let there = a("2.2.2.2:2");
    assert_eq!(r.claim("s", there, Proof::Key(k2, 0), 1, 10), Claim::InUse);
    let token = r.session_at("s", here, 1);
    assert_eq!(
        r.claim("s", there, Proof::Token(token), 1, 10),
        Claim::InUse
    );
    // The same key moves it; an unsigned refresh where it lives keeps it live.
    assert!(matches!(
        r.claim("s", there, Proof::Key(k1, 0), 2, 10),
        Claim::Moved(_)
    ));
    assert!(matches!(
        r.claim("s", there, Proof::Token(None), 3, 10),
        Claim::Refreshed(_)
    ));
    // Unregistering it takes its address and its token, not either.
    let token = r.session_at("s", there, 3);
    assert!(r.unregister("s", there, None, 3).is_none());
    assert!(r.unregister("s", here, token, 3).is_none());
    assert!(r.unregister("s", there, token, 3).is_some());
    assert!(matches!(
        r.claim("s", there, Proof::Key(k1, 0), 4, 10),
        Claim::Joined(_)
    ));
    // Once stale, the binding goes with it.
    assert!(matches!(
        r.claim("s", here, Proof::Key(k2, 0), 2000, 10),
        Claim::Replaced(_)
    ));
    assert_eq!(r.keys.get("s", |_, b| b.0), Some(k2));
    // A signature over an older cookie than the last is a replay, even by the right key.
    let elsewhere = a("3.3.3.3:3");
    assert!(matches!(
        r.claim("s", here, Proof::Key(k2, 100), 2001, 10),
        Claim::Refreshed(_)
    ));
    assert_eq!(
        r.claim("s", elsewhere, Proof::Key(k2, 99), 2002, 10),
        Claim::InUse
    );
}
