//! The channel table as a handover image: every channel end of this relay, written and read
//! back with every invariant checked; the ends of channels across relays apart, as a section an
//! image of a relay before the cluster lacks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::registry::Name;
use crate::settings::Settings;

use super::{Channels, Half};

/// One channel end as a handover image holds it.
#[derive(Serialize, Deserialize)]
pub struct HalfImage {
    /// The channel's number at this end.
    pub number: u32,
    owner: String,
    /// The address of this end's owner.
    pub from: SocketAddr,
    peer: String,
    to: SocketAddr,
    peer_number: u32,
    binder_host: Option<[u8; 9]>,
    touched_ds: u32,
}

/// Every bound channel, as a handover image holds them.
#[derive(Serialize, Deserialize)]
pub struct Image(pub Vec<HalfImage>);

/// One end of a channel across relays, as a handover image holds it.
#[derive(Serialize, Deserialize)]
pub struct AcrossImage {
    number: u32,
    owner: String,
    from: SocketAddr,
    peer: String,
    peer_number: u32,
    binder_host: Option<[u8; 9]>,
    node: String,
}

/// The ends of channels across relays, as a handover image holds them.
#[derive(Serialize, Deserialize, Default)]
pub struct AcrossImages(pub Vec<AcrossImage>);

impl Channels {
    /// Every bound channel, for a relay that takes over to go on from (meant for a table
    /// nothing changes meanwhile).
    pub fn export(&self) -> Image {
        let mut halves = Vec::new();
        for i in 0..self.halves.shard_count() {
            self.halves.in_shard(i, |t| {
                // The ends of channels across relays go apart (`export_across`).
                let local = t.iter().filter(|(_, h)| h.remote.is_none());
                halves.extend(local.map(|&(number, ref h)| HalfImage {
                    number,
                    owner: h.owner.to_string(),
                    from: h.from,
                    peer: h.peer.to_string(),
                    to: h.to,
                    peer_number: h.peer_number,
                    binder_host: h.binder_host,
                    touched_ds: h.touched_ds.load(Relaxed),
                }))
            });
        }
        Image(halves)
    }

    /// The ends of channels across relays, for a relay that takes over (their other ends live
    /// on at the other relays).
    pub fn export_across(&self) -> AcrossImages {
        let mut ends = Vec::new();
        for i in 0..self.halves.shard_count() {
            self.halves.in_shard(i, |t| {
                ends.extend(t.iter().filter_map(|&(number, ref h)| {
                    Some(AcrossImage {
                        number,
                        owner: h.owner.to_string(),
                        from: h.from,
                        peer: h.peer.to_string(),
                        peer_number: h.peer_number,
                        binder_host: h.binder_host,
                        node: h.remote.as_deref()?.to_string(),
                    })
                }))
            });
        }
        AcrossImages(ends)
    }

    /// Takes back the ends of `image` whose owners are `held` at their addresses, beside the
    /// restored pairs: how many were left out (their owner stale, a number taken twice, a name
    /// that is none). Their other ends live on at the other relays, which a frame to an end left
    /// out tells.
    pub fn restore_across(
        &self,
        image: AcrossImages,
        held: impl Fn(&str, SocketAddr) -> bool,
    ) -> usize {
        let mut ix = self.lock();
        let mut left_out = 0;
        for e in image.0 {
            let node: Arc<str> = e.node.as_str().into();
            let key = (node.clone(), e.peer_number);
            let ok = e.number != 0
                && !self.halves.contains(&e.number)
                && !ix.remote_ends.contains_key(&key)
                && relay_wire::valid_name(&e.owner)
                && relay_wire::valid_name(&e.peer)
                && held(&e.owner, e.from);
            if !ok {
                left_out += 1;
                continue;
            }
            let owner = Name::from(e.owner.as_str());
            ix.by_name.entry(owner.clone()).or_default().push(e.number);
            if let Some(host) = e.binder_host {
                *ix.bound_by.entry(owner.clone()).or_default() += 1;
                *ix.per_host.entry(host).or_default() += 1;
            }
            ix.remote_ends.insert(key, e.number);
            ix.pairs += 1;
            self.halves.insert(
                e.number,
                Half {
                    owner,
                    from: e.from,
                    peer: Name::from(e.peer.as_str()),
                    to: SocketAddr::from(([0, 0, 0, 0], 0)),
                    peer_number: e.peer_number,
                    binder_host: e.binder_host,
                    touched_ds: AtomicU32::new(0),
                    remote: Some(node),
                },
            );
        }
        left_out
    }

    /// A table of `s` holding the pairs of `image` whose two owners are `held` at their
    /// addresses (by the restored registry) (a pair of a registration left out as stale is left out with it); how many
    /// pairs that left out. An image whose halves do not pair up (a number twice or zero, a
    /// half without its other, a pair bound by neither or both sides) is refused whole. Pairs
    /// beyond the `--max-channels*` bounds of `s` stay, as after a reload that lowers them: new
    /// binds are refused until under them.
    pub fn restore(
        s: &Settings,
        image: Image,
        held: impl Fn(&str, SocketAddr) -> bool,
    ) -> Result<(Channels, usize), String> {
        let t = Channels::new(s);
        let mut by_number = HashMap::with_capacity(image.0.len());
        for h in image.0 {
            if h.number == 0 {
                return Err("a channel has the number 0".into());
            }
            let number = h.number;
            if by_number.insert(number, h).is_some() {
                return Err(format!("two channels have the number {number}"));
            }
        }
        let mut ix = t.lock();
        let mut left_out = 0;
        for (&number, h) in &by_number {
            let Some(o) = by_number.get(&h.peer_number) else {
                return Err(format!("channel {number} has no other end"));
            };
            let paired = o.peer_number == number
                && o.owner == h.peer
                && o.peer == h.owner
                && o.from == h.to
                && o.to == h.from
                && h.number != h.peer_number;
            if !paired || h.binder_host.is_some() == o.binder_host.is_some() {
                return Err(format!("channel {number} and its other end disagree"));
            }
            if !relay_wire::valid_name(&h.owner) {
                return Err(format!("channel {number} has an invalid owner name"));
            }
            let kept = held(&h.owner, h.from) && held(&h.peer, h.to);
            if !kept {
                // Counted once per pair, on the binder's half.
                left_out += usize::from(h.binder_host.is_some());
                continue;
            }
            let owner = Name::from(h.owner.as_str());
            ix.by_name.entry(owner.clone()).or_default().push(number);
            if let Some(host) = h.binder_host {
                *ix.bound_by.entry(owner.clone()).or_default() += 1;
                *ix.per_host.entry(host).or_default() += 1;
                ix.pairs += 1;
            }
            t.halves.insert(
                number,
                Half {
                    owner,
                    from: h.from,
                    peer: Name::from(h.peer.as_str()),
                    to: h.to,
                    peer_number: h.peer_number,
                    binder_host: h.binder_host,
                    touched_ds: AtomicU32::new(h.touched_ds),
                    remote: None,
                },
            );
        }
        drop(ix);
        Ok((t, left_out))
    }
}
