//! The channel table's tests.

use super::*;

fn table(max: usize) -> Channels {
    Channels::new(&Settings {
        max_channels: max,
        max_channels_per_host: 5,
        max_channels_total: 4,
        ..Settings::default()
    })
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn a_pair_routes_both_ways_from_its_owners_only() {
    let t = table(8);
    let (alice, bob) = (Name::from("alice"), Name::from("bob"));
    let (aa, ba) = (a("192.0.2.1:1"), a("198.51.100.2:2"));
    let b = t.bind(&alice, aa, &bob, ba).unwrap();
    assert!(b.new && b.mine != 0 && b.theirs != 0 && b.mine != b.theirs);
    let again = t.bind(&bob, ba, &alice, aa).unwrap();
    assert_eq!(
        (again.mine, again.theirs, again.new),
        (b.theirs, b.mine, false)
    );
    let r = t.route(b.mine, aa, 5000).unwrap();
    assert_eq!((r.to, r.number), (ba, b.theirs));
    assert_eq!(r.touch.as_deref(), Some("alice"));
    assert_eq!(
        t.route(b.mine, aa, 5050).unwrap().touch,
        None,
        "a second apart"
    );
    assert_eq!(t.route(b.theirs, ba, 0).unwrap().to, aa);
    assert_eq!(t.route(b.mine, ba, 0), Err(Miss::WrongSource));
    assert_eq!(t.route(b.mine ^ 1, aa, 0), Err(Miss::Gone));
    // Bob moves: his channel follows, both ways.
    let moved = a("203.0.113.9:9");
    assert!(t.on_event(Event::Moved("bob", moved)).is_empty());
    assert_eq!(t.route(b.mine, aa, 0).unwrap().to, moved);
    assert_eq!(t.route(b.theirs, ba, 0), Err(Miss::WrongSource));
    assert_eq!(t.route(b.theirs, moved, 0).unwrap().to, aa);
    // Only the owner unbinds; the other end is told.
    assert_eq!(t.unbind("bob", b.mine), None);
    let closed = t.unbind("alice", b.mine).unwrap();
    assert_eq!((closed.to, closed.number), (moved, b.theirs));
    assert_eq!(t.route(b.theirs, moved, 0), Err(Miss::Gone));
    assert!(t.is_empty());
}

#[test]
fn channels_end_with_either_peer_and_are_bounded() {
    let t = table(2);
    let n = |s: &str| Name::from(s);
    let host = |i: u8| a(&format!("192.0.2.{i}:1"));
    t.bind(&n("a"), host(1), &n("b"), host(2)).unwrap();
    t.bind(&n("a"), host(1), &n("c"), host(3)).unwrap();
    assert_eq!(
        t.bind(&n("a"), host(1), &n("d"), host(4)),
        Err(Full::Limit),
        "two bound by each peer"
    );
    // What others bind to `a` counts against them, not `a` (up to four times its own).
    t.bind(&n("d"), host(4), &n("a"), host(1)).unwrap();
    t.bind(&n("b"), host(2), &n("c"), host(3)).unwrap();
    let closed = t.on_event(Event::Removed("a"));
    let mut told: Vec<&str> = closed.iter().map(|c| &*c.name).collect();
    told.sort_unstable();
    assert_eq!(told, ["b", "c", "d"]);
    assert_eq!(t.len(), 1);
    assert_eq!(t.on_event(Event::Replaced("c")).len(), 1);
    assert!(t.is_empty());
    // `a`'s quota came back with its channels.
    t.bind(&n("a"), host(1), &n("b"), host(2)).unwrap();
    t.bind(&n("a"), host(1), &n("c"), host(3)).unwrap();
    assert!(t.on_event(Event::Removed("a")).len() == 2 && t.is_empty());
    // In all: four pairs.
    let same = |p: u16| a(&format!("192.0.2.9:{p}"));
    for p in 1..=4 {
        let (x, y) = (format!("h{p}"), format!("far{p}"));
        t.bind(&n(&x), same(p), &n(&y), host(100 + p as u8))
            .unwrap();
    }
    assert_eq!(t.len(), 4);
    assert_eq!(
        t.bind(&n("h9"), same(9), &n("far9"), host(109)),
        Err(Full::Limit),
        "four in all"
    );
    t.on_event(Event::Removed("far1"));
    t.bind(&n("h5"), same(5), &n("far5"), host(105)).unwrap();
    let t = table(1);
    for p in 1..=5u16 {
        let far = format!("far{p}");
        t.bind(&n(&far), host(20 + p as u8), &n("x"), host(1)).ok();
    }
    assert_eq!(t.len(), 4, "x may be bound by four times its own quota");
}

#[test]
fn a_retune_below_what_is_bound_keeps_the_pairs_and_refuses_new_ones() {
    // 64 per peer; no bound per host or in all.
    let roomy = Settings::default();
    let t = Channels::new(&roomy);
    let n = |s: &str| Name::from(s);
    let host = |i: u8| a(&format!("192.0.2.{i}:1"));
    let mut numbers = Vec::new();
    for i in 2..=6 {
        let b = t
            .bind(&n("a"), host(1), &n(&format!("p{i}")), host(i))
            .unwrap();
        numbers.push(b.mine);
    }
    // Lowered to two per peer, host and relay: the five pairs stay, and route.
    let low = Settings {
        max_channels: 2,
        max_channels_per_host: 2,
        max_channels_total: 2,
        ..Settings::default()
    };
    t.retune(&low);
    assert_eq!(t.len(), 5);
    for &m in &numbers {
        assert!(t.route(m, host(1), 0).is_ok());
    }
    let bind = |me: &str, at: u8, peer: &str, to: u8| t.bind(&n(me), host(at), &n(peer), host(to));
    assert_eq!(bind("a", 1, "p7", 7), Err(Full::Limit), "the peer's bound");
    assert_eq!(bind("q", 9, "r", 10), Err(Full::Limit), "the relay's bound");
    // A pair bound already is found, not refused.
    assert!(!bind("a", 1, "p2", 2).unwrap().new);
    // Under the bound again, one more fits; then none.
    for &m in &numbers[..4] {
        t.unbind("a", m).unwrap();
    }
    assert_eq!(t.len(), 1);
    assert!(bind("q", 9, "r", 10).unwrap().new);
    assert_eq!(bind("s", 11, "u", 12), Err(Full::Limit));
    // Raised again: binds fit again, and the counts are right.
    t.retune(&roomy);
    assert!(bind("a", 1, "p7", 7).unwrap().new);
    assert!(bind("s", 11, "u", 12).unwrap().new);
    assert_eq!(t.len(), 4);
    for name in ["a", "q", "s"] {
        t.on_event(Event::Removed(name));
    }
    assert!(t.is_empty());
}
