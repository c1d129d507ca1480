//! Presence: who is told of joins and leaves, and what a `peer_list` holds.
//!
//! While the registry is small (at most `announce_max` names) everyone hears of everyone, as with
//! the old relay; beyond it lists are cut to the reply budget and only watchers are told.

use std::net::SocketAddr;

use crate::clock::Now;
use crate::out::Out;
use crate::registry::Live;
use crate::router::Shared;
use crate::wire::reply::{self, Presence};

/// The shortest a name can take in a list (`"x",`), bounding how many fit a budget.
const MIN_LISTED_NAME: usize = 4;

/// Whether the registry is small enough for everyone to hear of everyone.
fn small(shared: &Shared) -> bool {
    shared.registry.len() <= shared.settings.announce_max
}

/// The live peers to list: all of them in join order when small, else as many as may fit.
fn listed(shared: &Shared, now: Now) -> (Vec<Live>, Option<usize>) {
    let s = &shared.settings;
    if small(shared) {
        let mut all = shared.registry.live_peers(now.ms, usize::MAX);
        all.sort_unstable_by_key(|p| p.seq);
        (all, None)
    } else {
        let fit = s.reply_budget / MIN_LISTED_NAME;
        (
            shared.registry.live_peers(now.ms, fit),
            Some(s.reply_budget),
        )
    }
}

/// Appends a `peer_list` for `to`.
pub fn peer_list(shared: &Shared, out: &mut Out, to: SocketAddr, now: Now) {
    let (peers, budget) = listed(shared, now);
    let count = if budget.is_none() {
        peers.len()
    } else {
        shared.registry.len()
    };
    let start = out.buf.len();
    reply::peer_list(&mut out.buf, peers.iter().map(|p| &*p.name), count, budget);
    out.reply(to, start);
}

/// Tells those who should hear it that `name` joined or left.
pub fn announce(shared: &Shared, out: &mut Out, kind: Presence, name: &str, now: Now) {
    let (peers, budget) = listed(shared, now);
    let recipients: Vec<SocketAddr> = if budget.is_none() {
        peers
            .iter()
            .filter(|p| &*p.name != name)
            .map(|p| p.addr)
            .collect()
    } else {
        shared.registry.watchers_of(name, now.ms)
    };
    if recipients.is_empty() {
        return;
    }
    let start = out.buf.len();
    reply::presence(
        &mut out.buf,
        kind,
        name,
        peers.iter().map(|p| &*p.name),
        budget,
    );
    let end = out.buf.len();
    for to in recipients {
        out.send_range(to, start..end);
    }
}
