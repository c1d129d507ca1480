//! The budgets' unit tests, kept together since one send is settled by several budgets at once.

use super::*;

fn settings() -> Settings {
    Settings {
        reply_credit: 2048,
        reply_prefix_credit: 4096,
        reply_global_credit: 1 << 20,
        fanout_allowance: 65_536,
        presence_rate: 4096,
        ..Settings::default()
    }
}

#[test]
fn replies_beyond_the_credit_are_paid_by_what_the_host_sends() {
    let b = Budgets::new(&settings());
    let victim: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(b.spend_reply(victim, 2000, 0));
    assert!(!b.spend_reply(victim, 100, 0), "the credit is spent");
    b.earn_replies(victim, 60, 0);
    assert!(b.spend_reply(victim, 100, 0), "48 left and 60 earned");
    assert!(!b.spend_reply(victim, 10, 0));
    // Neighbours have credits of their own but share the /24's 4 KiB.
    let neighbour: IpAddr = "192.0.2.2".parse().unwrap();
    assert!(b.spend_reply(neighbour, 2000, 0));
    let third: IpAddr = "192.0.2.3".parse().unwrap();
    assert!(!b.spend_reply(third, 100, 0), "the prefix is spent");
    // A refusal by the prefix leaves the host's balance as it was.
    assert_eq!(b.reply_host.available(third), 2048);
    // Courtesies and announcements keep their reserves.
    let other: IpAddr = "198.51.100.1".parse().unwrap();
    assert!(!b.spend_reply(other, 2048 - 1535, COURTESY_RESERVE));
    assert!(b.spend_reply(other, 2048 - 1536, COURTESY_RESERVE));
    assert!(!b.spend_reply(other, 1024 + 1, RESERVE));
    assert!(b.spend_reply(other, 1024, RESERVE));
}

#[test]
fn the_relay_pool_pays_only_what_a_network_did_not_earn() {
    let s = Settings {
        reply_global_credit: 8192,
        ..settings()
    };
    let b = Budgets::new(&s);
    let earner: IpAddr = "198.51.100.1".parse().unwrap();
    b.earn_replies(earner, 3000, 0);
    // Forgers' networks spend their credits until the relay's pool is empty.
    let mut spent = 0;
    for net in 0..10u8 {
        let ip = IpAddr::from([203, 0, net, 1]);
        while b.spend_reply(ip, 1000, 0) {
            spent += 1000;
        }
    }
    // The pool's credit and what was earned in the relay (it earns what every network does).
    assert_eq!(spent, 11_000);
    let fresh: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(!b.spend_reply(fresh, 200, 0), "nothing left for credit");
    assert!(b.reply_available(fresh) < 200);
    // What a network earned it spends whatever others did, taking nothing from the pool.
    let other: IpAddr = "198.51.100.2".parse().unwrap();
    b.earn_replies(other, 2000, 0);
    assert!(b.reply_available(other) >= 2000);
    let pool = b.reply_global.available(());
    assert!(b.spend_reply(other, 2000, 0));
    assert_eq!(b.reply_global.available(()), pool);
}

/// Settles one 100-byte announcement to `to` caused by `cause`; whether it was sent.
fn announce(b: &Budgets, to: SocketAddr, cause: Cause, c: &Counters) -> bool {
    let mut out = Out::default();
    out.buf.extend_from_slice(&[b'x'; 100]);
    out.send_range(to, 0..100, Kind::Announce, true);
    b.settle(&mut out, 0, cause, None, 0, c);
    out.sends.len() == 1
}

#[test]
fn unproven_news_of_a_neighbour_waits_for_its_proof() {
    let b = Budgets::new(&settings());
    let c = Counters::default();
    let victim: SocketAddr = "192.0.2.1:5".parse().unwrap();
    let neighbour: IpAddr = "192.0.2.2".parse().unwrap();
    let same_host: IpAddr = "192.0.2.1".parse().unwrap();
    let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
    for from in [neighbour, same_host] {
        assert!(!announce(&b, victim, Cause::Unauthenticated(from), &c));
    }
    assert_eq!(
        b.fanout.available(host_key(neighbour)),
        65_536,
        "nothing spent"
    );
    // Proven, or from another network, it is paid by the causing host's fan-out.
    assert!(announce(&b, victim, Cause::Authenticated(neighbour), &c));
    assert!(announce(&b, victim, Cause::Unauthenticated(elsewhere), &c));
    assert_eq!(b.fanout.available(host_key(elsewhere)), 65_536 - 100);
    // To an untrusted neighbour it is paid from the recipient's reply budget, as ever; a
    // withheld one leaves the payer's fan-out as it was.
    let mut paid = 0;
    let mut out = Out::default();
    out.buf.extend_from_slice(&[b'x'; 100]);
    for _ in 0..40 {
        out.sends.clear();
        out.send_range(victim, 0..100, Kind::Announce, false);
        b.settle(&mut out, 0, Cause::Unauthenticated(neighbour), None, 0, &c);
        paid += out.sends.len();
    }
    assert_eq!(paid, 15, "2 KiB less the reserve");
    assert_eq!(
        b.fanout.available(host_key(neighbour)),
        65_536 - 100 - 15 * 100
    );
}

