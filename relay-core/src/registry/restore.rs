//! An image restored by several threads and checked whole, since forwarding waits for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::parallel::Parallel;
use crate::settings::Settings;
use crate::shards::Entry as Slot;

use super::entry::{Entry, secs, tenths};
use super::image::{Image, PeerImage};
use super::packed::{AtAddr, Packed};
use super::{Name, Registry};

/// What restoring an image kept and left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Registrations restored.
    pub peers: usize,
    /// Registrations left out because they went stale while no relay held them.
    pub stale: usize,
    /// Watch entries left out because the limits in force are lower.
    pub watches_left_out: usize,
}

/// Registrations a restoring thread takes at least: fewer are not worth a thread.
pub(super) const RESTORE_CHUNK: usize = 65_536;

/// A restored registration's place in the addresses' table.
struct Placed {
    hash: u64,
    addr: Packed,
    name: Name,
}

impl Registry {
    /// A registry of `s` holding what `image` holds, at `now_ms` of a clock that goes on from
    /// the exporter's. With `drop_stale`, registrations silent beyond the peer timeout are left
    /// out (a snapshot read after a pause); without, they are kept for the reaper to announce.
    /// An image that breaks an invariant (a name or a number twice, a number that would repeat
    /// a token, an invalid name, more than the limits allow) is refused whole, naming what is
    /// wrong. Restored on as many threads as `par` runs (up to 8), since forwarding waits.
    pub fn restore(
        s: &Settings,
        image: Image<'_>,
        now_ms: u64,
        drop_stale: bool,
        par: &Parallel<'_>,
    ) -> Result<(Registry, Restored), String> {
        // Far beyond what any relay issues: numbers near the end of the range would wrap to
        // ones (so tokens) already issued.
        if image.next_seq > 1 << 62 {
            return Err(format!(
                "the next registration number ({}) is beyond any a relay issues (its tokens \
                 could repeat)",
                image.next_seq
            ));
        }
        let mut r = Registry::new(s);
        r.tokens.key = image.token_key;
        r.next_seq = AtomicU64::new(image.next_seq);
        let mut seqs: Vec<u64> = image.peers.iter().map(|p| p.seq).collect();
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[0] == w[1]) || seqs.last() >= Some(&image.next_seq) {
            return Err(
                "registration numbers repeat or reach the next one (tokens could repeat)".into(),
            );
        }
        if let Some(p) = image.peers.iter().find(|p| p.last_heard > now_ms) {
            return Err(format!("registration {:?} was heard in the future", p.name));
        }
        // Times ahead of the clock would keep it trusted, or without keepalives and
        // announcements, for as long as they lie ahead.
        let ahead = |p: &&PeerImage| {
            p.trusted_s > secs(now_ms).saturating_add(1)
                || (p.announced_s != u32::MAX && p.announced_s > secs(now_ms))
                || p.last_keepalive_ds > tenths(now_ms)
        };
        if let Some(p) = image.peers.iter().find(ahead) {
            return Err(format!(
                "registration {:?} was trusted, announced or kept alive in the future",
                p.name
            ));
        }
        let kept: Vec<&PeerImage> = image
            .peers
            .iter()
            .filter(|p| !drop_stale || r.fresh(p.last_heard, now_ms))
            .collect();
        let mut done = Restored {
            peers: kept.len(),
            stale: image.peers.len() - kept.len(),
            ..Restored::default()
        };
        if kept.len() > s.max_peers {
            return Err(format!(
                "the state holds {} registrations, more than --max-peers ({})",
                kept.len(),
                s.max_peers
            ));
        }
        // The names' table hashes as the exporter's did: the registrations come in the order of
        // its shards, so each shard fills while it is in the cache (a million in random order
        // miss the cache at every one).
        r.peers.set_key(image.names_key);
        r.peers.reserve(kept.len());
        r.by_addr.reserve(kept.len());
        let threads = par
            .threads
            .clamp(1, 8)
            .min(kept.len().div_ceil(RESTORE_CHUNK).max(1));
        let runs: Vec<&[&PeerImage]> = kept.chunks(kept.len().div_ceil(threads).max(1)).collect();
        let placed = par
            .map(runs.len(), |i| r.restore_names(runs[i]))?
            .into_iter()
            .collect::<Result<Vec<_>, String>>()?;
        // The addresses, likewise shard by shard: each names' job put each registration in the
        // bucket of its address's shard, and each job here takes a run of shards.
        let shards = r.by_addr.shard_count();
        let per = shards.div_ceil(threads);
        let crowded = par.map(threads, |t| {
            let mut crowded = Vec::new();
            for shard in t * per..((t + 1) * per).min(shards) {
                for from in &placed {
                    crowded.extend(r.restore_addresses(&from[shard])?);
                }
            }
            Ok::<_, String>(crowded)
        })?;
        let crowded: Vec<Packed> = crowded
            .into_iter()
            .collect::<Result<Vec<_>, String>>()?
            .into_iter()
            .flatten()
            .collect();
        // An address holding several names lists them in join order.
        for addr in crowded {
            let Some(names) = r.by_addr.get(&addr, |_, at| at.names().to_vec()) else {
                continue;
            };
            let mut names: Vec<(u64, Name)> = names
                .into_iter()
                .map(|n| (r.peers.get(&*n, |_, e| e.seq).unwrap_or(0), n))
                .collect();
            names.sort_by_key(|(seq, _)| *seq);
            r.by_addr.get_mut(&addr, |at| {
                if let AtAddr::Many(list) = at {
                    **list = names.into_iter().map(|(_, n)| n).collect();
                }
            });
        }
        for (watcher, names) in image.watches {
            let names: Vec<Name> = names.iter().map(|n| Name::from(n.as_str())).collect();
            let watched = r.peers.get(watcher.as_str(), |key, e| {
                r.watch_held(key, e.addr.get(), &names, s.max_watch)
            });
            match watched {
                Some(left_out) => done.watches_left_out += left_out,
                // A watcher left out as stale takes its watches along.
                None if drop_stale => {}
                None => return Err(format!("{watcher:?} watches but is not registered")),
            }
        }
        Ok((r, done))
    }

    /// Restores the registrations of `run` to the names' table; where each goes in the
    /// addresses' table, by the shard it goes to.
    fn restore_names(&self, run: &[&PeerImage<'_>]) -> Result<Vec<Vec<Placed>>, String> {
        let shards = self.by_addr.shard_count();
        let mut placed: Vec<Vec<Placed>> = (0..shards)
            .map(|_| Vec::with_capacity(run.len() / shards + run.len() / shards / 4 + 4))
            .collect();
        for p in run {
            if !relay_wire::valid_name(p.name) {
                return Err(format!("a registration has an invalid name ({:?})", p.name));
            }
            let here = Packed::from(p.addr);
            let name = Name::from(p.name);
            let entry = Entry {
                last_heard: AtomicU64::new(p.last_heard),
                last_keepalive_ds: AtomicU32::new(p.last_keepalive_ds),
                seq: p.seq,
                addr: here,
                trusted_s: AtomicU32::new(p.trusted_s),
                announced_s: AtomicU32::new(p.announced_s),
            };
            let fresh = self.peers.entry(p.name, |slot| match slot {
                Slot::Occupied(_) => false,
                Slot::Vacant(v) => {
                    v.insert((name.clone(), entry));
                    true
                }
            });
            if !fresh {
                return Err(format!("the name {:?} is registered twice", p.name));
            }
            if let Some(k) = p.key {
                self.keys.insert(name.clone(), k);
            }
            self.count.fetch_add(1, Relaxed);
            let (hash, shard) = self.by_addr.locate(&here);
            placed[shard].push(Placed {
                hash,
                addr: here,
                name,
            });
        }
        Ok(placed)
    }

    /// Lists the registrations of `run` at their addresses; the addresses that came to hold
    /// several names (put in join order afterwards).
    fn restore_addresses(&self, run: &[Placed]) -> Result<Vec<Packed>, String> {
        let max = self.bounds.names_per_address.load(Relaxed);
        let mut crowded = Vec::new();
        for p in run {
            let at = self
                .by_addr
                .entry_hashed(p.hash, &p.addr, |slot| match slot {
                    Slot::Occupied(mut o) => {
                        let at = &mut o.get_mut().1;
                        at.push(p.name.clone());
                        at.names().len()
                    }
                    Slot::Vacant(v) => {
                        v.insert((p.addr, AtAddr::One(p.name.clone())));
                        1
                    }
                });
            if at > max {
                return Err(format!(
                    "{} holds more names than --max-names-per-address ({max})",
                    p.addr.get()
                ));
            }
            if at == 2 {
                crowded.push(p.addr);
            }
        }
        Ok(crowded)
    }

    /// Whether `name` is registered at `addr`, live or not (a channel's owner, on restore).
    pub fn registered_at(&self, name: &str, addr: SocketAddr) -> bool {
        self.peers
            .get(name, |_, e| e.addr == Packed::from(addr))
            .unwrap_or(false)
    }
}
