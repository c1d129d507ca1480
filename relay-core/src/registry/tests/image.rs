//! Tests of the handover image, since a restore must refuse what breaks an invariant.

use super::*;
use crate::keyed::Keyed;
use crate::parallel::Parallel;
use crate::registry::restore::RESTORE_CHUNK;

/// A length prefix far beyond the image (2^60 registrations) is refused as corrupt without
/// allocating for it: nothing is reserved that the bytes do not hold.
#[test]
fn a_crafted_length_is_refused_without_allocating_for_it() {
    let r = registry(1000);
    let e = r.export();
    let mut bytes = postcard::to_stdvec(&e).unwrap();
    // The token key, the next number and the names' key, then the peers' count.
    let at = postcard::to_stdvec(&(e.token_key, e.next_seq, e.names_key))
        .unwrap()
        .len();
    assert_eq!(bytes[at], 0);
    let mut huge = Vec::new();
    let mut n = 1u64 << 60;
    while n >= 0x80 {
        huge.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    huge.push(n as u8);
    bytes.splice(at..at + 1, huge);
    assert!(postcard::from_bytes::<Image>(&bytes).is_err());
}

/// An image whose numbers or times cannot have been written by a relay is refused whole:
/// a next number at the end of its range would wrap to numbers (so tokens) already issued,
/// and times past the image's own clock would keep a registration trusted, or unannounced
/// and without keepalives, for as long as they lie ahead.
#[test]
fn an_image_with_numbers_or_times_beyond_its_clock_is_refused() {
    let s = Settings {
        peer_timeout_ms: 60_000,
        ..Settings::default()
    };
    let now = 100_000;
    // The image as written, to be read (and damaged) as a relay taking over reads it.
    let bytes = {
        let r = Registry::new(&s);
        r.claim("alice", a("1.1.1.1:1"), Proof::Token(None), now, 10);
        postcard::to_stdvec(&r.export()).unwrap()
    };
    let image = || postcard::from_bytes::<Image>(&bytes).unwrap();
    assert!(Registry::restore(&s, image(), now, false, &Parallel::serial()).is_ok());
    let mut wraps = image();
    wraps.next_seq = u64::MAX;
    let err = Registry::restore(&s, wraps, now, false, &Parallel::serial())
        .err()
        .unwrap();
    assert!(err.contains("number"), "{err}");
    type Damage = fn(&mut PeerImage);
    let future: [(&str, Damage); 3] = [
        ("trusted", |p| p.trusted_s = u32::MAX - 1),
        ("announced", |p| p.announced_s = 1_000_000),
        ("keepalive", |p| p.last_keepalive_ds = 1_000_000_000),
    ];
    for (what, damage) in future {
        let mut img = image();
        damage(&mut img.peers[0]);
        let err = Registry::restore(&s, img, now, false, &Parallel::serial()).err();
        assert!(err.is_some_and(|e| e.contains("future")), "{what}");
    }
}

/// An image of `names`, the `i`th at `addr(i)` with registration number `seq(i)`.
fn image_of<'a>(
    names: &'a [String],
    addr: impl Fn(usize) -> SocketAddr,
    seq: impl Fn(usize) -> u64,
) -> Image<'a> {
    let peers = names
        .iter()
        .enumerate()
        .map(|(i, n)| PeerImage {
            name: n,
            addr: addr(i),
            last_heard: 0,
            last_keepalive_ds: 0,
            seq: seq(i),
            trusted_s: 0,
            announced_s: u32::MAX,
            key: None,
        })
        .collect();
    Image {
        token_key: [1; 32],
        next_seq: names.len() as u64 * 2,
        names_key: Keyed::random(),
        peers,
        watches: Vec::new(),
    }
}

/// Every invariant the tables keep, of a registry that holds `n` registrations: each is
/// listed at its address once, addresses list theirs in join order, and nothing else is
/// listed.
fn check_tables(r: &Registry, n: usize) {
    assert_eq!(r.len(), n);
    assert_eq!(r.peers.len(), n);
    let mut listed = 0;
    for i in 0..r.by_addr.shard_count() {
        r.by_addr.in_shard(i, |t| {
            for (addr, at) in t.iter() {
                let seqs: Vec<u64> = at
                    .names()
                    .iter()
                    .map(|name| {
                        r.peers
                            .get(&**name, |_, e| {
                                assert_eq!(e.addr, *addr, "{name} listed elsewhere");
                                e.seq
                            })
                            .expect("a listed name is registered")
                    })
                    .collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
                listed += seqs.len();
            }
        });
    }
    assert_eq!(listed, n);
}

/// Registrations of several restoring threads (chunks of 65,536) meet at the same
/// addresses and in the same shards: each is listed once, in join order, bounds kept, and
/// a name in two threads' chunks is refused.
#[test]
fn a_parallel_restore_keeps_every_invariant() {
    let n = 3 * RESTORE_CHUNK + 17;
    let s = Settings {
        max_peers: 1_000_000,
        max_names_per_address: 4,
        ..Settings::default()
    };
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    // Four names an address, one from each quarter of the image (each another thread's
    // chunk), joined in the reverse of the image's order.
    let addr = |i: usize| {
        let k = i % (n / 4 + 1);
        SocketAddr::from(([10, (k >> 16) as u8, (k >> 8) as u8, k as u8], 7))
    };
    let seq = |i: usize| (n - i) as u64;
    let (r, done) = Registry::restore(
        &s,
        image_of(&names, addr, seq),
        0,
        false,
        &Parallel::serial(),
    )
    .unwrap();
    assert_eq!(done.peers, n);
    check_tables(&r, n);
    assert_eq!(
        names_at(&r, addr(0)),
        [3 * (n / 4 + 1), 2 * (n / 4 + 1), n / 4 + 1, 0].map(|i| Name::from(&*names[i]))
    );
    // A fifth name at one of them is beyond --max-names-per-address.
    let five = Settings {
        max_names_per_address: 3,
        ..s.clone()
    };
    let err = Registry::restore(
        &five,
        image_of(&names, addr, seq),
        0,
        false,
        &Parallel::serial(),
    )
    .err()
    .unwrap();
    assert!(err.contains("--max-names-per-address"), "{err}");
    // The same name first and last: in two threads' chunks.
    let mut twice = names.clone();
    twice[n - 1] = twice[0].clone();
    let err = Registry::restore(
        &s,
        image_of(&twice, addr, seq),
        0,
        false,
        &Parallel::serial(),
    )
    .err()
    .unwrap();
    assert!(err.contains("twice"), "{err}");
    // Taken over by a relay of another size (other shard counts) from the tables' own
    // export: the same registrations, listed as they were.
    let bytes = postcard::to_stdvec(&r.export()).unwrap();
    for max_peers in [n, 10_000_000] {
        let other = Settings {
            max_peers,
            ..s.clone()
        };
        let image = postcard::from_bytes::<Image>(&bytes).unwrap();
        let (back, _) = Registry::restore(&other, image, 0, false, &Parallel::serial()).unwrap();
        check_tables(&back, n);
        assert_eq!(names_at(&back, addr(0)), names_at(&r, addr(0)));
    }
}
