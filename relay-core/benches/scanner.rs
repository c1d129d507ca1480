//! The header scanner (`wire::scan::scan`) on `relay` datagrams.
//!
//! Every relayed datagram is scanned in full (syntax validated, routing fields and the payload
//! span found) before it is forwarded, so the scanner's bytes per second bound the relay's
//! forwarding throughput per core. Payloads are base64 ciphertext strings, as chat peers send,
//! from 64 B to 8 KB, plus a 1 KB nested-object envelope and a 1 KB escaped JSON-in-a-string
//! payload for the scanner's container, number and escape paths.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relay_core::wire::scan;

mod common;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    // Sub-microsecond operations: 3 s gives criterion millions of iterations per bench.
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut cases: Vec<(String, Vec<u8>)> = [64, 256, 1024, 4096, 8192]
        .into_iter()
        .map(|n| (format!("b64/{n}"), common::relay_b64("alice", "bob", n)))
        .collect();
    cases.push((
        "nested/1024".into(),
        common::relay_with("alice", "bob", &common::nested_payload(1024)),
    ));
    // The old relay's peers sent JSON inside a string: escaped quotes throughout.
    let inner = common::nested_payload(900).replace('"', "\\\"");
    cases.push((
        "escaped/1024".into(),
        common::relay_with("alice", "bob", &format!("\"{inner}\"")),
    ));
    for (id, d) in &cases {
        let h = scan::scan(d).expect("bench datagram scans");
        assert!(h.payload.is_some() && h.target.is_some() && h.source.is_some());
        g.throughput(Throughput::Bytes(d.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(id), d, |b, d| {
            b.iter(|| scan::scan(black_box(d)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
