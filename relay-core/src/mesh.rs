//! Trust between the relays of a cluster: every mesh datagram (`relay_wire::mesh`) carries a MAC
//! under the key the relays share, and a sequence number each receiver accepts once. A datagram
//! from a node the cluster does not know, with a MAC that does not check, or whose number was
//! seen (or is too old to tell) is refused, and none of them changes what the next one is
//! judged by.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::mesh::{self, MAC_LEN, Mesh, MeshError};

/// Sequence numbers a receiver still accepts below the highest it has seen from a node: mesh
/// datagrams may be reordered on the way, not replayed.
pub const WINDOW: u64 = 1024;
/// The streams a relay sends in: one per thread that seals mesh datagrams (each worker, the
/// mesh receiver, the link, the reaper), so that each stream's numbers leave in order.
pub const STREAMS: usize = 1024 + 3;
/// A thread that seals mesh datagrams, and so a stream of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Worker `i`.
    Worker(usize),
    /// The mesh receiver (its replies: a closed end, an introduction).
    Receiver,
    /// The link to the directory (pings, settled registrations).
    Link,
    /// The reaper (the closed ends of peers it reaps).
    Reaper,
}

impl Sender {
    /// Its index among a relay of `workers` workers' threads: the workers', then the others'
    /// (also the index of the router it runs).
    pub fn index(self, workers: usize) -> usize {
        match self {
            Sender::Worker(i) => i,
            Sender::Receiver => workers,
            Sender::Link => workers + 1,
            Sender::Reaper => workers + 2,
        }
    }

    /// Its stream.
    pub fn stream(self, workers: usize) -> u16 {
        u16::try_from(self.index(workers)).unwrap_or(u16::MAX)
    }
}

/// The most nodes a relay keeps a window for.
pub const MAX_NODES: usize = 1024;
/// How far (in µs) a sequence number may lag the receiver's clock: a sequence number is the
/// sender's time in microseconds (or one more than its last, if the clock has not moved), so a
/// datagram older than this is refused whatever the window says — what was captured before a
/// receiver restarted, or before a node was listed again, cannot be replayed after it.
pub const MAX_AGE_US: u64 = 30_000_000;
/// The shortest mesh key.
pub const MIN_KEY: usize = 32;

/// Why a mesh datagram is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a mesh datagram this relay reads.
    Malformed(MeshError),
    /// From a node the cluster does not know.
    UnknownNode,
    /// Its MAC does not check under the mesh key (for this receiver).
    BadMac,
    /// Its sequence number was seen, or is too old to tell.
    Replayed,
}

/// The mesh key.
pub struct Keys {
    key: Hmac<Sha256>,
}

impl Keys {
    /// The key `secret` (the shared mesh key file's bytes); `None` if it is shorter than
    /// [`MIN_KEY`] bytes.
    pub fn new(secret: &[u8]) -> Option<Keys> {
        (secret.len() >= MIN_KEY).then(|| Keys {
            key: Hmac::new_from_slice(secret).expect("HMAC takes a key of any length"),
        })
    }

