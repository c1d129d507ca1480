//! Control-message decoding as the router does it for each type: classify the datagram, check
//! UTF-8, scan the header, read `type`, copy to scratch and parse the typed struct with simd-json.
//!
//! Control messages (register, keepalive, ping, watch, ...) are far rarer than relays but far
//! dearer per byte (allocation of owned strings, a scratch copy, simd-json's tape); keepalives from
//! every peer every few seconds make this the relay's second-hottest path.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relay_core::wire::control::{
    self, Connect, Keepalive, Lookup, Ping, Register, Unregister, Watch,
};
use relay_core::wire::{Family, classify, scan};
use serde::Deserialize;

mod common;

/// What the router does before its per-type handler: returns the parsed message.
fn decode<T: for<'de> Deserialize<'de>>(d: &[u8], want: &str, scratch: &mut Vec<u8>) -> Option<T> {
    if classify(d) != Family::Json || std::str::from_utf8(d).is_err() {
        return None;
    }
    let h = scan::scan(d).ok()?;
    let mut tmp = [0u8; 16];
    if scan::text(d, h.ty, &mut tmp)? != want {
        return None;
    }
    scratch.clear();
    scratch.extend_from_slice(d);
    control::parse(scratch).ok()
}

fn case<T: for<'de> Deserialize<'de>>(c: &mut Criterion, ty: &str, d: String) {
    let d = d.into_bytes();
    let mut scratch = Vec::new();
    assert!(
        decode::<T>(&d, ty, &mut scratch).is_some(),
        "{}",
        String::from_utf8_lossy(&d)
    );
    let mut g = c.benchmark_group("control");
    // Sub-microsecond operations: 3 s gives criterion millions of iterations per bench.
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(d.len() as u64));
    g.bench_with_input(BenchmarkId::from_parameter(ty), &d, |b, d| {
        b.iter(|| decode::<T>(black_box(d), ty, &mut scratch))
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let session = "5f0c2a9e81d74b3c96e0a1f2b3c4d5e6";
    case::<Register>(
        c,
        "register",
        r#"{"type":"register","name":"alice"}"#.into(),
    );
    case::<Keepalive>(
        c,
        "keepalive",
        format!(r#"{{"type":"keepalive","name":"alice","session":"{session}"}}"#),
    );
    case::<Ping>(c, "ping", r#"{"type":"ping","name":"alice"}"#.into());
    let names: Vec<String> = (0..20)
        .map(|i| format!("\"{}\"", common::name(i)))
        .collect();
    case::<Watch>(
        c,
        "watch",
        format!(
            r#"{{"type":"watch","names":[{}],"name":"alice"}}"#,
            names.join(",")
        ),
    );
    case::<Lookup>(c, "lookup", r#"{"type":"lookup","name":"bob"}"#.into());
    case::<Connect>(
        c,
        "connect",
        r#"{"type":"connect","target":"bob","name":"alice"}"#.into(),
    );
    case::<Unregister>(
        c,
        "unregister",
        format!(r#"{{"type":"unregister","name":"alice","session":"{session}"}}"#),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
