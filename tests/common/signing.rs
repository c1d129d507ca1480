//! A signing peer's side of Part 5: keys, the signature the relay verifies, the challenge and
//! the signed registration.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use relay_wire::{peer, read};
use serde_json::Value;

use super::Peer;

/// The key of seed `seed`.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Its public key, as a peer sends it.
pub fn pubkey(k: &SigningKey) -> String {
    B64.encode(k.verifying_key().to_bytes())
}

/// The signature of the registration of `name` with `cookie`, over the bytes the relay
/// verifies (`peer::signed_payload`, which the relay uses too).
pub fn sign(k: &SigningKey, name: &str, cookie: &str) -> String {
    let mut msg = Vec::new();
    peer::signed_payload(&mut msg, name, cookie);
    B64.encode(k.sign(&msg).to_bytes())
}

/// The cookie of the `challenge` `p` receives next.
pub fn challenge(p: &Peer) -> String {
    match p.expect_msg("challenge") {
        read::Message::Challenge { cookie } => cookie.into_owned(),
        m => unreachable!("{m:?}"),
    }
}

/// Asks for a challenge and answers it, as a signing peer does (with relay-wire's writers and
/// reader); returns the next message (the ack or an error).
pub fn signed_register(p: &Peer, name: &str, k: &SigningKey) -> Value {
    let mut d = Vec::new();
    peer::register_key(&mut d, name, &pubkey(k));
    p.send_raw(&d);
    let cookie = challenge(p);
    d.clear();
    peer::register_signed(&mut d, name, &pubkey(k), &cookie, &sign(k, name, &cookie));
    p.send_raw(&d);
    p.recv()
}
