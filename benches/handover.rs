//! The state handover of a relay holding a million peers (a takeover, a snapshot): exporting
//! its state to an image and restoring a relay from it. Forwarding pauses for both (and the
//! transfer between them), so these are what a takeover costs at the design size.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use relay_core::settings::Settings;
use relay_core::shared::Shared;
use relay_core::testing::fill;
use udp_relay::clock::Clock;
use udp_relay::state;

const PEERS: usize = 1_000_000;

fn bench(c: &mut Criterion) {
    let settings = Settings {
        max_peers: 2 * PEERS,
        peer_timeout_ms: 3_600_000,
        ..Settings::default()
    };
    let shared = Shared::new(settings.clone(), 1);
    fill(&shared.registry, 0..PEERS, 0);
    let clock = Clock::default();
    let image = state::export(&shared, clock);
    println!("image of {PEERS} peers: {} bytes", image.len());

    let mut g = c.benchmark_group("handover_1m");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("export", |b| b.iter(|| state::export(&shared, clock)));
    g.bench_function("restore", |b| {
        b.iter(|| state::restore(&image, settings.clone(), 1, false).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
