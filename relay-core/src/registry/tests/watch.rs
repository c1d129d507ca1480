//! Tests of watch lists and their bounds, which a reload may lower below what is held.

use super::*;

#[test]
fn watchers_follow_registrations() {
    let r = registry(1000);
    let w = a("1.1.1.1:1");
    r.claim("w", w, Proof::Token(None), 0, 10);
    let names: Vec<Name> = vec!["x".into(), "y".into(), "z".into()];
    assert_eq!(r.watch("w", w, &names, 2), Some(1));
    assert_eq!(r.watch("w", w, &names[..1], 2), Some(0));
    assert_eq!(r.watchers_of("x", 0)[0].addr, w);
    assert!(r.watchers_of("z", 0).is_empty());
    assert_eq!(r.watch("nobody", w, &names, 2), None);
    assert_eq!(r.watch_entries(), 2);
    assert_eq!(r.unwatch("w", &names[..1]), Some(vec![Name::from("y")]));
    assert_eq!(r.watch_entries(), 1);
    let token = r.session_at("w", w, 0);
    r.unregister("w", w, token, 0).unwrap();
    assert!(r.watchers_of("y", 0).is_empty());
    assert!(r.watchers.is_empty());
    assert_eq!(r.watch_entries(), 0);
}

#[test]
fn watch_entries_are_bounded_per_host_and_in_all() {
    let r = Registry::new(&Settings {
        peer_timeout_ms: 1000,
        max_watch_total: 5,
        max_watch_per_host: 3,
        ..Settings::default()
    });
    let names: Vec<Name> = (0..10)
        .map(|i| Name::from(format!("n{i}").as_str()))
        .collect();
    // Two registrations of one host (ports differ) share its three entries.
    for (n, p) in [("a", "1.1.1.1:1"), ("b", "1.1.1.1:2"), ("c", "2.2.2.2:1")] {
        r.claim(n, a(p), Proof::Token(None), 0, 10);
    }
    assert_eq!(r.watch("a", a("1.1.1.1:1"), &names[..2], 100), Some(0));
    assert_eq!(r.watch("b", a("1.1.1.1:2"), &names[..2], 100), Some(1));
    assert_eq!(
        r.watch("c", a("2.2.2.2:1"), &names, 100),
        Some(8),
        "5 in all"
    );
    assert_eq!(r.watch_entries(), 5);
    // Entries come back when the watcher goes.
    r.reap("a", 5000).unwrap();
    assert_eq!(r.watch_entries(), 3);
    assert_eq!(r.watch("b", a("1.1.1.1:2"), &names[2..4], 100), Some(0));
}

#[test]
fn one_network_holds_a_share_of_the_watches_and_of_each_names_watchers() {
    let r = Registry::new(&Settings {
        max_watch_total: 16 * 10,
        max_watch_per_host: 10,
        ..Settings::default()
    });
    let names: Vec<Name> = (0..8)
        .map(|i| Name::from(format!("n{i}").as_str()))
        .collect();
    // Two hosts of one /24 share its ten entries; a host elsewhere has ten of its own.
    for (n, p) in [("a", "1.1.1.1:1"), ("b", "1.1.1.2:1"), ("c", "2.2.2.2:1")] {
        r.claim(n, a(p), Proof::Token(None), 0, 10);
    }
    assert_eq!(r.watch("a", a("1.1.1.1:1"), &names, 100), Some(0));
    assert_eq!(r.watch("b", a("1.1.1.2:1"), &names, 100), Some(6));
    assert_eq!(r.watch("c", a("2.2.2.2:1"), &names, 100), Some(0));
    // Entries come back to the network when its watcher goes.
    let token = r.session_at("a", a("1.1.1.1:1"), 0);
    r.unregister("a", a("1.1.1.1:1"), token, 0).unwrap();
    assert_eq!(r.watch("b", a("1.1.1.2:1"), &names, 100), Some(0));
    // One name's watchers: 64 of one /24 or one /48 (hosts of many /64s), then others.
    let r = Registry::new(&Settings::default());
    let star = [Name::from("star")];
    for v6 in [false, true] {
        let at = |i: usize| match v6 {
            false => SocketAddr::from(([10, 0, 0, i as u8], 1)),
            true => SocketAddr::from((
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 1),
                1,
            )),
        };
        let tag = if v6 { "v6" } else { "v4" };
        for i in 0..=MAX_WATCHERS_PER_NETWORK {
            let w = format!("{tag}-{i}");
            r.claim(&w, at(i + 1), Proof::Token(None), 0, usize::MAX);
            let left_out = r.watch(&w, at(i + 1), &star, 10).unwrap();
            let beyond = i == MAX_WATCHERS_PER_NETWORK;
            assert_eq!(left_out, usize::from(beyond), "{tag} watcher {i}");
        }
    }
    for (n, p) in [("x", "10.0.1.1:1"), ("y", "[2001:db8:2::1]:1")] {
        r.claim(n, a(p), Proof::Token(None), 0, usize::MAX);
        assert_eq!(r.watch(n, a(p), &star, 10), Some(0), "{p} elsewhere");
    }
    assert_eq!(r.watchers_of("star", 0).len(), 2 * 64 + 2);
}

