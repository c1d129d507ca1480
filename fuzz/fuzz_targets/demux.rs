//! The datagram demultiplexer and everything behind it, on arbitrary bytes from a registered
//! peer: never panics, and every decided send is within its buffers.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|d: &[u8]| {
    let mut g = common::router().lock().unwrap();
    let (router, out) = &mut *g;
    out.clear();
    let mut d = d.to_vec();
    router.handle(&mut d, common::addr(0), common::at(1), out);
    common::check(out, &d);
});