#[test]
fn earnings_are_capped() {
    let b = Budgets::new(&settings());
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    b.earn_replies(ip, 10_000_000, 0);
    b.earn_fanout(ip, 10_000_000);
    assert_eq!(b.reply_host.available(ip), 16 * 2048);
    assert_eq!(b.fanout.available(host_key(ip)), 65_536);
}

#[test]
fn a_retune_changes_credits_keeping_what_each_balance_used() {
    let b = Budgets::new(&settings());
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(b.spend_reply(ip, 1500, 0));
    // Lowered below what the host used: it may spend nothing until it earns it back.
    b.retune(&Settings {
        reply_credit: 1000,
        ..settings()
    });
    assert_eq!(b.reply_host.available(ip), -500);
    assert!(!b.spend_reply(ip, 1, 0));
    b.earn_replies(ip, 600, 0);
    assert!(
        b.spend_reply(ip, 100, 0),
        "earned back past the lower credit"
    );
    assert!(!b.spend_reply(ip, 1, 0));
    // The cap follows the credit: 16 of the new one, not of the old.
    b.earn_replies(ip, 10_000_000, 0);
    assert_eq!(b.reply_host.available(ip), 16 * 1000);
}

#[test]
fn a_credit_of_0_lifts_a_limit_and_a_retune_can_set_it_again() {
    let off = Settings::default();
    let b = Budgets::new(&off);
    let (ip, other): (IpAddr, IpAddr) = (
        "192.0.2.1".parse().unwrap(),
        "198.51.100.1".parse().unwrap(),
    );
    assert!(b.spend_reply(ip, 1 << 30, 0), "no limit");
    assert_eq!(b.fanout_allowance(), 0);
    // Set at run time, each host has a credit of its own (the table was full size).
    b.retune(&settings());
    assert_eq!(b.fanout_allowance(), 65_536);
    assert!(b.spend_reply(ip, 2000, 0));
    assert!(!b.spend_reply(ip, 100, 0), "the new credit is spent");
    assert!(b.spend_reply(other, 2000, 0), "another host's is not");
    assert!(b.fanout.spend(host_key(ip), 65_536, 0));
    assert!(!b.fanout.spend(host_key(ip), 1, 0));
    b.retune(&off);
    assert!(b.spend_reply(ip, 1 << 30, 0), "lifted again");
    assert!(b.fanout.spend(host_key(ip), 1 << 30, 0));
}

#[test]
fn hosts_of_one_ipv6_64_share_limits() {
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(host_key(a), host_key(b));
    assert_ne!(host_key(a), host_key(c));
}

#[test]
fn registrations_are_limited_per_source_address() {
    let s = Settings {
        registration_rate: 1,
        ..settings()
    };
    let budgets = Budgets::new(&s);
    let a: SocketAddr = "192.0.2.7:1000".parse().unwrap();
    assert_eq!((0..20).filter(|_| budgets.register(a, 0)).count(), 10);
    // Another port of the host (another user behind its NAT) is not refused for it.
    assert!(budgets.register("192.0.2.7:1001".parse().unwrap(), 0));
    assert!(budgets.register(a, 1000), "a second later, one more");
}

