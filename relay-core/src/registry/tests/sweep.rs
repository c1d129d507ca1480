//! Tests of the sweep, since only what names a name may keep it live.

use super::*;

#[test]
fn scan_finds_stale_and_keepalive_due() {
    let r = registry(1000);
    r.claim("old", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
    r.claim("quiet", a("1.1.1.1:2"), Proof::Token(None), 600, 10);
    r.claim("fresh", a("1.1.1.1:3"), Proof::Token(None), 1400, 10);
    let (stale, due) = scan_all(&r, 1500, 500);
    assert_eq!(stale, vec![Name::from("old")]);
    assert_eq!(due.len(), 1);
    assert_eq!(&*due[0].name, "quiet");
    // Just sent: not due again until another interval passes.
    assert!(scan_all(&r, 1600, 500).1.is_empty());
}

#[test]
fn only_a_message_naming_a_name_keeps_it_live() {
    let r = registry(1000);
    r.claim("s1", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
    r.claim("s2", a("1.1.1.1:1"), Proof::Token(None), 0, 10);
    // s1 speaks by name; s2 shares its address but is not named, so it goes stale.
    assert!(r.touch_sender("s1", a("1.1.1.1:1"), 900));
    let (stale, _) = scan_all(&r, 1500, 500);
    assert_eq!(stale, vec![Name::from("s2")]);
    assert!(r.reap("s2", 1500).is_some());
    assert!(r.reap("s1", 1500).is_none());
}
