//! The cluster's directory against a real Redis (Debian's `redis-server`, which each test starts
//! on a free port of its own, so that it can kill it): names unique across relays, a race won
//! once, moves with proof, fenced releases, a dead node's names free, and Redis killed and back.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::Redis;
use udp_relay::cluster::directory::{Claimed, Directory, Event, Events};

/// The public key a name is signed with, as a peer sends it.
const KEY: &str = "bmFtZWQtYnktaXRzLWtleQ==";

/// Runs `f` to completion on a runtime of its own.
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn mesh(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 7000))
}

/// Node `id` of the directory at `url`, alive at mesh address `mesh(i)` for `ttl`.
async fn node(url: &str, id: &str, i: u8, ttl: Duration) -> Directory {
    let mut d = Directory::connect(url, id, ttl).await.unwrap();
    d.heartbeat(mesh(i), 0).await.unwrap();
    d
}

/// Where `name` is homed, as `d` reads the directory: its node and mesh address.
async fn home(d: &mut Directory, name: &str) -> Option<(String, SocketAddr)> {
    let found = d.home(name).await.unwrap();
    found.map(|(h, mesh)| (h.node, mesh))
}

/// Waits (10 s at most) until `d`'s connection is back and its heartbeat, as node `i`, served.
async fn reconnected(d: &mut Directory, i: u8) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match d.heartbeat(mesh(i), 0).await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "never reconnected: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The epoch of a claim that must have been won.
fn won(c: Claimed) -> u64 {
    match c {
        Claimed::Home(epoch) => epoch,
        Claimed::InUse(owner) => panic!("in use at {owner}"),
    }
}

#[test]
fn a_name_is_homed_at_one_live_node_and_moves_only_with_proof() {
    let Some(redis) = Redis::start() else { return };
    block(async {
        let ttl = Duration::from_secs(30);
        let mut a = node(&redis.url(), "relay-a", 1, ttl).await;
        let mut b = node(&redis.url(), "relay-b", 2, ttl).await;
        let first = won(a.claim("alice", Some(KEY), None).await.unwrap());
        assert_eq!(
            won(a.claim("alice", None, None).await.unwrap()),
            first,
            "again: the same"
        );
        assert_eq!(
            b.claim("alice", None, None).await.unwrap(),
            Claimed::InUse("relay-a".into())
        );
        assert_eq!(
            home(&mut b, "alice").await,
            Some(("relay-a".into(), mesh(1)))
        );
        // Another key moves nothing.
        assert_eq!(
            b.claim("alice", Some("another-key"), None).await.unwrap(),
            Claimed::InUse("relay-a".into())
        );
        // With the key it was signed with, the peer moves to relay-b: a new epoch.
        let moved = won(b.claim("alice", Some(KEY), None).await.unwrap());
        assert!(moved > first);
        assert_eq!(
            home(&mut a, "alice").await,
            Some(("relay-b".into(), mesh(2)))
        );
        // relay-a's late release of its epoch does not remove it from its new home.
        assert!(!a.release("alice", first).await.unwrap());
        assert!(b.release("alice", moved).await.unwrap());
        assert_eq!(home(&mut a, "alice").await, None);
        // Claimed again, the name never gets an epoch it had: no old release can remove it.
        let again = won(a.claim("alice", None, None).await.unwrap());
        assert!(again > moved);
        assert!(!b.release("alice", moved).await.unwrap());
        assert!(!a.release("alice", first).await.unwrap());
    });
}

#[test]
fn every_node_hears_joins_and_leaves_in_the_order_they_happened() {
    let Some(redis) = Redis::start() else { return };
    block(async {
        let mut events = Events::subscribe(&redis.url()).await.unwrap();
        let ttl = Duration::from_secs(30);
        let mut a = node(&redis.url(), "relay-a", 1, ttl).await;
        let mut b = node(&redis.url(), "relay-b", 2, ttl).await;
        let first = won(a.claim("alice", Some(KEY), None).await.unwrap());
        let moved = won(b.claim("alice", Some(KEY), None).await.unwrap());
        assert!(b.release("alice", moved).await.unwrap());
        // What was refused is published by nobody.
        assert!(!a.release("alice", first).await.unwrap());
        let mut heard = Vec::new();
        for _ in 0..3 {
            let e = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .expect("an event within 5 s")
                .expect("the subscription holds");
            heard.push(e);
        }
        let joined = |node: &str, epoch| Event::Joined {
            name: "alice".into(),
            node: node.into(),
            epoch,
            by: None,
        };
        let left = Event::Left {
            name: "alice".into(),
            node: "relay-b".into(),
            epoch: moved,
        };
        assert_eq!(
            heard,
            vec![joined("relay-a", first), joined("relay-b", moved), left]
        );
    });
}

