//! What a relay of a cluster holds beside its own state: its node id, the mesh key and its
//! sending sequence, the nodes it takes mesh datagrams from, and the names homed elsewhere. Set
//! once, by the binary, when the relay joins a cluster; without one the relay is an island.

use crate::mesh::{Keys, Nodes};
use crate::remote::Remote;

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
}
