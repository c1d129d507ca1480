//! The relay hot path allocates nothing: once warmed up, `Router::handle` forwards `relay`
//! datagrams without touching the heap.
//!
//! A counting global allocator wraps the system one. Counts are per thread, so the test
//! harness's other threads (and the other test in this binary) cannot disturb a measurement.

mod common;

use common::{addr, at};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use relay_core::out::Out;
use relay_core::router::Router;
use relay_core::shared::Shared;
use relay_core::testing::Harness;
use udp_relay::config::Settings;

struct Counting;

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    /// Deallocations made by this thread.
    static FREES: Cell<u64> = const { Cell::new(0) };
}

fn bump(c: &'static std::thread::LocalKey<Cell<u64>>) {
    // `try_with`: never panic inside the allocator, even while a thread is being torn down.
    let _ = c.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: the caller's contract is `System`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap calls made by this thread while `f` ran: (allocations, deallocations).
fn heap_calls<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (a0, f0) = (ALLOCS.with(Cell::get), FREES.with(Cell::get));
    let r = f();
    let (a1, f1) = (ALLOCS.with(Cell::get), FREES.with(Cell::get));
    (r, a1 - a0, f1 - f0)
}

/// A router with "Alice" at `addr(1)` and "Bob" at `addr(2)`, and its `Out`.
fn two_peers() -> (std::sync::Arc<Shared>, Router, Out) {
    let mut h = Harness::new(Settings::default());
    for (name, from) in [("Alice", addr(1)), ("Bob", addr(2))] {
        h.register(name, from, 0);
        assert!(!h.out.sends.is_empty(), "{name} registered");
    }
    let Harness {
        shared,
        router,
        mut out,
    } = h;
    out.clear();
    (shared, router, out)
}

