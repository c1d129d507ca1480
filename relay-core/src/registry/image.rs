//! The registry as a handover image, written straight from its tables so that no copy is built.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::auth::Key;
use crate::keyed::Keyed;

use super::Registry;

/// One registration as a handover image holds it: every field of its entry, its name, and the
/// key a signed name is bound to. Its name is borrowed: from the tables when written, from the
/// image when read.
#[derive(Serialize, Deserialize)]
pub struct PeerImage<'a> {
    pub(super) name: &'a str,
    pub(super) addr: SocketAddr,
    pub(super) last_heard: u64,
    pub(super) last_keepalive_ds: u32,
    pub(super) seq: u64,
    pub(super) trusted_s: u32,
    pub(super) announced_s: u32,
    pub(super) key: Option<(Key, u64)>,
}

/// The registry as a handover image holds it: the token key (so that every session stays
/// valid), the next registration number (so that none repeats), the registrations and what
/// each watches.
#[derive(Serialize, Deserialize)]
pub struct Image<'a> {
    pub(super) token_key: [u8; 32],
    pub(super) next_seq: u64,
    /// The hash key of the names' table, in whose shard order the registrations come.
    pub(super) names_key: Keyed,
    #[serde(borrow)]
    pub(super) peers: Vec<PeerImage<'a>>,
    pub(super) watches: Vec<(String, Vec<String>)>,
}

/// The registry, written as an [`Image`] straight from its tables (no copy of a million
/// registrations is built first).
#[derive(Serialize)]
pub struct Export<'a> {
    pub(super) token_key: [u8; 32],
    pub(super) next_seq: u64,
    pub(super) names_key: Keyed,
    peers: Peers<'a>,
    watches: Vec<(String, Vec<String>)>,
}

/// Every registration, serialized shard by shard under each shard's read lock.
pub struct Peers<'a>(&'a Registry);

impl Serialize for Peers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let r = self.0;
        // Counted from the tables themselves: the encoding writes the length first.
        let n = (0..r.peers.shard_count())
            .map(|i| r.peers.in_shard(i, |t| t.len()))
            .sum();
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..r.peers.shard_count() {
            r.peers.in_shard(i, |table| {
                table.iter().try_for_each(|(name, e)| {
                    seq.serialize_element(&PeerImage {
                        name,
                        addr: e.addr.get(),
                        last_heard: e.last_heard(),
                        last_keepalive_ds: e.last_keepalive_ds.load(Relaxed),
                        seq: e.seq,
                        trusted_s: e.trusted_s.load(Relaxed),
                        announced_s: e.announced_s.load(Relaxed),
                        key: r.keys.get(&**name, |_, k| *k),
                    })
                })
            })?;
        }
        seq.end()
    }
}

impl Registry {
    /// Everything the registry holds, for a relay that takes over (or a later start) to go on
    /// from. Meant for a registry nothing changes meanwhile (the workers and reaper stopped).
    pub fn export(&self) -> Export<'_> {
        let watches = self
            .watching
            .iter()
            .map(|w| {
                let names = w.names.iter().map(|n| n.to_string()).collect();
                (w.key().to_string(), names)
            })
            .collect();
        Export {
            token_key: self.tokens.key,
            next_seq: self.next_seq.load(Relaxed),
            names_key: self.peers.key(),
            peers: Peers(self),
            watches,
        }
    }
}
