//! Session tokens, derived from registration numbers so that none repeats and none is stored.

use std::fmt::Write as _;

/// The opaque token a registration is given, proving later that a moved peer is the same one.
#[derive(Clone, Copy)]
pub struct Session(pub(super) [u8; 16]);

/// Compared in constant time: how long a comparison takes tells nothing of a token.
impl PartialEq for Session {
    fn eq(&self, other: &Session) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Session {}

/// A credential: kept out of logs.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

impl Session {
    /// Parses the wire form (32 lowercase or uppercase hex digits).
    pub fn parse(s: &str) -> Option<Session> {
        let s = s.as_bytes();
        // Hex digits only (`from_str_radix` alone would take a sign), so each token has one form.
        if s.len() != 32 || !s.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            b[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Session(b))
    }

    /// The wire form.
    pub fn to_hex(self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// Issues and checks session tokens. The token of registration number `seq` is the ChaCha20
/// keystream under a key drawn at start-up, with `seq` as the stream: unguessable without the
/// key, unique per registration (`seq` never repeats), and nothing to store in an entry.
pub(super) struct Tokens {
    pub(super) key: [u8; 32],
}

impl Tokens {
    pub(super) fn of(&self, seq: u64) -> Session {
        use rand::{RngCore, SeedableRng};
        let mut c = rand_chacha::ChaCha20Rng::from_seed(self.key);
        c.set_stream(seq);
        let mut b = [0; 16];
        c.fill_bytes(&mut b);
        Session(b)
    }
}
