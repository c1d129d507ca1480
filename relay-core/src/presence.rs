//! Presence: who is told of joins and leaves, and what a `peer_list` holds.
//!
//! While the registry is small (at most `announce_max` names) everyone hears of everyone, as with
//! the old relay; beyond it only watchers are told. Lists are always cut to the reply budget,
//! and each address hears of an event once, however many names it holds. The names listed in
//! one event's announcements are cut further so that all its copies together fit the fan-out
//! allowance: a legitimate join is told to everyone even by a host that has sent nothing else.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::addr::prefix;
use crate::clock::Now;
use crate::out::{Kind, Out};
use crate::registry::Live;
use crate::shared::Shared;
use crate::wire::reply::{self, Presence};

/// The shortest a name can take in a list (`"x",`), bounding how many fit a budget.
const MIN_LISTED_NAME: usize = 4;

/// The names homed at other relays of the cluster, if any.
fn remote_count(shared: &Shared) -> usize {
    shared.cluster.get().map_or(0, |c| c.remote.len())
}

/// Whether the registry (with the cluster's other relays' names) is small enough for everyone
/// to hear of everyone.
fn small(shared: &Shared) -> bool {
    shared.registry.len() + remote_count(shared) <= shared.lists.announce_max()
}

/// The names of a small cluster homed at other relays, listed after this relay's.
fn remote_names(shared: &Shared) -> Vec<String> {
    let max = shared.lists.announce_max();
    shared
        .cluster
        .get()
        .map_or(Vec::new(), |c| c.remote.names(max))
}

/// Every live peer, in join order (for a small registry).
fn everyone(shared: &Shared, now: Now) -> Vec<Live> {
    let mut all = shared.registry.live_peers(now.ms, usize::MAX);
    all.sort_unstable_by_key(|p| p.seq);
    all
}

/// Appends a `peer_list` for `to`, sent as `kind` (a reply, or a coalesced announcement).
pub fn peer_list(
    shared: &Shared,
    out: &mut Out,
    to: SocketAddr,
    now: Now,
    kind: Kind,
    trusted: bool,
) {
    let start = out.buf.len();
    let budget = Some(shared.lists.reply_budget());
    if small(shared) {
        let peers = everyone(shared, now);
        let remote = remote_names(shared);
        let names = peers.iter().map(|p| &*p.name);
        let names = names.chain(remote.iter().map(String::as_str));
        reply::peer_list(&mut out.buf, names, peers.len() + remote.len(), budget);
    } else {
        let peers = shared.sample.get(
            &shared.registry,
            shared.lists.reply_budget() / MIN_LISTED_NAME,
            now,
        );
        let names = peers.iter().map(|p| &*p.name);
        let count = shared.registry.len() + remote_count(shared);
        reply::peer_list(&mut out.buf, names, count, budget);
    }
    out.reply(to, start, kind, trusted);
}

/// The smallest list budget of an announcement, however many hear of it.
const MIN_ANNOUNCEMENT: usize = 128;

/// Tells those who should hear it that `name`, of address `at`, joined or left (the peer at
/// `at` itself is not told: it knows).
pub fn announce(
    shared: &Shared,
    out: &mut Out,
    kind: Presence,
    name: &str,
    at: SocketAddr,
    now: Now,
) {
    announce_if(shared, out, kind, name, Some(at), now, |_| true);
}

/// Tells those who should hear it that `name`, homed at another relay of the cluster, joined
/// or left.
pub fn announce_remote(shared: &Shared, out: &mut Out, kind: Presence, name: &str, now: Now) {
    announce_if(shared, out, kind, name, None, now, |_| true);
}

/// Tells the trusted peers of `at`'s own /24 (/48) who should hear it that `name` joined: news
/// that waited until the registration proved itself, since until then it may have been forged
/// by a neighbour (see [`crate::budget`]).
pub fn announce_to_neighbours(
    shared: &Shared,
    out: &mut Out,
    name: &str,
    at: SocketAddr,
    now: Now,
) {
    let home = prefix(at.ip());
    let near = |p: &Live| p.trusted && prefix(p.addr.ip()) == home;
    announce_if(shared, out, Presence::Joined, name, Some(at), now, near);
}

fn announce_if(
    shared: &Shared,
    out: &mut Out,
    kind: Presence,
    name: &str,
    at: Option<SocketAddr>,
    now: Now,
    keep: impl Fn(&Live) -> bool,
) {
    // Small: everyone hears, and everyone is listed. Beyond announce_max only watchers hear
    // (most names have none, so ask that first) and the shared sample is listed.
    let (watchers, sample);
    let mut remote = Vec::new();
    let (recipients, peers): (&[Live], &[Live]) = if small(shared) {
        watchers = everyone(shared, now);
        remote = remote_names(shared);
        (&watchers, &watchers)
    } else {
        watchers = shared.registry.watchers_of(name, now.ms);
        if watchers.is_empty() {
            return;
        }
        sample = shared.sample.get(
            &shared.registry,
            shared.lists.reply_budget() / MIN_LISTED_NAME,
            now,
        );
        (&watchers, &sample)
    };
    let mut seen = HashSet::new();
    let to: Vec<&Live> = recipients
        .iter()
        .filter(|p| &*p.name != name && Some(p.addr) != at && keep(p) && seen.insert(p.addr))
        .collect();
    if to.is_empty() {
        return;
    }
    let reply_budget = shared.lists.reply_budget();
    let budget = match shared.budgets.fanout_allowance() {
        0 => reply_budget,
        a => (a as usize / to.len()).clamp(MIN_ANNOUNCEMENT, reply_budget),
    };
    let start = out.buf.len();
    let names = peers.iter().map(|p| &*p.name);
    let names = names.chain(remote.iter().map(String::as_str));
    reply::presence(&mut out.buf, kind, name, names, Some(budget));
    let end = out.buf.len();
    for p in to {
        out.send_range(p.addr, start..end, Kind::Announce, p.trusted);
    }
}
