//! The header scanner on arbitrary bytes: never panics, and what it accepts of UTF-8 input (all
//! the router hands it) is consistent: routing fields decode, the payload span is well-formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::wire::scan;

fuzz_target!(|d: &[u8]| {
    let Ok(h) = scan::scan(d) else { return };
    // The router checks UTF-8 before it scans; on other bytes the scanner only must not panic.
    if std::str::from_utf8(d).is_err() {
        return;
    }
    let mut tmp = vec![0u8; d.len()];
    assert!(scan::text(d, h.ty, &mut tmp).is_some(), "type decodes");
    for f in [h.target, h.source].into_iter().flatten() {
        assert!(
            scan::text(d, f, &mut tmp).is_some(),
            "routing field decodes"
        );
    }
    if let Some(p) = h.payload {
        assert!(p.start <= p.end && p.end <= d.len());
        // The payload span alone, wrapped as a document, scans as well-formed too.
        let mut wrapped = br#"{"type":"x","payload":"#.to_vec();
        wrapped.extend_from_slice(p.of(d));
        wrapped.push(b'}');
        assert!(scan::scan(&wrapped).is_ok(), "payload span is well-formed");
    }
});
