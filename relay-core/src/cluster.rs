//! What a relay of a cluster holds beside its own state: its node id, the mesh key and its
//! sending sequence, the nodes it takes mesh datagrams from, the names homed elsewhere, the
//! names homed here with their claims' epochs, and the work it owes the directory. Set once, by
//! the binary, when the relay joins a cluster; without one the relay is an island.
//!
//! The workers never wait for the directory: a registration that needs a claim is queued here
//! as a [`Pending`] (bounded) and decided again when the binary's link has settled it; a name
//! that leaves queues its release; a target this relay does not know queues a lookup. The link
//! takes the queue in order, so that a name's release is never overtaken by its next claim.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::addr::{host_key, prefix};
use crate::mesh::{Keys, Nodes};
use crate::remote::Remote;

/// The most claims and lookups queued at once: beyond it a registration that needs a claim is
/// refused (`cluster_busy`) and a lookup is not asked. Releases are never refused (they are
/// bounded by the names homed here, which the registry bounds).
pub const MAX_QUEUED: usize = 16_384;
/// The most claims one host (an IPv4 address, an IPv6 /56) may have waiting.
pub const MAX_QUEUED_PER_HOST: usize = MAX_QUEUED / 64;
/// The most claims one network (a /24, a /48) may have waiting: a sixteenth of the queue, so
/// that a newcomer of another network finds room whatever one network floods.
pub const MAX_QUEUED_PER_NETWORK: usize = MAX_QUEUED / 16;

/// The epoch of a release that releases whatever claim this node holds (no claim has it).
pub const ANY_EPOCH: u64 = 0;

/// A registration waiting for its claim: its datagram, decided again once the claim settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The name claimed.
    pub name: String,
    /// The public key it was signed with (checked here), if it was: the directory moves a name
    /// signed with it from another live relay.
    pub key: Option<String>,
    /// Where it came from.
    pub from: SocketAddr,
    /// The `register` or `keepalive` as received.
    pub datagram: Vec<u8>,
    /// When it arrived, on the relay's clock (ms).
    pub at_ms: u64,
}

/// A name homed here: its claim's epoch, and the public key it was signed with, if it was (kept
/// for the directory, which moves a signed name with it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Homed {
    epoch: u64,
    key: Option<String>,
}

/// Work owed to the directory, in the order it arose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Claim a name for a registration.
    Claim(Pending),
    /// Release a name that left, at the epoch it was claimed with.
    Release(String, u64),
    /// Find where a name not known here is homed.
    Lookup(String),
}

/// Directory counters the link keeps and the ops endpoint shows.
#[derive(Debug, Default)]
pub struct Stats {
    /// Whether the directory answered its last call.
    pub up: AtomicBool,
    /// Claims won.
    pub claims_won: AtomicU64,
    /// Claims the directory answered `name_in_use`.
    pub claims_lost: AtomicU64,
    /// Claims that failed (the directory away, or late).
    pub claims_failed: AtomicU64,
    /// Releases done.
    pub releases: AtomicU64,
    /// Releases that failed (the name lapses with its node, or is claimed over).
    pub releases_failed: AtomicU64,
    /// Lookups of a target this relay did not know that found its home.
    pub lookups_found: AtomicU64,
    /// Lookups that found no live home.
    pub lookups_missing: AtomicU64,
    /// Lookups that failed.
    pub lookups_failed: AtomicU64,
    /// Operations refused because the queue was full.
    pub queue_full: AtomicU64,
    /// Directory calls made.
    pub calls: AtomicU64,
    /// Microseconds the directory calls took, summed.
    pub call_us: AtomicU64,
    /// Names homed here that the directory gave to another relay meanwhile.
    pub conflicts: AtomicU64,
    /// The nodes nothing came from over the mesh for a node TTL (a gauge).
    pub silent_links: AtomicU64,
}

