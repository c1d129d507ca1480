//! A cluster's names homed at other relays, as this relay knows them: the directory's joins and
//! leaves, handed in by the binary's link to it, each kept by its epoch so that a late or
//! reordered event never undoes a newer one. Consulted when a `relay` names a peer that is not
//! registered here; bounded, so that no directory can grow it without limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// Where a name is homed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// Its relay's node id.
    pub node: Arc<str>,
    /// That relay's mesh address as the directory gave it with the name (forwards go to the
    /// node's address now, which `mesh::Nodes` keeps).
    pub mesh: SocketAddr,
    /// The claim's epoch.
    pub epoch: u64,
}

/// The names homed elsewhere: at most `max` of each node, so that no relay's names (a registry
/// filled with forged ones) crowd out another's, and at most [`NODES_IN_FULL`] times `max` in
/// all.
pub struct Remote {
    homes: RwLock<Homes>,
    max: usize,
}

/// How many nodes' worth of names the view holds at most.
pub const NODES_IN_FULL: usize = 4;

#[derive(Default)]
struct Homes {
    by_name: HashMap<String, Home>,
    per_node: HashMap<Arc<str>, usize>,
}

impl Homes {
    fn insert(&mut self, name: String, home: Home) {
        *self.per_node.entry(home.node.clone()).or_default() += 1;
        if let Some(old) = self.by_name.insert(name, home) {
            self.uncount(&old.node);
        }
    }

    fn remove(&mut self, name: &str) -> Option<Home> {
        let old = self.by_name.remove(name)?;
        self.uncount(&old.node);
        Some(old)
    }

    fn uncount(&mut self, node: &Arc<str>) {
        if let Some(n) = self.per_node.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                self.per_node.remove(node);
            }
        }
    }
}

impl Remote {
    /// A view of at most `max` names per node.
    pub fn new(max: usize) -> Remote {
        Remote {
            homes: RwLock::new(Homes::default()),
            max,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Homes> {
        self.homes.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Homes> {
        self.homes.read().unwrap_or_else(|e| e.into_inner())
    }

    /// `name` is homed at `home` now, unless a newer claim is known: whether it is new to the
    /// view (false too if the view is full).
    pub fn joined(&self, name: &str, home: Home) -> bool {
        let mut homes = self.write();
        let of_node = homes.per_node.get(&home.node).copied().unwrap_or(0);
        if let Some(known) = homes.by_name.get(name) {
            if known.epoch < home.epoch {
                // A move to a node whose share is full: the name is forgotten rather than
                // held beyond that share (its next lookup finds it, if room is made).
                if known.node != home.node && of_node >= self.max {
                    homes.remove(name);
                } else {
                    homes.insert(name.to_string(), home);
                }
            }
            return false;
        }
        if of_node >= self.max || homes.by_name.len() >= self.max.saturating_mul(NODES_IN_FULL) {
            return false;
        }
        homes.insert(name.to_string(), home);
        true
    }

    /// Forgets `name` whatever its epoch (it is homed here now).
    pub fn forget(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    /// `name` left the claim of `epoch` (a later claim stays): whether it was known.
    pub fn left(&self, name: &str, epoch: u64) -> bool {
        let mut homes = self.write();
        if homes.by_name.get(name).is_some_and(|h| h.epoch <= epoch) {
            homes.remove(name);
            return true;
        }
        false
    }

    /// Forgets every name homed at `node` (gone from the directory): the names forgotten.
    pub fn node_gone(&self, node: &str) -> Vec<String> {
        let mut homes = self.write();
        let gone: Vec<String> = homes
            .by_name
            .iter()
            .filter(|(_, h)| &*h.node == node)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &gone {
            homes.remove(name);
        }
        gone
    }

    /// Up to `max` of the names homed elsewhere (for the lists of a small cluster).
    pub fn names(&self, max: usize) -> Vec<String> {
        self.read().by_name.keys().take(max).cloned().collect()
    }

    /// The node of `name`'s home and its claim's epoch (which stands for the registration, as
    /// a local registration's number does), if it is homed elsewhere.
    pub fn home_of(&self, name: &str) -> Option<(Arc<str>, u64)> {
        self.read()
            .by_name
            .get(name)
            .map(|h| (h.node.clone(), h.epoch))
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(node: &str, epoch: u64) -> Home {
        Home {
            node: node.into(),
            mesh: SocketAddr::from(([192, 0, 2, 1], 7000)),
            epoch,
        }
    }

    #[test]
    fn a_late_event_never_undoes_a_newer_claim_and_the_view_stays_bounded_per_node() {
        let r = Remote::new(2);
        assert!(r.joined("alice", home("relay-b", 5)));
        // The move's join came first, the old join late: the move stays.
        assert!(!r.joined("alice", home("relay-c", 9)), "not new");
        assert!(!r.joined("alice", home("relay-b", 5)));
        assert!(!r.left("alice", 5));
        assert!(r.home_of("alice").is_some(), "a stale leave");
        assert!(r.left("alice", 9));
        assert_eq!(r.home_of("alice"), None);
        assert!(r.joined("a", home("relay-b", 1)));
        assert!(r.joined("a2", home("relay-b", 2)));
        assert!(
            !r.joined("a3", home("relay-b", 3)),
            "relay-b's share is full"
        );
        // Another relay's names find room all the same.
        assert!(r.joined("b", home("relay-c", 2)));
        assert!(r.joined("b2", home("relay-c", 3)));
        assert_eq!(r.len(), 4);
        assert!(r.left("a2", 2));
        assert_eq!(r.names(5).len(), 3);
        assert_eq!(r.node_gone("relay-b"), vec!["a".to_string()]);
        assert_eq!((r.home_of("a"), r.len()), (None, 2));
        // relay-b's share is free again.
        assert!(r.joined("a3", home("relay-b", 4)));
        // A name moving to a node whose share is full is not held beyond it.
        let r2 = Remote::new(1);
        assert!(r2.joined("c0", home("relay-c", 1)));
        assert!(r2.joined("m", home("relay-d", 1)));
        assert!(!r2.joined("m", home("relay-c", 5)));
        assert_eq!((r2.home_of("m"), r2.len()), (None, 1));
        // In all, NODES_IN_FULL nodes' worth: a fifth node's names find no room.
        let r = Remote::new(1);
        for (i, node) in ["n1", "n2", "n3", "n4"].into_iter().enumerate() {
            assert!(r.joined(&format!("x{i}"), home(node, 1)));
        }
        assert!(!r.joined("x5", home("n5", 1)));
    }
}
