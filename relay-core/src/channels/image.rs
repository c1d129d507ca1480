//! The channel table as a handover image: every channel end of this relay, written and read
//! back with every invariant checked (channels across relays are not handed over).

use std::collections::HashMap;
use std::net::SocketAddr;
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

impl Channels {
    /// Every bound channel, for a relay that takes over to go on from (meant for a table
    /// nothing changes meanwhile).
    pub fn export(&self) -> Image {
        let mut halves = Vec::new();
        for i in 0..self.halves.shard_count() {
            self.halves.in_shard(i, |t| {
                // A channel across relays is not handed over (its other relay closes its end
                // when its next frame finds none here).
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
