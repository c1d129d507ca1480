//! The wire format: the shared `relay-wire` crate (families, scanner, replies, frames, STUN),
//! and the control messages this relay parses with simd-json (a server-side dependency the
//! crate does without).

pub use relay_wire::{
    Family, MAX_NAME, classify, frame, mesh, peer, reply, scan, stun, valid_name,
};

pub mod control;