impl Stats {
    /// Counts one.
    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A relay's part in its cluster.
pub struct Cluster {
    /// This relay's node id.
    pub node: String,
    /// The mesh key and this node's sending sequence.
    pub keys: Keys,
    /// The nodes mesh datagrams are taken from.
    pub nodes: Nodes,
    /// The names homed at other relays.
    pub remote: Remote,
    /// The directory's counters.
    pub stats: Stats,
    /// The names homed here: their claims' epochs, and the keys they were signed with.
    homes: Mutex<HashMap<String, Homed>>,
    queue: Mutex<Queue>,
    /// Called when work is queued (the link waits for it).
    wake: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// Claims and lookups among `ops` (releases are not counted).
    bounded: usize,
    /// The names whose lookup is queued, asked once however many datagrams miss them.
    lookups: HashSet<String>,
    /// Claims waiting, per host and per network of their registrations.
    per_host: HashMap<[u8; 9], usize>,
    per_network: HashMap<[u8; 7], usize>,
}

impl Queue {
    /// Counts (`up`) or uncounts a waiting claim of `from`.
    fn count(&mut self, from: SocketAddr, up: bool) {
        fn step<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K, up: bool) {
            if up {
                *m.entry(k).or_default() += 1;
            } else if let Some(n) = m.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&k);
                }
            }
        }
        step(&mut self.per_host, host_key(from.ip()), up);
        step(&mut self.per_network, prefix(from.ip()), up);
    }
}

impl Cluster {
    /// Node `node` of a cluster keyed by `keys`, knowing at most `max_remote` names homed
    /// elsewhere; `wake` is called whenever work is queued for the directory.
    pub fn new(
        node: &str,
        keys: Keys,
        max_remote: usize,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Cluster {
        Cluster {
            node: node.to_string(),
            keys,
            nodes: Nodes::default(),
            remote: Remote::new(max_remote),
            stats: Stats::default(),
            homes: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            wake,
        }
    }

    fn push(&self, op: Op) -> bool {
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            match &op {
                Op::Release(..) => {}
                _ if q.bounded >= MAX_QUEUED => {
                    Stats::add(&self.stats.queue_full);
                    return false;
                }
                Op::Lookup(name) => {
                    if !q.lookups.insert(name.clone()) {
                        return true;
                    }
                    q.bounded += 1;
                }
                Op::Claim(p) => {
                    let host = q.per_host.get(&host_key(p.from.ip())).copied();
                    let network = q.per_network.get(&prefix(p.from.ip())).copied();
                    if host.unwrap_or(0) >= MAX_QUEUED_PER_HOST
                        || network.unwrap_or(0) >= MAX_QUEUED_PER_NETWORK
                    {
                        Stats::add(&self.stats.queue_full);
                        return false;
                    }
                    q.count(p.from, true);
                    q.bounded += 1;
                }
            }
            q.ops.push_back(op);
        }
        (self.wake)();
        true
    }

    /// Queues `p`'s claim; false if the queue is full.
    pub fn pend(&self, p: Pending) -> bool {
        self.push(Op::Claim(p))
    }

    /// Queues a lookup of `name` (once, however often it is missed).
    pub fn lookup(&self, name: &str) {
        self.push(Op::Lookup(name.to_string()));
    }