/// Relay datagrams of varied shape and size, alternating Alice → Bob and Bob → Alice.
/// Returns (datagram, sender, receiver, expected relayed_packet).
fn datagrams(n: usize) -> Vec<(Vec<u8>, SocketAddr, SocketAddr, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let (src, tgt, from, to) = if i % 2 == 0 {
                ("Alice", "Bob", addr(1), addr(2))
            } else {
                ("Bob", "Alice", addr(2), addr(1))
            };
            let payload = match i % 5 {
                0 => format!(r#""{{\"type\": \"message\", \"n\": {i}}}""#),
                1 => format!(r#"{{"seq":{i},"data":"{}"}}"#, "x".repeat(i % 700)),
                2 => format!(r#"[{i}, -1.5e3, true, null, "caf\u00e9 ☕"]"#),
                3 => format!(r#""{}""#, "A".repeat(1000 + i % 300)),
                _ => i.to_string(),
            };
            let d = match i % 3 {
                0 => format!(r#"{{"type":"relay","source":"{src}","target":"{tgt}","payload":{payload}}}"#),
                1 => format!(r#"{{ "payload" : {payload}, "target":"{tgt}", "source":"{src}", "type":"relay", "v":2 }}"#),
                _ => format!(r#"{{"\u0074ype":"rel\u0061y","payload":{payload},"source":"{src}","target":"{tgt}"}}"#),
            };
            let want = format!(
                r#"{{"type":"relayed_packet","from_peer":"{src}","via_relay":true,"payload":{payload}}}"#
            );
            (d.into_bytes(), from, to, want.into_bytes())
        })
        .collect()
}

/// Runs `batch` through the router as the I/O loop does (clearing `out` before each datagram);
/// returns how many were not forwarded exactly as expected. Allocates nothing itself.
fn run(
    router: &mut Router,
    out: &mut Out,
    batch: &mut [(Vec<u8>, SocketAddr, SocketAddr, Vec<u8>)],
    ms: u64,
) -> usize {
    let mut wrong = 0;
    for (i, (d, from, to, want)) in batch.iter_mut().enumerate() {
        out.clear();
        router.handle(d, *from, at(ms + i as u64 / 100), out);
        let ok = match out.sends.as_slice() {
            [s] => {
                s.to == *to
                    && out
                        .segments(s, d)
                        .iter()
                        .flat_map(|seg| seg.iter())
                        .eq(want.iter())
            }
            _ => false,
        };
        wrong += usize::from(!ok);
    }
    wrong
}

#[test]
fn relaying_allocates_nothing_once_warm() {
    let (shared, mut router, mut out) = two_peers();
    let mut batch = datagrams(10_000);

    // Warm up: the reusable buffers reach their working size.
    assert_eq!(run(&mut router, &mut out, &mut batch[..200], 1), 0);

    let (wrong, allocs, frees) = heap_calls(|| run(&mut router, &mut out, &mut batch, 100));
    assert_eq!(wrong, 0, "every datagram forwarded byte for byte");
    assert_eq!(allocs, 0, "allocations while relaying 10,000 datagrams");
    assert_eq!(frees, 0, "deallocations while relaying 10,000 datagrams");

    let forwarded = shared.metrics.block(0).forwarded.load(Ordering::Relaxed);
    assert_eq!(forwarded, 10_200);
}

#[test]
fn channel_frames_allocate_nothing_once_warm() {
    let mut h = Harness::new(Settings::default());
    let (alice, bob) = (addr(1), addr(2));
    // A long name lives on the heap: touching it from a frame must not copy it.
    let long = "a-name-longer-than-the-inline-twenty-two-bytes";
    let sa = h.prove(long, alice, 0);
    h.prove("Bob", bob, 0);
    let bind = format!(r#"{{"type":"bind","target":"Bob","name":"{long}","session":"{sa}"}}"#);
    h.run(bind.as_bytes(), alice, 1);
    let ack = String::from_utf8(h.out.segments(&h.out.sends[0], &[]).concat()).unwrap();
    let n: u32 = ack
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('}')
        .parse()
        .unwrap();
    let mut frames: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            let mut f = Vec::new();
            relay_core::wire::frame::write(&mut f, n, &vec![i as u8; 40 + i % 1200]);
            f
        })
        .collect();
    // Over ten seconds of relay time, so that frames also refresh the sender's registration.
    let run = |frames: &mut [Vec<u8>], h: &mut Harness, base: u64| {
        let mut ok = 0;
        for (i, f) in frames.iter_mut().enumerate() {
            h.handle(f, alice, base + i as u64);
            ok += usize::from(h.out.sends.len() == 1 && h.out.sends[0].to == bob);
        }
        ok
    };
    assert_eq!(run(&mut frames[..200], &mut h, 10), 200);
    for f in &mut frames {
        relay_core::wire::frame::set_channel(f, n);
    }
    let (ok, allocs, frees) = heap_calls(|| run(&mut frames, &mut h, 1_000));
    assert_eq!(ok, 10_000, "every frame forwarded");
    assert_eq!(
        (allocs, frees),
        (0, 0),
        "heap calls while forwarding 10,000 frames"
    );
}

/// The negative control: the counter sees allocations, both in the test's own code and inside
/// the router, so the zero above is a measurement and not a blind spot.
#[test]
fn the_counter_sees_allocations() {
    let (v, allocs, _) = heap_calls(|| black_box(Box::new(black_box(7u64))));
    assert!(allocs >= 1, "a Box allocates");
    let ((), _, frees) = heap_calls(|| drop(v));
    assert!(frees >= 1, "dropping a Box frees");

    let (v, allocs, _) = heap_calls(|| {
        let mut v = Vec::<u8>::with_capacity(1);
        v.extend_from_slice(black_box(&[0u8; 100]));
        v
    });
    assert!(allocs >= 2, "allocation and growth are both counted");
    drop(v);

    // Inside the library: a new registration stores the name (and more) on the heap.
    let (_shared, mut router, mut out) = two_peers();
    out.clear();
    let mut reg = br#"{"type":"register","name":"Carol"}"#.to_vec();
    let ((), allocs, _) = heap_calls(|| router.handle(&mut reg, addr(3), at(1), &mut out));
    assert!(!out.sends.is_empty());
    assert!(
        allocs > 0,
        "registering a new peer allocates inside the router"
    );

    // The measured path itself: relaying into a fresh `Out` (no capacity yet) grows its buffers.
    let mut batch = datagrams(1);
    let mut fresh = Out::default();
    let (wrong, allocs, _) = heap_calls(|| run(&mut router, &mut fresh, &mut batch, 2));
    assert_eq!(wrong, 0);
    assert!(allocs > 0, "relaying into an empty Out allocates");
}
