//! One reaper sweep (`reaper::sweep`) over a large registry, with a fresh registry per sweep
//! (a sweep changes what it sweeps): nobody due (the steady cost of scanning), everybody owed a
//! `server_keepalive`, and everybody stale (a mass disconnect: every peer reaped and announced).
//!
//! The reaper runs on its own thread (once a second with the default timers), taking each
//! registry shard's lock in turn; how long a sweep takes bounds how stale the registry gets, how
//! late keepalives go out and how long workers may wait on a shard.

use std::sync::Arc;
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use relay_core::out::Out;
use relay_core::reaper;
use relay_core::settings::Settings;
use relay_core::shared::Shared;

mod common;

const PEERS: usize = 1_000_000;

/// A registry of `n` peers all last heard at 0 ms.
fn registry(n: usize) -> Arc<Shared> {
    let s = Settings {
        peer_timeout_ms: 60_000,
        keepalive_ms: 10_000,
        ..Settings::default()
    };
    let shared = Shared::new(s, 1);
    common::fill(&shared.registry, 0..n, 0);
    shared
}

/// Sweeps at `ms` a fresh registry of `n` peers, checking the sweep did what `id` says; the
/// registry is returned, and so dropped outside the measurement.
fn case(c: &mut Criterion, id: &str, n: usize, ms: u64, check: impl Fn(reaper::Sweep) -> bool) {
    let mut g = c.benchmark_group("reaper");
    // One sweep per sample, ten samples: each sweep needs a fresh registry, whose building (not
    // timed) dominates the wall time. Criterion warns that it is "unable to complete 10 samples"
    // in the tiny target time: that is expected, it then takes exactly one iteration per sample.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1))
        .throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new(id, n), |b| {
        b.iter_batched(
            || (registry(n), Out::default()),
            |(shared, mut out)| {
                let c = shared.metrics.background();
                let done = reaper::sweep(&shared, common::at(ms), &mut out, &c, Out::clear);
                assert!(check(done), "{id}: {done:?}");
                (shared, out)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    case(c, "none_due", PEERS, 5_000, |d| {
        d == reaper::Sweep::default()
    });
    case(c, "keepalive_due", PEERS, 20_000, |d| {
        d.keepalives == PEERS && d.reaped == 0
    });
    case(c, "all_expiring", PEERS, 120_000, |d| d.reaped == PEERS);
}

criterion_group!(benches, bench);
criterion_main!(benches);