#[test]
fn node_ids_are_checked_and_epochs_never_repeat_across_a_redis_restart() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    block(async {
        let ttl = Duration::from_secs(30);
        for bad in ["relay a", "", "relay:a", &"x".repeat(65)] {
            assert!(
                Directory::connect(&redis.url(), bad, ttl).await.is_err(),
                "{bad:?}"
            );
        }
        let mut a = node(&redis.url(), "relay-a", 1, ttl).await;
        let before = won(a.claim("alice", None, None).await.unwrap());
        drop(redis);
        let Ok(back) = Redis::on(port) else {
            panic!("redis-server again on port {port}");
        };
        reconnected(&mut a, 1).await;
        // The counter was lost with the data: the next epoch is still beyond every earlier one,
        // so the release of the claim before the restart removes nothing after it.
        let after = won(a.claim("alice", None, None).await.unwrap());
        assert!(after > before, "{after} after {before}");
        assert!(!a.release("alice", before).await.unwrap());
        drop(back);
    });
}

#[test]
fn two_relays_racing_for_names_win_each_exactly_once() {
    let Some(redis) = Redis::start() else { return };
    let names: Vec<String> = (0..200).map(|i| format!("peer{i}")).collect();
    // Both start together, from opposite ends, so that they meet in the middle.
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    let race = |id: &'static str, i: u8| {
        let (url, mut names, start) = (redis.url(), names.clone(), start.clone());
        if i == 2 {
            names.reverse();
        }
        std::thread::spawn(move || {
            block(async {
                let mut d = node(&url, id, i, Duration::from_secs(30)).await;
                start.wait();
                let mut won = Vec::new();
                for n in &names {
                    if let Claimed::Home(_) = d.claim(n, None, None).await.unwrap() {
                        won.push(n.clone());
                    }
                }
                won
            })
        })
    };
    let (a, b) = (race("relay-a", 1), race("relay-b", 2));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    println!("relay-a won {}, relay-b won {}", a.len(), b.len());
    for n in &names {
        let wins = usize::from(a.contains(n)) + usize::from(b.contains(n));
        assert_eq!(wins, 1, "{n}");
    }
}

#[test]
fn a_dead_nodes_names_are_free() {
    let Some(redis) = Redis::start() else { return };
    block(async {
        let mut a = node(&redis.url(), "relay-a", 1, Duration::from_secs(2)).await;
        let mut b = node(&redis.url(), "relay-b", 2, Duration::from_secs(30)).await;
        won(a.claim("carol", None, None).await.unwrap());
        assert!(matches!(
            b.claim("carol", None, None).await.unwrap(),
            Claimed::InUse(_)
        ));
        // relay-a stops renewing (killed): once its TTL lapses its names are free.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match b.claim("carol", None, None).await.unwrap() {
                Claimed::Home(_) => break,
                Claimed::InUse(_) => {
                    assert!(Instant::now() < deadline, "relay-a's TTL never lapsed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert_eq!(
            home(&mut b, "carol").await,
            Some(("relay-b".into(), mesh(2)))
        );
        // The heartbeat lists the live nodes only, and a scan reads every name's home.
        let live = b.heartbeat(mesh(2), 7).await.unwrap();
        assert_eq!(live, vec![("relay-b".to_string(), mesh(2))]);
        // The node's record holds its load too, for an operator to read.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let record: String = redis::AsyncCommands::get(&mut con, "udp-relay:node:relay-b")
            .await
            .unwrap();
        assert_eq!(record, format!("{} 7", mesh(2)));
        won(b.claim("dave", None, None).await.unwrap());
        let (mut cursor, mut names) = (0, Vec::new());
        loop {
            let (next, got) = b.names(cursor, 1).await.unwrap();
            names.extend(got.into_iter().map(|h| (h.name, h.node)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        names.sort();
        let b_ = || "relay-b".to_string();
        assert_eq!(names, vec![("carol".into(), b_()), ("dave".into(), b_())]);
    });
}

#[test]
fn calls_fail_while_redis_is_away_and_are_served_once_it_is_back() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    block(async {
        let mut d = node(&redis.url(), "relay-b", 2, Duration::from_secs(30)).await;
        won(d.claim("erin", None, None).await.unwrap());
        drop(redis);
        assert!(
            d.claim("frank", None, None).await.is_err(),
            "no Redis, no claim"
        );
        let Ok(back) = Redis::on(port) else {
            panic!("redis-server again on port {port}");
        };
        // The connection comes back by itself: the next calls are served (the new server is
        // empty, as a Redis without persistence restarts).
        reconnected(&mut d, 2).await;
        won(d.claim("frank", None, None).await.unwrap());
        drop(back);
    });
}