#[test]
fn signature_checks_are_limited_per_56_per_48_and_in_the_relay() {
    let s = Settings {
        registration_rate: 1,
        signature_rate: 100,
        ..settings()
    };
    let b = Budgets::new(&s);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // A /56 spends its own ten, whichever of its /64s ask.
    let n = (0..20)
        .filter(|i| b.check_signature(ip(&format!("2001:db8:1:{i:x}::1")), 0))
        .count();
    assert_eq!(n, 10);
    assert!(
        !b.check_signature(ip("2001:db8:1:ff::1"), 0),
        "the same /56"
    );
    // Its /48 has eighty: the other /56s of it share the seventy left.
    let n = (1..20)
        .filter(|i| b.check_signature(ip(&format!("2001:db8:1:{i:x}00::1")), 0))
        .count();
    assert_eq!(n, 19);
    let n = (20..200)
        .filter(|i| b.check_signature(ip(&format!("2001:db8:1:{:x}00::1", i % 256)), 0))
        .count();
    assert_eq!(n, 80 - 10 - 19);
    // IPv4: an address, then its /24; then the relay's thousand run out.
    assert_eq!(
        (0..20)
            .filter(|_| b.check_signature(ip("192.0.2.1"), 0))
            .count(),
        10
    );
    let mut spent = 80 + 10;
    for net in 0..200u32 {
        for host in 1..=8u32 {
            spent +=
                usize::from(b.check_signature(ip(&format!("10.{}.{net}.{host}", net / 256)), 0));
        }
    }
    assert_eq!(spent, 1000, "the relay's burst");
    assert!(
        b.check_signature(ip("198.51.100.1"), 100),
        "refilled a tenth of a second later"
    );
}

/// Balances taken over are those a relay of these credits and rates could hold: what a
/// crafted image (or a relay of higher rates) holds beyond them would keep a budget
/// refusing for ever (the relay-wide reply budget: every unauthenticated reply withheld).
#[test]
fn restored_balances_are_within_what_these_limits_hold() {
    let s = Settings {
        registration_rate: 1,
        ..settings()
    };
    let mut image = Budgets::new(&s).export();
    image.reply_global.slots[0] = i64::MAX as u64;
    image.reply_host.slots.fill(i64::MAX as u64);
    // Every host's registrations used to the top, refilled at the start of the clock.
    image.registrations.slots.fill(u64::from(u32::MAX) << 32);
    let mut b = Budgets::new(&s);
    b.restore(image, 0);
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(!b.spend_reply(ip, 100, 0), "spent stays spent");
    b.earn_replies(ip, 600, 0);
    assert!(
        b.spend_reply(ip, 100, 0),
        "earned back, and still nothing to spend"
    );
    let from = SocketAddr::new(ip, 9);
    assert!(!b.register(from, 0));
    assert!(
        b.register(from, 10_000),
        "a burst's time later, still no registration"
    );
    // Banked credit beyond the cap is not taken over either.
    let mut image = Budgets::new(&s).export();
    image.reply_host.slots.fill(i64::MIN as u64);
    let mut b = Budgets::new(&s);
    b.restore(image, 0);
    assert_eq!(b.reply_host.available(ip), 16 * 2048);
}

#[test]
fn misses_are_limited_per_host_and_network_and_hits_are_free() {
    let m = Misses::new(&Settings {
        miss_rate: 1,
        ..Settings::default()
    });
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let host = ip("192.0.2.1");
    // Hits cost nothing; a host's burst of misses is 256.
    assert!(m.reserve(host, true, 200, 0));
    m.hits(host, true, 200, 200);
    assert!(m.reserve(host, true, 256, 0));
    m.hits(host, true, 256, 0);
    assert!(!m.reserve(host, true, 1, 0));
    assert!(
        m.reserve(host, false, 1, 0),
        "unauthenticated requests' own bucket"
    );
    assert!(m.reserve(host, true, 1, 1000), "one a second");
    m.hits(host, true, 1, 0);
    // Its /24 has four times that: 1,024, of which 253 are spent (4 refilled).
    for h in 2..=4 {
        assert!(m.reserve(ip(&format!("192.0.2.{h}")), true, 256, 1000));
    }
    assert!(!m.reserve(ip("192.0.2.5"), true, 4, 1000));
    assert!(m.reserve(ip("192.0.2.5"), true, 3, 1000));
    assert!(
        !m.reserve(ip("192.0.2.5"), true, 1, 1000),
        "refused, taking nothing"
    );
    assert!(
        m.reserve(ip("192.0.3.1"), true, 256, 1000),
        "another network"
    );
    // A request of more names than a burst takes a burst.
    assert!(m.reserve(ip("198.51.100.1"), true, 1000, 0));
    m.hits(ip("198.51.100.1"), true, 1000, 900);
    assert!(m.reserve(ip("198.51.100.1"), true, 156, 0));
    assert!(!m.reserve(ip("198.51.100.1"), true, 1, 0));
}

#[test]
fn presence_refills_by_the_clock() {
    let b = Budgets::new(&settings());
    let to: SocketAddr = "192.0.2.7:5".parse().unwrap();
    assert!(b.presence.take(to, 4 * 4096, 0));
    assert!(!b.presence.take(to, 1, 0));
    assert!(b.presence.take(to, 409, 100));
    assert!(!b.presence.take(to, 1, 100));
}
