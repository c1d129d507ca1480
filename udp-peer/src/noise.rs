//! End-to-end encryption: Noise XX (`snow`) between two peers, each Noise static key bound to
//! its owner's Ed25519 identity by a signature carried in the handshake (as libp2p's Noise does),
//! then transport packets sealed under explicit nonces, so that datagrams lost, late or
//! arriving by the other path still open, each once ([`crate::replay`]).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use snow::{Builder, HandshakeState, StatelessTransportState};

use crate::packet;
use crate::replay::Window;

/// The Noise protocol: XX, since a peer may not know the other's key before the first talk.
pub const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// What an identity signs before its name and Noise static key.
const BINDING: &[u8] = b"udp-peer noise v1\n";
/// Room for a Noise message: the largest datagram a peer sends.
pub const MAX_PACKET: usize = 1400;
/// ChaChaPoly's tag.
pub const TAG: usize = 16;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// A message did not decrypt or parse as Noise.
    Noise,
    /// The peer's identity proof names another peer or its signature does not verify.
    Identity,
}

/// This peer's identity in the handshake: its Ed25519 key and a Noise static key signed by it.
pub struct Identity {
    static_private: Vec<u8>,
    /// What the handshake carries: Ed25519 public key, signature, name.
    proof: Vec<u8>,
}

fn params() -> snow::params::NoiseParams {
    PATTERN.parse().expect("a valid Noise pattern")
}

fn bound(name: &str, static_public: &[u8]) -> Vec<u8> {
    let mut m = BINDING.to_vec();
    m.extend_from_slice(name.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(static_public);
    m
}

impl Identity {
    /// `key`'s identity as `name`, with a fresh Noise static key.
    pub fn new(key: &SigningKey, name: &str) -> Identity {
        let kp = Builder::new(params())
            .generate_keypair()
            .expect("the OS's random numbers");
        let sig = key.sign(&bound(name, &kp.public));
        let mut proof = key.verifying_key().to_bytes().to_vec();
        proof.extend_from_slice(&sig.to_bytes());
        proof.extend_from_slice(name.as_bytes());
        Identity {
            static_private: kp.private,
            proof,
        }
    }
}

/// The prologue both sides mix in: the two names, initiator first.
fn prologue(initiator: &str, responder: &str) -> Vec<u8> {
    format!("udp-peer v1\n{initiator}\n{responder}").into_bytes()
}

/// A handshake under way.
pub struct Handshake {
    state: HandshakeState,
    /// The peer's name, which its proof must carry.
    peer: String,
    /// Whether a message was written yet.
    wrote: bool,
}

impl Handshake {
    /// A handshake of `me` with `peer`, as the initiator or the responder.
    pub fn new(id: &Identity, me: &str, peer: &str, initiator: bool) -> Handshake {
        let p = if initiator {
            prologue(me, peer)
        } else {
            prologue(peer, me)
        };
        let b = Builder::new(params())
            .local_private_key(&id.static_private)
            .and_then(|b| b.prologue(&p))
            .expect("a key of the pattern's length");
        let state = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .expect("a complete builder");
        Handshake {
            state,
            peer: peer.to_string(),
            wrote: false,
        }
    }

    /// Writes the next message, appending it to `buf`: XX's first carries no payload (it is not
    /// encrypted), the second and third carry `id`'s proof.
    pub fn write(&mut self, id: &Identity, buf: &mut Vec<u8>) {
        let first = self.state.is_initiator() && !self.wrote;
        self.wrote = true;
        let payload: &[u8] = if first { &[] } else { &id.proof };
        let start = buf.len();
        buf.resize(start + MAX_PACKET, 0);
        let n = self
            .state
            .write_message(payload, &mut buf[start..])
            .expect("room for a handshake message");
        buf.truncate(start + n);
    }

    /// Reads the peer's next message; checks its proof when it carries one.
    pub fn read(&mut self, noise: &[u8]) -> Result<Option<[u8; 32]>, HandshakeError> {
        let mut payload = [0u8; MAX_PACKET];
        let n = self
            .state
            .read_message(noise, &mut payload)
            .map_err(|_| HandshakeError::Noise)?;
        if n == 0 {
            return Ok(None);
        }
        let remote = self
            .state
            .get_remote_static()
            .ok_or(HandshakeError::Identity)?;
        verify(&payload[..n], &self.peer, remote).map(Some)
    }

    /// Whether the handshake is finished.
    pub fn finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The session the finished handshake opened.
    pub fn into_session(self, peer_id: u32) -> Session {
        Session {
            transport: self
                .state
                .into_stateless_transport_mode()
                .expect("a finished handshake"),
            next_nonce: 0,
            window: Window::default(),
            peer_id,
        }
    }
}

/// Checks an identity proof: the name expected, and its key's signature of that name and the
/// Noise static key the handshake proved; returns the key.
fn verify(proof: &[u8], name: &str, static_public: &[u8]) -> Result<[u8; 32], HandshakeError> {
    let (key, rest) = proof.split_at_checked(32).ok_or(HandshakeError::Identity)?;
    let (sig, claimed) = rest.split_at_checked(64).ok_or(HandshakeError::Identity)?;
    if claimed != name.as_bytes() {
        return Err(HandshakeError::Identity);
    }
    let key: [u8; 32] = key.try_into().map_err(|_| HandshakeError::Identity)?;
    let vk = VerifyingKey::from_bytes(&key).map_err(|_| HandshakeError::Identity)?;
    let sig = Signature::from_slice(sig).map_err(|_| HandshakeError::Identity)?;
    vk.verify(&bound(name, static_public), &sig)
        .map_err(|_| HandshakeError::Identity)?;
    Ok(key)
}

/// Why a datagram from a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refused {
    /// Its nonce was taken already, or is older than the replay window.
    Replayed,
    /// It does not authenticate under the session's key (forged, altered, or another session's).
    Unauthentic,
    /// No session of ours has its id, or it is no peer packet at all.
    Unknown,
    /// It authenticated but its content does not parse.
    Malformed,
}

/// An open session: seals and opens transport packets.
pub struct Session {
    transport: StatelessTransportState,
    next_nonce: u64,
    window: Window,
    /// The peer's session id, which every packet to it carries.
    pub peer_id: u32,
}

impl Session {
    /// Seals `plain` into a transport packet, appended to `buf`.
    pub fn seal(&mut self, plain: &[u8], buf: &mut Vec<u8>) {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        packet::transport(buf, self.peer_id, nonce);
        let start = buf.len();
        buf.resize(start + plain.len() + TAG, 0);
        let n = self
            .transport
            .write_message(nonce, plain, &mut buf[start..])
            .expect("room for the tag");
        buf.truncate(start + n);
    }

    /// Opens a transport packet's `sealed` bytes under `nonce`.
    pub fn open(&mut self, nonce: u64, sealed: &[u8]) -> Result<Vec<u8>, Refused> {
        if !self.window.fresh(nonce) {
            return Err(Refused::Replayed);
        }
        let mut plain = vec![0u8; sealed.len()];
        let n = self
            .transport
            .read_message(nonce, sealed, &mut plain)
            .map_err(|_| Refused::Unauthentic)?;
        plain.truncate(n);
        self.window.take(nonce);
        Ok(plain)
    }
}