#[test]
fn a_retune_below_what_is_held_keeps_it_and_refuses_more() {
    // The defaults bound neither watches in all or per host nor names per address.
    let r = registry(1000);
    let names: Vec<Name> = (0..6)
        .map(|i| Name::from(format!("n{i}").as_str()))
        .collect();
    let (here, there) = (a("1.1.1.1:1"), a("2.2.2.2:2"));
    for n in ["a", "b", "c"] {
        r.claim(n, here, Proof::Token(None), 0, 10);
    }
    r.claim("w", there, Proof::Token(None), 0, 10);
    assert_eq!(r.watch("a", here, &names[..4], 100), Some(0));
    assert_eq!(r.watch("w", there, &names[..2], 100), Some(0));
    let low = Settings {
        max_peers: 2,
        max_watch: 1,
        max_watch_total: 3,
        max_watch_per_host: 2,
        max_names_per_address: 2,
        ..Settings::default()
    };
    r.retune(&low);
    assert_eq!((r.max_peers(), r.max_watch()), (2, 1));
    // What is held stays: four names, six watch entries, three names at `here`.
    assert_eq!((r.len(), r.watch_entries()), (4, 6));
    assert_eq!(names_at(&r, here).len(), 3);
    assert!(matches!(
        r.claim("a", here, Proof::Token(None), 1, 10),
        Claim::Refreshed(_)
    ));
    // New entries are refused, until enough are gone to be under the bound.
    assert_eq!(
        r.claim("d", here, Proof::Token(None), 1, 10),
        Claim::AddressFull
    );
    assert_eq!(r.watch("w", there, &names[2..3], 100), Some(1));
    let token = r.session_at("c", here, 1);
    r.unregister("c", here, token, 1).unwrap();
    let token = r.session_at("b", here, 1);
    r.unregister("b", here, token, 1).unwrap();
    assert_eq!(r.unwatch("a", &names[..4]), Some(Vec::new()));
    assert_eq!(r.watch_entries(), 2);
    assert!(matches!(
        r.claim("d", here, Proof::Token(None), 2, 10),
        Claim::Joined(_)
    ));
    assert_eq!(r.watch("a", here, &names[..2], 100), Some(1), "3 in all");
    assert_eq!(r.watch_entries(), 3);
    // Raised back to no bound, the counts are as they were and more fits.
    r.retune(&Settings::default());
    assert_eq!(r.watch("w", there, &names[2..6], 100), Some(0));
    assert_eq!(r.watch_entries(), 7);
    assert!(matches!(
        r.claim("e", here, Proof::Token(None), 2, 10),
        Claim::Joined(_)
    ));
    assert_eq!(names_at(&r, here).len(), 3);
    for n in ["a", "d", "e", "w"] {
        r.reap(n, 5000).unwrap();
    }
    assert_eq!((r.len(), r.watch_entries()), (0, 0));
}

#[test]
fn watchers_of_a_name_and_names_at_an_address_are_bounded() {
    let r = Registry::new(&Settings {
        max_names_per_address: 3,
        ..Settings::default()
    });
    let star = [Name::from("star")];
    // A thousand and more watchers of one name: the last are refused, and what one reap
    // walks stays bounded.
    for i in 0..=MAX_WATCHERS {
        let at = SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 1));
        r.claim(&format!("w{i}"), at, Proof::Token(None), 0, usize::MAX);
        let left_out = r.watch(&format!("w{i}"), at, &star, 10).unwrap();
        assert_eq!(left_out, usize::from(i == MAX_WATCHERS), "watcher {i}");
    }
    assert_eq!(r.watchers.get("star").unwrap().len(), MAX_WATCHERS);
    assert_eq!(r.watch_entries(), MAX_WATCHERS);
    // One request looks at no more names than a watcher may hold.
    let many: Vec<Name> = (0..50)
        .map(|i| Name::from(format!("m{i}").as_str()))
        .collect();
    assert_eq!(r.watch("w0", a("10.0.0.1:1"), &many, 10), Some(41));
    // An address holds at most three names; refreshes there and moves away still work.
    let here = a("9.9.9.9:9");
    for n in ["a", "b", "c"] {
        assert!(matches!(
            r.claim(n, here, Proof::Token(None), 0, usize::MAX),
            Claim::Joined(_)
        ));
    }
    assert_eq!(
        r.claim("d", here, Proof::Token(None), 0, usize::MAX),
        Claim::AddressFull
    );
    assert!(matches!(
        r.claim("a", here, Proof::Token(None), 1, usize::MAX),
        Claim::Refreshed(_)
    ));
    let t = r.session_at("e", a("8.8.8.8:8"), 0);
    assert!(t.is_none());
    r.claim("e", a("8.8.8.8:8"), Proof::Token(None), 0, usize::MAX);
    let t = r.session_at("e", a("8.8.8.8:8"), 0);
    assert_eq!(
        r.claim("e", here, Proof::Token(t), 2, usize::MAX),
        Claim::AddressFull
    );
}
