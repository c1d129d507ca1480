//! A router with two registered peers, kept across inputs (building one per input would
//! dominate the run), and a check that every decided send is within its buffers.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use udp_relay::clock::Now;
use udp_relay::config::Settings;
use udp_relay::out::Out;
use udp_relay::router::Router;
use udp_relay::shared::Shared;

pub fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + i % 4], 1000 + u16::from(i % 4)))
}

pub fn at(ms: u64) -> Now {
    Now {
        ms,
        unix: 1.8e9 + ms as f64 / 1000.0,
    }
}

pub fn router() -> &'static Mutex<(Router, Out)> {
    static R: OnceLock<Mutex<(Router, Out)>> = OnceLock::new();
    R.get_or_init(|| {
        let shared = Shared::new(Settings::default(), 1);
        let mut r = Router::new(shared, 0);
        let mut out = Out::default();
        for (i, name) in ["a", "b"].iter().enumerate() {
            let d = format!(r#"{{"type":"register","name":"{name}"}}"#);
            r.handle(&mut d.into_bytes(), addr(i as u8), at(0), &mut out);
        }
        out.clear();
        Mutex::new((r, out))
    })
}

/// Every send's segments lie within `out.buf` and its input datagram.
pub fn check(out: &Out, input: &[u8]) {
    for s in &out.sends {
        let len: usize = out.segments(s, input).iter().map(|g| g.len()).sum();
        assert!(len <= 65_535, "a datagram of {len} bytes");
    }
}
