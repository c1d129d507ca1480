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

/// The names homed elsewhere, at most `max` of them.
pub struct Remote {
    homes: RwLock<HashMap<String, Home>>,
    max: usize,
}

impl Remote {
    /// A view of at most `max` names.
    pub fn new(max: usize) -> Remote {
        Remote {
            homes: RwLock::new(HashMap::new()),
            max,
        }
    }

    /// `name` is homed at `home` now, unless a newer claim is known: whether it is new to the
    /// view (false too if the view is full).
    pub fn joined(&self, name: &str, home: Home) -> bool {
        let mut homes = self.homes.write().unwrap_or_else(|e| e.into_inner());
        let full = homes.len() >= self.max;
        match homes.get_mut(name) {
            Some(known) => {
                if known.epoch < home.epoch {
                    *known = home;
                }
                false
            }
            None if full => false,
            None => {
                homes.insert(name.to_string(), home);
                true
            }
        }
    }

    /// Forgets `name` whatever its epoch (it is homed here now).
    pub fn forget(&self, name: &str) -> bool {
        let mut homes = self.homes.write().unwrap_or_else(|e| e.into_inner());
        homes.remove(name).is_some()
    }

    /// `name` left the claim of `epoch` (a later claim stays): whether it was known.
    pub fn left(&self, name: &str, epoch: u64) -> bool {
        let mut homes = self.homes.write().unwrap_or_else(|e| e.into_inner());
        if homes.get(name).is_some_and(|h| h.epoch <= epoch) {
            homes.remove(name);
            return true;
        }
        false
    }

    /// Forgets every name homed at `node` (gone from the directory): the names forgotten.
    pub fn node_gone(&self, node: &str) -> Vec<String> {
        let mut homes = self.homes.write().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        homes.retain(|name, h| {
            let keep = &*h.node != node;
            if !keep {
                gone.push(name.clone());
            }
            keep
        });
        gone
    }

    /// Up to `max` of the names homed elsewhere (for the lists of a small cluster).
    pub fn names(&self, max: usize) -> Vec<String> {
        let homes = self.homes.read().unwrap_or_else(|e| e.into_inner());
        homes.keys().take(max).cloned().collect()
    }

    /// The node and mesh address of `name`'s home, if it is homed elsewhere.
    pub fn home_of(&self, name: &str) -> Option<(Arc<str>, SocketAddr)> {
        let homes = self.homes.read().unwrap_or_else(|e| e.into_inner());
        homes.get(name).map(|h| (h.node.clone(), h.mesh))
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.homes.read().unwrap_or_else(|e| e.into_inner()).len()
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
    fn a_late_event_never_undoes_a_newer_claim_and_the_view_stays_bounded() {
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
        assert!(r.joined("b", home("relay-c", 2)));
        assert!(!r.joined("c", home("relay-b", 3)), "full");
        assert_eq!(r.len(), 2);
        assert_eq!(r.names(5).len(), 2);
        assert_eq!(r.node_gone("relay-b"), vec!["a".to_string()]);
        assert_eq!((r.home_of("a"), r.len()), (None, 1));
    }
}
