//! Trust between the relays of a cluster: every mesh datagram (`relay_wire::mesh`) carries a MAC
//! under the key the relays share, and a sequence number each receiver accepts once. A datagram
//! from a node the cluster does not know, with a MAC that does not check, or whose number was
//! seen (or is too old to tell) is refused, and none of them changes what the next one is
//! judged by.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::mesh::{self, MAC_LEN, Mesh, MeshError};

/// Sequence numbers a receiver still accepts below the highest it has seen from a node: mesh
/// datagrams may be reordered on the way, not replayed.
pub const WINDOW: u64 = 1024;
/// The most nodes a relay keeps a window for.
pub const MAX_NODES: usize = 1024;

/// Why a mesh datagram is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a mesh datagram this relay reads.
    Malformed(MeshError),
    /// From a node the cluster does not know.
    UnknownNode,
    /// Its MAC does not check under the mesh key.
    BadMac,
    /// Its sequence number was seen, or is too old to tell.
    Replayed,
}

/// The mesh key, and this node's sending sequence.
pub struct Keys {
    key: Hmac<Sha256>,
    next: AtomicU64,
}

impl Keys {
    /// The key `secret` (the shared mesh key file's bytes), this node sending from sequence
    /// number `first` on: a number it never sent under this key before (the binary starts from
    /// the time in nanoseconds, which a restart does not turn back).
    pub fn new(secret: &[u8], first: u64) -> Keys {
        Keys {
            key: Hmac::new_from_slice(secret).expect("HMAC takes a key of any length"),
            next: AtomicU64::new(first),
        }
    }

    /// The next sequence number to send with.
    pub fn next_seq(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The MAC of a datagram whose bytes before the MAC are `parts`, concatenated.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut m = self.key.clone();
        for p in parts {
            m.update(p);
        }
        let full = m.finalize().into_bytes();
        full[..MAC_LEN]
            .try_into()
            .expect("SHA-256 is longer than the MAC")
    }
}

/// What a receiver has seen of one node: the highest number, and which of the [`WINDOW`]
/// below it.
#[derive(Debug, Default, Clone)]
struct Window {
    highest: u64,
    seen: Vec<u64>,
    started: bool,
}

impl Window {
    /// Whether `seq` is new, marking it seen if so.
    fn accept(&mut self, seq: u64) -> bool {
        let words = (WINDOW / 64) as usize;
        if self.seen.is_empty() {
            self.seen = vec![0; words];
        }
        let bit = |s: u64| ((s % WINDOW) / 64) as usize;
        let mask = |s: u64| 1u64 << (s % 64);
        if !self.started || seq > self.highest {
            // Forget what falls out of the window (all of it after a jump of a window or more).
            let from = if self.started { self.highest + 1 } else { seq };
            if !self.started || seq - from >= WINDOW {
                self.seen.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in from..seq {
                    self.seen[bit(s)] &= !mask(s);
                }
            }
            self.seen[bit(seq)] |= mask(seq);
            self.highest = seq;
            self.started = true;
            return true;
        }
        if self.highest - seq >= WINDOW {
            return false;
        }
        let w = &mut self.seen[bit(seq)];
        if *w & mask(seq) != 0 {
            return false;
        }
        *w |= mask(seq);
        true
    }
}

/// The nodes of the cluster this relay takes mesh datagrams from, each with its window.
#[derive(Default)]
pub struct Nodes {
    windows: Mutex<HashMap<String, Window>>,
}

impl Nodes {
    /// Takes datagrams from `node` from now on (a node the directory lists); false if
    /// [`MAX_NODES`] are known already.
    pub fn add(&self, node: &str) -> bool {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() >= MAX_NODES && !w.contains_key(node) {
            return false;
        }
        w.entry(node.to_string()).or_default();
        true
    }

