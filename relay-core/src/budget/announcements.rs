//! Who pays for announcements: the causing host, the hearing recipient, and the lists owed later.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::addr::host_key;

use super::Budgets;

/// A host's fan-out budget earns this many bytes per byte it sends.
const FANOUT_EARN: i64 = 2;
/// Most recipients owed a coalesced `peer_list` at once; beyond, they hear at their next change.
const OWED_MAX: usize = 65_536;

impl Budgets {
    /// The fan-out allowance in force (`--fanout-allowance`; 0: no limit), which sizes
    /// announcements to many recipients.
    pub fn fanout_allowance(&self) -> u64 {
        self.fanout.credit() as u64
    }

    /// Credits `len` bytes `from` sent to its host's fan-out budget, twice over: what it sends
    /// pays for the announcements it causes (settled after this). A forward is itself what it
    /// pays for, and earns nothing.
    pub fn earn_fanout(&self, from: IpAddr, len: usize) {
        self.fanout.earn(host_key(from), FANOUT_EARN * len as i64);
    }

    /// Takes the recipients owed a coalesced `peer_list`.
    pub fn take_owed(&self) -> HashSet<SocketAddr> {
        std::mem::take(&mut *self.owed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back recipients whose list is not due yet.
    pub fn keep_owed(&self, keep: impl IntoIterator<Item = SocketAddr>) {
        let mut set = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        for to in keep {
            if set.len() < OWED_MAX {
                set.insert(to);
            }
        }
    }
}