    /// Takes up to `max` queued operations, oldest first.
    pub fn take(&self, max: usize) -> Vec<Op> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = max.min(q.ops.len());
        let ops: Vec<Op> = q.ops.drain(..n).collect();
        for op in &ops {
            match op {
                Op::Lookup(name) => {
                    q.lookups.remove(name);
                    q.bounded -= 1;
                }
                Op::Claim(p) => {
                    q.count(p.from, false);
                    q.bounded -= 1;
                }
                Op::Release(..) => {}
            }
        }
        ops
    }

    /// Whether `name` is homed here (its claim settled).
    pub fn is_home(&self, name: &str) -> bool {
        self.homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    /// `name` is homed here from the claim of `epoch` on, signed with `key` if it was.
    pub fn homed(&self, name: &str, epoch: u64, key: Option<String>) {
        self.homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), Homed { epoch, key });
    }

    /// The epoch `name` is homed here at, if it is.
    pub fn home_epoch(&self, name: &str) -> Option<u64> {
        let homes = self.homes.lock().unwrap_or_else(PoisonError::into_inner);
        homes.get(name).map(|h| h.epoch)
    }

    /// The key `name`, homed here, was signed with (to publish it with again).
    pub fn key_of(&self, name: &str) -> Option<String> {
        let homes = self.homes.lock().unwrap_or_else(PoisonError::into_inner);
        homes.get(name).and_then(|h| h.key.clone())
    }

    /// `name` left this relay: it is homed here no more, and its release is queued (never
    /// refused), at the epoch it was claimed with, or at [`ANY_EPOCH`] for a name this relay
    /// holds without knowing its epoch (restored by a takeover before the link published it
    /// again).
    pub fn left(&self, name: &str) {
        let homed = self
            .homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let epoch = homed.map_or(ANY_EPOCH, |h| h.epoch);
        self.push(Op::Release(name.to_string(), epoch));
    }

    /// `name` is homed here no longer, without a release (the directory gave it to another
    /// relay at a later epoch): false if it was not homed here, or at a later epoch.
    pub fn lost(&self, name: &str, epoch: u64) -> bool {
        let mut homes = self.homes.lock().unwrap_or_else(PoisonError::into_inner);
        if homes.get(name).is_some_and(|h| h.epoch < epoch) {
            homes.remove(name);
            return true;
        }
        false
    }

    /// How many names are homed here.
    pub fn home_count(&self) -> usize {
        self.homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cluster(woken: Arc<AtomicU64>) -> Cluster {
        let keys = Keys::new(&[7; 32]).unwrap();
        Cluster::new(
            "relay-a",
            keys,
            10,
            Box::new(move || {
                woken.fetch_add(1, Ordering::Relaxed);
            }),
        )
    }

    fn pending(name: &str) -> Pending {
        Pending {
            name: name.into(),
            key: None,
            from: SocketAddr::from(([192, 0, 2, 1], 9)),
            datagram: b"{}".to_vec(),
            at_ms: 0,
        }
    }

    #[test]
    fn work_is_taken_in_order_bounded_and_a_lookup_is_asked_once() {
        let woken = Arc::new(AtomicU64::new(0));
        let c = cluster(woken.clone());
        assert!(c.pend(pending("alice")));
        c.homed("alice", 4, None);
        c.lookup("bob");
        c.lookup("bob");
        c.left("alice");
        c.left("carol");
        assert_eq!(
            c.take(10),
            vec![
                Op::Claim(pending("alice")),
                Op::Lookup("bob".into()),
                Op::Release("alice".into(), 4),
                Op::Release("carol".into(), ANY_EPOCH),
            ]
        );
        assert_eq!(woken.load(Ordering::Relaxed), 4);
        assert!(!c.is_home("alice"));
        // Hosts of many networks fill the queue; a release still finds room.
        for i in 0..MAX_QUEUED {
            let mut p = pending("x");
            p.from = SocketAddr::from(([10, (i / 256) as u8, (i % 256) as u8, 1], 9));
            assert!(c.pend(p));
        }
        assert!(!c.pend(pending("y")), "full");
        assert_eq!(c.stats.queue_full.load(Ordering::Relaxed), 1);
        c.homed("z", 3, None);
        c.left("z");
        assert_eq!(c.take(usize::MAX).len(), MAX_QUEUED + 1);
        // A lookup taken may be asked again.
        c.lookup("bob");
        assert_eq!(c.take(1), vec![Op::Lookup("bob".into())]);
    }

    #[test]
    fn a_host_and_a_network_hold_only_their_share_of_the_waiting_claims() {
        let c = cluster(Arc::default());
        let from = |net: u8, host: u8, port: u16| SocketAddr::from(([198, 51, net, host], port));
        let claim = |from| {
            let mut p = pending("n");
            p.from = from;
            c.pend(p)
        };
        // One host, however many ports.
        for port in 0..MAX_QUEUED_PER_HOST as u16 {
            assert!(claim(from(1, 1, port)));
        }
        assert!(!claim(from(1, 1, 60_000)), "the host's share is held");
        // Its network's other hosts, up to the network's share.
        let mut held = MAX_QUEUED_PER_HOST;
        'network: for host in 2..=254 {
            for port in 0..MAX_QUEUED_PER_HOST as u16 {
                if !claim(from(1, host, port)) {
                    break 'network;
                }
                held += 1;
            }
        }
        assert_eq!(held, MAX_QUEUED_PER_NETWORK);
        // A newcomer of another network is queued all the same.
        assert!(claim(from(2, 1, 9)));
        // Taken, the shares are free again.
        c.take(usize::MAX);
        assert!(claim(from(1, 1, 60_000)));
    }

    #[test]
    fn a_name_is_lost_only_to_a_later_claim() {
        let c = cluster(Arc::default());
        c.homed("alice", 5, None);
        assert!(!c.lost("alice", 5));
        assert!(!c.lost("bob", 9));
        assert!(c.lost("alice", 6));
        assert!(!c.is_home("alice"));
        assert!(c.take(10).is_empty(), "no release for a lost name");
        c.left("bob");
        assert_eq!(c.take(10), vec![Op::Release("bob".into(), ANY_EPOCH)]);
    }
}
