//! The datagram demultiplexer and everything behind it, on arbitrary bytes from a registered
//! peer: never panics, and every decided send is within its buffers.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|d: &[u8]| {
    let mut h = common::harness().lock().unwrap();
    let mut d = d.to_vec();
    h.handle(&mut d, common::addr(0), 1);
    common::check(&h.out, &d);
});
