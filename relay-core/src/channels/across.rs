//! Channels bound across the relays of a cluster: each relay holds its own end, and the
//! other end's node and number (see `relay_wire::mesh`). The binder's relay chooses both
//! numbers; the target's relay takes its end, or refuses it; either side closing tells the
//! other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::addr::host_key;
use crate::registry::Name;

use super::{Bound, Channels, Closed, Full, Half, INCOMING_PER_OWN};

/// Why an end bound at another relay is not taken here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its number is taken here, or the end is here already.
    Taken,
    /// The owner holds as many channels bound to it as it may, or the relay does.
    Limit,
}

impl Channels {
    /// Binds `me` (at `my_addr`) to `peer`, homed at node `node` of the cluster: this relay's
    /// end only, under a fresh number, and a number for the peer's end, which its relay takes
    /// (or closes). The pair's numbers if it is bound already.
    pub fn bind_remote(
        &self,
        me: &Name,
        my_addr: SocketAddr,
        peer: &Name,
        node: &Arc<str>,
    ) -> Result<Bound, Full> {
        let mut ix = self.lock();
        if let Some(b) = self.bound_already(&ix, me, peer) {
            return Ok(b);
        }
        let host = host_key(my_addr.ip());
        let own = ix.bound_by.get(me).copied().unwrap_or(0);
        let from_host = ix.per_host.get(&host).copied().unwrap_or(0);
        if ix.pairs >= self.max_total.load(Relaxed)
            || own >= self.max_per_peer.load(Relaxed)
            || from_host >= self.max_per_host.load(Relaxed)
        {
            return Err(Full::Limit);
        }
        let mine = self.fresh_number();
        // The other relay's number: random too, and checked there.
        let theirs = loop {
            let n: u32 = rand::random();
            if n != 0 && !ix.remote_ends.contains_key(&(node.clone(), n)) {
                break n;
            }
        };
        self.halves.insert(
            mine,
            Half {
                owner: me.clone(),
                from: my_addr,
                peer: peer.clone(),
                to: SocketAddr::from(([0, 0, 0, 0], 0)),
                peer_number: theirs,
                binder_host: Some(host),
                touched_ds: AtomicU32::new(0),
                remote: Some(node.clone()),
            },
        );
        ix.by_name.entry(me.clone()).or_default().push(mine);
        *ix.bound_by.entry(me.clone()).or_default() += 1;
        *ix.per_host.entry(host).or_default() += 1;
        ix.remote_ends.insert((node.clone(), theirs), mine);
        ix.pairs += 1;
        Ok(Bound {
            mine,
            theirs,
            new: true,
        })
    }

    /// Takes the end of a channel `peer` bound at node `node` (under `peer_number` there) to
    /// `owner`, registered here at `owner_addr`, under `number`, which that relay chose; refused
    /// (that relay is then told the end closed) if the number is taken here (`Taken`), or the
    /// owner holds as many channels bound to it as it may, or the relay does (`Limit`).
    pub fn accept_remote(
        &self,
        owner: &Name,
        owner_addr: SocketAddr,
        number: u32,
        peer: &Name,
        peer_number: u32,
        node: &Arc<str>,
    ) -> Result<(), Refused> {
        let mut ix = self.lock();
        let key = (node.clone(), peer_number);
        let all = ix.by_name.get(owner).map_or(0, Vec::len);
        let incoming = all - ix.bound_by.get(owner).copied().unwrap_or(0);
        if number == 0 || self.halves.contains(&number) || ix.remote_ends.contains_key(&key) {
            return Err(Refused::Taken);
        }
        if ix.pairs >= self.max_total.load(Relaxed)
            || incoming >= INCOMING_PER_OWN * self.max_per_peer.load(Relaxed)
        {
            return Err(Refused::Limit);
        }
        self.halves.insert(
            number,
            Half {
                owner: owner.clone(),
                from: owner_addr,
                peer: peer.clone(),
                to: SocketAddr::from(([0, 0, 0, 0], 0)),
                peer_number,
                binder_host: None,
                touched_ds: AtomicU32::new(0),
                remote: Some(node.clone()),
            },
        );
        ix.by_name.entry(owner.clone()).or_default().push(number);
        ix.remote_ends.insert(key, number);
        ix.pairs += 1;
        Ok(())
    }

    /// Where a frame that node `node` sends on this relay's end `number`, owned by `owner`,
    /// goes: the owner's address, if that end is `owner`'s and its other end lives at `node`.
    pub fn deliver(&self, number: u32, owner: &str, node: &str) -> Option<SocketAddr> {
        self.halves
            .get(&number, |_, h| {
                (&*h.owner == owner && h.remote.as_deref() == Some(node)).then_some(h.from)
            })
            .flatten()
    }

    /// Node `node` closed its end `peer_number`, owned by `peer`: this relay's end that pointed
    /// there goes too, returned for its owner to be told.
    pub fn close_remote(&self, node: &Arc<str>, peer: &str, peer_number: u32) -> Option<Closed> {
        let mut ix = self.lock();
        let &mine = ix.remote_ends.get(&(node.clone(), peer_number))?;
        if !self
            .halves
            .get(&mine, |_, h| &*h.peer == peer)
            .unwrap_or(false)
        {
            return None;
        }
        let closed = self.remove_pair(&mut ix, mine)?;
        Some(Closed {
            remote: None,
            ..closed
        })
    }

    /// Node `node` left the cluster: every end whose other end lived there goes, returned for
    /// their owners to be told.
    pub fn node_gone(&self, node: &str) -> Vec<Closed> {
        let mut ix = self.lock();
        let mine: Vec<u32> = ix
            .remote_ends
            .iter()
            .filter(|((n, _), _)| &**n == node)
            .map(|(_, &m)| m)
            .collect();
        mine.into_iter()
            .filter_map(|m| self.remove_pair(&mut ix, m))
            .map(|c| Closed { remote: None, ..c })
            .collect()
    }
}
