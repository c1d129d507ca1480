//! Registry operations with a million peers registered: registering a new name (`claim`), the
//! relay's target lookup (`addr_of`, hit and miss) and its sender check (`touch_sender`).
//!
//! A relay of a million peers is the design target; at that size every operation hashes into
//! tables far larger than the caches, so these figures, not small-map ones, are what a worker
//! pays per registration and per relayed datagram. The million is built once for the group.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use relay_core::registry::{Proof, Registry};

mod common;

const PEERS: usize = 1_000_000;

fn bench(c: &mut Criterion) {
    let reg = Registry::new(&relay_core::settings::Settings::default());
    let names: Vec<String> = (0..PEERS).map(common::name).collect();
    for (i, n) in names.iter().enumerate() {
        reg.claim(n, common::addr(i), Proof::Token(None), 0, usize::MAX);
    }
    assert_eq!(reg.len(), PEERS);
    let now = 1_000;

    let mut g = c.benchmark_group("registry_1m");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    // New names join a full-sized registry; each sample's names are removed again (untimed), so
    // the registry stays at a million however many iterations criterion asks for.
    let mut next = PEERS;
    g.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let fresh: Vec<(String, _)> = (next..next + iters as usize)
                .map(|i| (common::name(i), common::addr(i)))
                .collect();
            next += iters as usize;
            let start = Instant::now();
            for (n, a) in &fresh {
                black_box(reg.claim(n, *a, Proof::Token(None), now, usize::MAX));
            }
            let took = start.elapsed();
            for (n, _) in &fresh {
                reg.reap(n, u64::MAX);
            }
            took
        })
    });
    assert_eq!(reg.len(), PEERS);

    let mut rng = common::Rng::new(7);
    g.bench_function("addr_of/hit", |b| {
        b.iter(|| reg.addr_of(black_box(&names[rng.below(PEERS)]), now))
    });
    let absent: Vec<String> = (0..4096).map(|i| format!("nobody-{i:07}")).collect();
    g.bench_function("addr_of/miss", |b| {
        b.iter(|| reg.addr_of(black_box(&absent[rng.below(absent.len())]), now))
    });
    g.bench_function("touch_sender", |b| {
        b.iter(|| {
            let i = rng.below(PEERS);
            reg.touch_sender(black_box(&names[i]), common::addr(i), now)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
