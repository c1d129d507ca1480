//! Helpers shared by the benches: realistic datagrams, addresses, times and big registries.
//!
//! Each bench uses only some of them.
#![allow(dead_code)]

/// A deterministic xorshift64* generator, so every run benches the same bytes and keys.
pub struct Rng(u64);

impl Rng {
    /// A generator from a nonzero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next 64 pseudo-random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A pseudo-random index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `len` characters of base64 over pseudo-random bytes: what an encrypted chat payload looks like.
pub fn base64ish(len: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut s: String = (0..len)
        .map(|_| B64[(rng.next() >> 58) as usize] as char)
        .collect();
    // Padding, as a real encoder of a length not divisible by three would emit.
    if len >= 2 {
        s.replace_range(len - 2.., "==");
    }
    s
}

/// A `relay` datagram whose payload is the JSON value `payload`, fields in the peers' order.
pub fn relay_with(source: &str, target: &str, payload: &str) -> Vec<u8> {
    format!(r#"{{"type":"relay","target":"{target}","source":"{source}","payload":{payload}}}"#)
        .into_bytes()
}

/// A `relay` datagram whose payload is a base64 string of `len` characters.
pub fn relay_b64(source: &str, target: &str, len: usize) -> Vec<u8> {
    relay_with(
        source,
        target,
        &format!("\"{}\"", base64ish(len, len as u64)),
    )
}

/// An encrypted-message envelope as a nested JSON object of about `len` bytes: numbers, nested
/// objects, arrays and base64 strings, so the scanner's container and number paths are exercised.
pub fn nested_payload(len: usize) -> String {
    let head = format!(
        r#"{{"v":2,"alg":"x25519-chacha20poly1305","seq":184467,"ts":1795574001.25,"eph":"{}","nonce":"{}","hdr":{{"dh":"{}","pn":12,"n":[3,-1,0.5e-3,true,false,null]}},"chunks":["#,
        base64ish(44, 1),
        base64ish(32, 2),
        base64ish(44, 3),
    );
    let mut s = head;
    let mut i = 0u64;
    // Chunks of ciphertext until the envelope reaches `len` (closing bytes included).
    while s.len() + 80 < len {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(r#"{{"i":{i},"ct":"{}"}}"#, base64ish(56, 10 + i)));
        i += 1;
    }
    s.push_str(r#"],"mac":""#);
    let pad = len.saturating_sub(s.len() + 3).max(1);
    s.push_str(&base64ish(pad, 99));
    s.push_str("\"}");
    s
}

/// The moment `ms` milliseconds after the relay's clock started: the crate's one harness.
#[allow(unused_imports)] // each bench uses what it needs
pub use relay_core::testing::at;

/// The million-peer helpers of the crate's harness.
#[allow(unused_imports)] // each bench uses what it needs
pub use relay_core::testing::{fill, many_addr as addr, many_name as name};