    /// Takes no more datagrams from `node` (gone from the directory).
    pub fn remove(&self, node: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    /// Reads mesh datagram `d`, checked: from a known node, its MAC under `keys`, its sequence
    /// number new. Only a datagram that passes all three moves the node's window.
    pub fn open<'a>(&self, keys: &Keys, d: &'a [u8]) -> Result<Mesh<'a>, Refused> {
        let m = mesh::read(d).map_err(Refused::Malformed)?;
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let Some(window) = windows.get_mut(m.head.node) else {
            return Err(Refused::UnknownNode);
        };
        if !bool::from(keys.mac(&[m.covered]).ct_eq(m.mac)) {
            return Err(Refused::BadMac);
        }
        if !window.accept(m.head.seq) {
            return Err(Refused::Replayed);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mesh::{Head, Via, write_head};

    fn sealed(keys: &Keys, node: &str, seq: u64, payload: &[u8]) -> Vec<u8> {
        let head = Head {
            node,
            seq,
            target: "bob",
            via: Via::Source("alice"),
        };
        let mut d = Vec::new();
        assert!(write_head(&mut d, &head, payload.len()));
        let mac = keys.mac(&[&d, payload]);
        d.extend_from_slice(payload);
        d.extend_from_slice(&mac);
        d
    }

    #[test]
    fn a_sealed_datagram_opens_once_and_a_forged_one_never() {
        let keys = Keys::new(b"the cluster's secret", 1);
        let nodes = Nodes::default();
        assert!(nodes.add("relay-a"));
        let d = sealed(&keys, "relay-a", keys.next_seq(), b"\"hi\"");
        let m = nodes.open(&keys, &d).unwrap();
        assert_eq!(&d[m.payload], b"\"hi\"");
        assert_eq!(nodes.open(&keys, &d).err(), Some(Refused::Replayed));
        // Another key, another node, a flipped bit.
        let other = Keys::new(b"a guess", 1);
        let forged = sealed(&other, "relay-a", 99, b"x");
        assert_eq!(nodes.open(&keys, &forged).err(), Some(Refused::BadMac));
        let stranger = sealed(&keys, "relay-z", 5, b"x");
        assert_eq!(
            nodes.open(&keys, &stranger).err(),
            Some(Refused::UnknownNode)
        );
        let mut flipped = sealed(&keys, "relay-a", 7, b"xyz");
        let at = flipped.len() - MAC_LEN - 2;
        flipped[at] ^= 1;
        assert_eq!(nodes.open(&keys, &flipped).err(), Some(Refused::BadMac));
        // None of them moved the window: 7, unflipped, is still new.
        assert!(
            nodes
                .open(&keys, &sealed(&keys, "relay-a", 7, b"xyz"))
                .is_ok()
        );
        // A node removed from the directory is a stranger again.
        nodes.remove("relay-a");
        let later = sealed(&keys, "relay-a", 8, b"x");
        assert_eq!(nodes.open(&keys, &later).err(), Some(Refused::UnknownNode));
    }

    #[test]
    fn the_window_takes_reordering_once_and_nothing_too_old() {
        let mut w = Window::default();
        assert!(w.accept(1_000_000));
        assert!(w.accept(1_000_005));
        assert!(w.accept(1_000_003), "reordered");
        assert!(!w.accept(1_000_003), "replayed");
        assert!(!w.accept(1_000_005));
        assert!(w.accept(1_000_005 - (WINDOW - 1)), "the oldest still told");
        assert!(!w.accept(1_000_005 - WINDOW), "too old to tell");
        // A jump beyond the window forgets everything below it; what it passed is too old.
        assert!(w.accept(5_000_000));
        assert!(!w.accept(1_000_004));
        assert!(w.accept(4_999_999));
        // Numbers near the end of the range, and wrapping bit positions, still count once.
        assert!(w.accept(u64::MAX - 1));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX - 1));
        // Every number of a window, in any order, exactly once.
        let mut w = Window::default();
        let base = 77_777;
        let mut order: Vec<u64> = (0..WINDOW).map(|i| base + (i * 389) % WINDOW).collect();
        order.sort_by_key(|s| (s * 2_654_435_761) % 1_000_003);
        let fresh = order.iter().filter(|&&s| w.accept(s)).count() as u64;
        assert_eq!(fresh, WINDOW, "all within a window of each other");
        assert!(order.iter().all(|&s| !w.accept(s)), "each at most once");
    }
}
