//! The router over a sequence of datagrams from a few addresses at advancing times: the input is
//! split at newlines, each line's first byte choosing the sender and the time step.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|d: &[u8]| {
    let mut h = common::harness().lock().unwrap();
    let mut ms = 1;
    for line in d.split(|&b| b == b'\n') {
        let Some((&head, rest)) = line.split_first() else {
            continue;
        };
        ms += u64::from(head >> 2) * 50;
        let mut rest = rest.to_vec();
        h.handle(&mut rest, common::addr(head), ms);
        common::check(&h.out, &rest);
    }
});
