//! The router's whole decision for one datagram (`Router::handle`), as a worker runs it between
//! `recvmmsg` and `sendmmsg`: a relay between two registered peers, a channel frame between them,
//! a ping and a keepalive, with 100k other peers registered so that registry lookups miss the
//! caches as they would in service.
//!
//! This is the per-datagram CPU cost of the relay, I/O excluded: its inverse is the most datagrams
//! per second one worker can decide. `Out` is cleared between datagrams as the I/O loop does.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relay_core::out::Out;
use relay_core::registry::{Claim, Name, Proof};
use relay_core::router::Router;
use relay_core::settings::Settings;
use relay_core::shared::Shared;

mod common;

/// Peers registered besides the two that talk.
const OTHERS: usize = 100_000;

fn bench(c: &mut Criterion) {
    let shared = Shared::new(Settings::default(), 1);
    let now = common::at(1_000);
    common::fill(&shared.registry, 0..OTHERS, 0);
    let (alice, bob) = (common::addr(OTHERS), common::addr(OTHERS + 1));
    let Claim::Joined(session) = shared.registry.claim(
        "alice",
        alice,
        Proof::Token(None),
        0,
        shared.settings.max_peers,
    ) else {
        panic!("alice registers");
    };
    let Claim::Joined(bob_session) =
        shared
            .registry
            .claim("bob", bob, Proof::Token(None), 0, shared.settings.max_peers)
    else {
        panic!("bob registers");
    };
    // Both show their sessions, as channels need, and bind one.
    assert!(
        shared
            .registry
            .authenticate("alice", alice, Some(session), 0)
            .is_some()
    );
    assert!(
        shared
            .registry
            .authenticate("bob", bob, Some(bob_session), 0)
            .is_some()
    );
    let channel = shared
        .channels
        .bind(&Name::from("alice"), alice, &Name::from("bob"), bob)
        .expect("bound")
        .mine;
    let mut router = Router::new(Arc::clone(&shared), 0);
    let mut out = Out::default();

    let mut g = c.benchmark_group("router");
    // Sub-microsecond operations: 3 s gives criterion millions of iterations per bench.
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for n in [100, 1200] {
        let mut d = Vec::new();
        relay_core::wire::frame::write(&mut d, channel, &vec![0x5a; n]);
        out.clear();
        router.handle(&mut d.clone(), alice, now, &mut out);
        assert_eq!(out.sends.len(), 1, "frame/{n}");
        g.throughput(Throughput::Bytes(d.len() as u64));
        // The decision rewrites the channel field in place: each iteration puts Alice's number
        // back first (a 4-byte copy).
        g.bench_function(BenchmarkId::from_parameter(format!("frame/{n}")), |b| {
            b.iter(|| {
                out.clear();
                relay_core::wire::frame::set_channel(&mut d, channel);
                router.handle(black_box(&mut d), alice, now, &mut out);
                black_box(out.sends.len())
            })
        });
    }
    let mut run = |g: &mut criterion::BenchmarkGroup<_>, id: String, d: Vec<u8>, sends: usize| {
        out.clear();
        router.handle(&mut d.clone(), alice, now, &mut out);
        assert_eq!(out.sends.len(), sends, "{id}: {:?}", out.sends);
        g.throughput(Throughput::Bytes(d.len() as u64));
        let mut d = d;
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                out.clear();
                router.handle(black_box(&mut d), alice, now, &mut out);
                black_box(out.sends.len())
            })
        });
    };
    for n in [64, 1024, 8192] {
        let d = common::relay_b64("alice", "bob", n);
        run(&mut g, format!("relay/b64/{n}"), d, 1);
    }
    run(
        &mut g,
        "ping".into(),
        br#"{"type":"ping","name":"alice"}"#.to_vec(),
        1,
    );
    let keepalive = format!(
        r#"{{"type":"keepalive","name":"alice","session":"{}"}}"#,
        session.to_hex()
    );
    run(&mut g, "keepalive".into(), keepalive.into_bytes(), 1);
    // The most a request can cost, per byte and per datagram (SECURITY.md): the largest control
    // message parsed, the largest watch (paid per name by admission), and a signed register whose
    // cookie checks and signature does not (paid by a signature check).
    let bare = r#"{"type":"lookup","name":"bob","pad":""}"#.len();
    let lookup = format!(
        r#"{{"type":"lookup","name":"bob","pad":"{}"}}"#,
        "x".repeat(1280 - bare)
    );
    run(&mut g, "lookup/1280".into(), lookup.into_bytes(), 1);
    let names: Vec<String> = (0..256).map(|i| format!("{i:0>64}")).collect();
    let watch = serde_json::json!({
        "type": "watch", "names": names, "name": "alice", "session": session.to_hex(),
    })
    .to_string();
    run(
        &mut g,
        format!("watch/{}", watch.len()),
        watch.into_bytes(),
        1,
    );
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .verifying_key()
        .to_bytes();
    let cookie = shared
        .cookies
        .issue(now.unix as u64, alice, "mallory", &key);
    let signed = serde_json::json!({
        "type": "register", "name": "mallory", "pubkey": b64(&key), "cookie": cookie,
        "sig": b64(&[1; 64]),
    })
    .to_string();
    run(
        &mut g,
        "register/bad-signature".into(),
        signed.into_bytes(),
        1,
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
