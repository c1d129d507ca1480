//! The crate's sans-IO harness with two registered peers, kept across inputs (building one per
//! input would dominate the run), and a check that every decided send is within its buffers.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use relay_core::settings::Settings;
use relay_core::out::Out;
use relay_core::testing::Harness;

/// One of four senders: the two registered peers and two strangers.
pub fn addr(i: u8) -> SocketAddr {
    relay_core::testing::addr(u16::from(i % 4))
}

pub fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| {
        let mut h = Harness::new(Settings::default());
        for (i, name) in ["a", "b"].iter().enumerate() {
            h.register(name, addr(i as u8), 0);
        }
        Mutex::new(h)
    })
}

/// Every send's segments lie within `out.buf` and its input datagram.
pub fn check(out: &Out, input: &[u8]) {
    for s in &out.sends {
        let len: usize = out.segments(s, input).iter().map(|g| g.len()).sum();
        assert!(len <= 65_535, "a datagram of {len} bytes");
    }
}
