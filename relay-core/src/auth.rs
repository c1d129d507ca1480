//! Signed registration (Part 5): stateless challenge cookies and Ed25519 signatures.
//!
//! A cookie binds the source address, the name, the key and a time under a secret of the
//! relay's (HMAC-SHA-256, truncated to 128 bits), so the relay keeps no state between the
//! challenge and the signed `register`; it is accepted for [`COOKIE_SECS`] seconds. The peer
//! signs `udp-relay register v1\n` + name + `\n` + cookie with its key: the bytes
//! `relay_wire::peer::signed_payload` writes, for the relay and its peers alike.

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::peer;

/// How long a cookie is accepted.
pub const COOKIE_SECS: u64 = 30;
/// What a signature covers before the name (defined once, in the wire crate).
pub use crate::wire::peer::SIGNED_PREFIX;

/// A decoded Ed25519 public key.
pub type Key = [u8; 32];

/// Why a signed registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// A field that is not what it should be (base64, lengths).
    Malformed,
    /// The cookie is not ours, not for this address, name and key, or too old.
    BadCookie,
    /// The signature does not verify.
    BadSignature,
}

/// Issues and checks cookies under a key drawn at start-up.
pub struct Cookies {
    key: [u8; 32],
}

impl Default for Cookies {
    fn default() -> Cookies {
        Cookies {
            key: rand::random(),
        }
    }
}

impl Cookies {
    /// Cookies under `key` (a key a relay handed over: its cookies stay valid).
    pub fn with_key(key: [u8; 32]) -> Cookies {
        Cookies { key }
    }

    /// The key, for a handover.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// The MAC over a cookie's fields, ready to finalize or verify.
    fn mac(&self, secs: u64, from: SocketAddr, name: &str, key: &Key) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(&secs.to_be_bytes());
        m.update(from.to_string().as_bytes());
        m.update(&[0]);
        m.update(&(name.len() as u64).to_be_bytes());
        m.update(name.as_bytes());
        m.update(key);
        m
    }

    /// A cookie for `name` and `key` at `from`, issued at `secs` (Unix seconds), in base64.
    pub fn issue(&self, secs: u64, from: SocketAddr, name: &str, key: &Key) -> String {
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&secs.to_be_bytes());
        raw[8..].copy_from_slice(&self.mac(secs, from, name, key).finalize().into_bytes()[..16]);
        B64.encode(raw)
    }

    /// Checks `cookie` for `name`, `key` and `from` at `now_secs`; returns when it was issued.
    pub fn check(
        &self,
        cookie: &str,
        now_secs: u64,
        from: SocketAddr,
        name: &str,
        key: &Key,
    ) -> Result<u64, AuthError> {
        let raw = B64.decode(cookie).map_err(|_| AuthError::Malformed)?;
        let raw: [u8; 24] = raw.try_into().map_err(|_| AuthError::Malformed)?;
        let secs = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if secs > now_secs || now_secs - secs > COOKIE_SECS {
            return Err(AuthError::BadCookie);
        }
        // Constant-time comparison of the truncated tag.
        self.mac(secs, from, name, key)
            .verify_truncated_left(&raw[8..])
            .map(|()| secs)
            .map_err(|_| AuthError::BadCookie)
    }
}

/// Decodes a base64 Ed25519 public key.
pub fn key(b64: &str) -> Result<Key, AuthError> {
    let raw = B64.decode(b64).map_err(|_| AuthError::Malformed)?;
    raw.try_into().map_err(|_| AuthError::Malformed)
}

/// Verifies `sig` (base64) by `key` over the registration of `name` with `cookie`.
pub fn verify(key: &Key, name: &str, cookie: &str, sig: &str) -> Result<(), AuthError> {
    let raw = B64.decode(sig).map_err(|_| AuthError::Malformed)?;
    let raw: [u8; 64] = raw.try_into().map_err(|_| AuthError::Malformed)?;
    let vk = VerifyingKey::from_bytes(key).map_err(|_| AuthError::Malformed)?;
    let mut msg = Vec::with_capacity(SIGNED_PREFIX.len() + name.len() + 1 + cookie.len());
    peer::signed_payload(&mut msg, name, cookie);
    vk.verify_strict(&msg, &Signature::from_bytes(&raw))
        .map_err(|_| AuthError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn sign(sk: &SigningKey, name: &str, cookie: &str) -> String {
        let mut msg = Vec::new();
        peer::signed_payload(&mut msg, name, cookie);
        B64.encode(sk.sign(&msg).to_bytes())
    }

    #[test]
    fn a_cookie_binds_address_name_key_and_time() {
        let c = Cookies::default();
        let from: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let k = [7u8; 32];
        let cookie = c.issue(1000, from, "alice", &k);
        assert_eq!(c.check(&cookie, 1010, from, "alice", &k), Ok(1000));
        let other: SocketAddr = "192.0.2.2:5000".parse().unwrap();
        assert_eq!(
            c.check(&cookie, 1010, other, "alice", &k),
            Err(AuthError::BadCookie)
        );
        assert_eq!(
            c.check(&cookie, 1010, from, "bob", &k),
            Err(AuthError::BadCookie)
        );
        assert_eq!(
            c.check(&cookie, 1010, from, "alice", &[8; 32]),
            Err(AuthError::BadCookie)
        );
        assert_eq!(
            c.check(&cookie, 1031, from, "alice", &k),
            Err(AuthError::BadCookie)
        );
        assert_eq!(
            c.check(&cookie, 999, from, "alice", &k),
            Err(AuthError::BadCookie)
        );
        assert_eq!(
            Cookies::default().check(&cookie, 1010, from, "alice", &k),
            Err(AuthError::BadCookie)
        );
        assert_eq!(
            c.check("not base64!", 1010, from, "alice", &k),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn signatures_verify_only_for_their_key_name_and_cookie() {
        let sk = SigningKey::from_bytes(&[1; 32]);
        let pk = sk.verifying_key().to_bytes();
        let sig = sign(&sk, "alice", "cookie");
        assert_eq!(verify(&pk, "alice", "cookie", &sig), Ok(()));
        assert_eq!(
            verify(&pk, "alicf", "cookie", &sig),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify(&pk, "alice", "cookiE", &sig),
            Err(AuthError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes();
        assert_eq!(
            verify(&other, "alice", "cookie", &sig),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify(&pk, "alice", "cookie", "AAAA"),
            Err(AuthError::Malformed)
        );
        assert_eq!(key(&B64.encode(pk)), Ok(pk));
        assert_eq!(key("AAAA"), Err(AuthError::Malformed));
    }
}