    /// The MAC of a datagram for node `receiver` whose bytes before the MAC are `parts`,
    /// concatenated: the receiver is bound in, so that a datagram sent to one relay opens at
    /// no other.
    pub fn mac(&self, receiver: &str, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut m = self.key.clone();
        m.update(&[receiver.len() as u8]);
        m.update(receiver.as_bytes());
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

/// What this relay keeps of one other node: where it is reached, the numbers it sent there,
/// and what it took.
struct Node {
    mesh: SocketAddr,
    /// The last number sent there, per stream.
    sent: Box<[AtomicU64]>,
    /// What was taken from it, per stream it sends in.
    windows: Mutex<HashMap<u16, Window>>,
    /// When a datagram from it last passed every check (µs), or when it was listed.
    heard_us: AtomicU64,
}

/// The nodes of the cluster: for each, the sequence of what this relay sends it and the window
/// of what it takes from it. Each pair of nodes counts on its own, so that one receiver's
/// reordering allowance is not spent by what the sender sends others.
#[derive(Default)]
pub struct Nodes {
    nodes: RwLock<HashMap<String, Node>>,
}

impl Nodes {
    /// Takes datagrams from, and sends to, `node`, reached at `mesh`, from now on (a node the
    /// directory lists); false if [`MAX_NODES`] are known already. A node new at `listed_us`
    /// counts as heard then.
    pub fn add(&self, node: &str, mesh: SocketAddr, listed_us: u64) -> bool {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(node) {
            n.mesh = mesh;
            return true;
        }
        if nodes.len() >= MAX_NODES {
            return false;
        }
        let n = Node {
            mesh,
            sent: (0..STREAMS).map(|_| AtomicU64::new(0)).collect(),
            windows: Mutex::new(HashMap::new()),
            heard_us: AtomicU64::new(listed_us),
        };
        nodes.insert(node.to_string(), n);
        true
    }

    /// Whether `to` is the mesh address of a node listed (a destination the peer-address policy
    /// does not judge: the operator's own network, named by the directory).
    pub fn is_mesh(&self, to: SocketAddr) -> bool {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.values().any(|n| n.mesh == to)
    }

    /// The nodes listed, with their mesh addresses.
    pub fn listed(&self) -> Vec<(String, SocketAddr)> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.iter().map(|(k, n)| (k.clone(), n.mesh)).collect()
    }

    /// Takes no more datagrams from `node` (gone from the directory).
    pub fn remove(&self, node: &str) {
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    /// The sequence number of the next datagram to `node` in `stream` at `now_us` (this relay's
    /// time in microseconds): the time, or one more than the last if the clock has not moved on
    /// (the window's 1,024 numbers so span at least a millisecond of a stream's reordering);
    /// and the node's mesh address now (a relay restarted on another port is reached there at
    /// once). `None` for a node not listed, or a stream beyond [`STREAMS`].
    pub fn next_seq(&self, node: &str, stream: u16, now_us: u64) -> Option<(u64, SocketAddr)> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let n = nodes.get(node)?;
        let sent = n.sent.get(usize::from(stream))?;
        let mut last = sent.load(Ordering::Relaxed);
        loop {
            let seq = now_us.max(last.saturating_add(1));
            match sent.compare_exchange_weak(last, seq, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((seq, n.mesh)),
                Err(seen) => last = seen,
            }
        }
    }

    /// Reads mesh datagram `d` for node `me`, checked at `now_us`: from a known node, its MAC
    /// under `keys` for `me`, its sequence number no older than [`MAX_AGE_US`] and new in its
    /// stream. Only a datagram that passes every check moves its stream's window; the MAC is
    /// computed before any lock is taken.
    pub fn open<'a>(
        &self,
        keys: &Keys,
        me: &str,
        now_us: u64,
        d: &'a [u8],
    ) -> Result<Mesh<'a>, Refused> {
        let m = mesh::read(d).map_err(Refused::Malformed)?;
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let Some(node) = nodes.get(m.head.node) else {
            return Err(Refused::UnknownNode);
        };
        if !bool::from(keys.mac(me, &[m.covered]).ct_eq(m.mac)) {
            return Err(Refused::BadMac);
        }
        if m.head.seq < now_us.saturating_sub(MAX_AGE_US) {
            return Err(Refused::Replayed);
        }
        if usize::from(m.head.stream) >= STREAMS {
            return Err(Refused::Malformed(mesh::MeshError::Length));
        }
        let mut windows = node.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.entry(m.head.stream).or_default().accept(m.head.seq) {
            return Err(Refused::Replayed);
        }
        node.heard_us.fetch_max(now_us, Ordering::Relaxed);
        Ok(m)
    }

    /// The nodes nothing came from (no datagram that passed every check) in the `quiet_us`
    /// before `now_us`: their mesh links are cut, or they are.
    pub fn silent(&self, now_us: u64, quiet_us: u64) -> Vec<String> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes
            .iter()
            .filter(|(_, n)| n.heard_us.load(Ordering::Relaxed) < now_us.saturating_sub(quiet_us))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mesh::{Head, Via, write_head};

    const KEY: &[u8] = b"the cluster's shared secret, at least 32 bytes";
    const MESH: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        7000,
    );
    /// The receivers' time in these tests: 100 s.
    const NOW: u64 = 100_000_000_000;

    /// A datagram from `node` to `receiver` with `seq`.
    fn sealed(keys: &Keys, node: &str, receiver: &str, seq: u64, payload: &[u8]) -> Vec<u8> {
        let head = Head {
            node,
            seq,
            stream: 0,
            target: "bob",
            via: Via::Source("alice"),
        };
        let mut d = Vec::new();
        assert!(write_head(&mut d, &head, payload.len()));
        let mac = keys.mac(receiver, &[&d, payload]);
        d.extend_from_slice(payload);
        d.extend_from_slice(&mac);
        d
    }

    #[test]
    fn a_sealed_datagram_opens_once_and_a_forged_one_never() {
        let keys = Keys::new(KEY).unwrap();
        let nodes = Nodes::default();
        assert!(nodes.add("relay-a", MESH, NOW));
        let d = sealed(&keys, "relay-a", "relay-b", NOW, b"\"hi\"");
        let m = nodes.open(&keys, "relay-b", NOW, &d).unwrap();
        assert_eq!(&d[m.payload], b"\"hi\"");
        let open = |d: &[u8]| nodes.open(&keys, "relay-b", NOW, d).err();
        assert_eq!(open(&d), Some(Refused::Replayed));
        // Another key, another node, a flipped bit.
        let other = Keys::new(b"a guess at the key, at least 32 bytes long").unwrap();
        assert_eq!(
            open(&sealed(&other, "relay-a", "relay-b", NOW + 1, b"x")),
            Some(Refused::BadMac)
        );
        let stranger = sealed(&keys, "relay-z", "relay-b", NOW + 1, b"x");
        assert_eq!(open(&stranger), Some(Refused::UnknownNode));
        let mut flipped = sealed(&keys, "relay-a", "relay-b", NOW + 7, b"xyz");
        let at = flipped.len() - MAC_LEN - 2;
        flipped[at] ^= 1;
        assert_eq!(open(&flipped), Some(Refused::BadMac));
        // None of them moved the window: NOW + 7, unflipped, is still new.
        assert_eq!(
            open(&sealed(&keys, "relay-a", "relay-b", NOW + 7, b"xyz")),
            None
        );
        // A node removed from the directory is a stranger again.
        nodes.remove("relay-a");
        let later = sealed(&keys, "relay-a", "relay-b", NOW + 8, b"x");
        assert_eq!(open(&later), Some(Refused::UnknownNode));
    }

    #[test]
    fn a_datagram_for_one_relay_opens_at_no_other() {
        let keys = Keys::new(KEY).unwrap();
        let nodes = Nodes::default();
        assert!(nodes.add("relay-a", MESH, NOW));
        let for_b = sealed(&keys, "relay-a", "relay-b", NOW, b"x");
        assert_eq!(
            nodes.open(&keys, "relay-c", NOW, &for_b).err(),
            Some(Refused::BadMac)
        );
        // Nor reflected back to its sender.
        assert!(nodes.add("relay-b", MESH, NOW));
        let from_b = sealed(&keys, "relay-b", "relay-a", NOW, b"x");
        assert_eq!(
            nodes.open(&keys, "relay-b", NOW, &from_b).err(),
            Some(Refused::BadMac)
        );
    }

    #[test]
    fn what_was_captured_before_a_restart_or_a_relisting_is_too_old_to_replay() {
        let keys = Keys::new(KEY).unwrap();
        let nodes = Nodes::default();
        assert!(nodes.add("relay-a", MESH, NOW));
        let captured: Vec<Vec<u8>> = (0..10)
            .map(|i| sealed(&keys, "relay-a", "relay-b", NOW + i, b"x"))
            .collect();
        for d in &captured {
            assert!(nodes.open(&keys, "relay-b", NOW + 10, d).is_ok());
        }
        // relay-a's liveness lapsed and came back (or relay-b restarted, with fresh windows):
        // within MAX_AGE_US the window still holds the numbers; beyond it they are too old.
        nodes.remove("relay-a");
        assert!(nodes.add("relay-a", MESH, NOW));
        let later = NOW + MAX_AGE_US + 10;
        for d in &captured {
            assert_eq!(
                nodes.open(&keys, "relay-b", later, d).err(),
                Some(Refused::Replayed)
            );
        }
        // What relay-a sends now opens.
        let fresh = sealed(&keys, "relay-a", "relay-b", later, b"x");
        assert!(nodes.open(&keys, "relay-b", later, &fresh).is_ok());
    }

    #[test]
    fn each_receiver_counts_on_its_own_and_sequences_follow_the_clock() {
        let nodes = Nodes::default();
        assert!(nodes.add("relay-b", MESH, NOW) && nodes.add("relay-c", MESH, NOW));
        assert_eq!(nodes.next_seq("relay-b", 0, NOW).map(|s| s.0), Some(NOW));
        // The clock did not move: one more; another receiver has its own sequence.
        assert_eq!(
            nodes.next_seq("relay-b", 0, NOW).map(|s| s.0),
            Some(NOW + 1)
        );
        for _ in 0..5_000 {
            nodes.next_seq("relay-c", 0, NOW);
        }
        assert_eq!(
            nodes.next_seq("relay-b", 0, NOW).map(|s| s.0),
            Some(NOW + 2)
        );
        // Never back, even if the clock is.
        assert_eq!(
            nodes.next_seq("relay-b", 0, NOW - 1_000).map(|s| s.0),
            Some(NOW + 3)
        );
        assert_eq!(
            nodes.next_seq("relay-b", 0, NOW + 50).map(|s| s.0),
            Some(NOW + 50)
        );
        assert_eq!(nodes.next_seq("relay-z", 0, NOW), None);
        assert!(Keys::new(b"short").is_none(), "a key under 32 bytes");
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
