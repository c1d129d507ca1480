//! What a registry event (a name gone, replaced or moved) does beyond the registry: the channels
//! it ends, whose other ends are told, or carries along. The registry returns events instead of
//! calling out; the router and the reaper hand them here.

use crate::channels::Closed;
use crate::clock::Now;
use crate::out::{Kind, Out};
use crate::registry::Event;
use crate::seal::{Payload, seal};
use crate::shared::Shared;
use crate::wire::mesh::Via;
use crate::wire::reply;

/// Applies a registry event to the channels, telling the other end of each channel it ended.
pub fn react(shared: &Shared, ev: Event<'_>, now: Now, out: &mut Out) {
    let closed = shared.channels.on_event(ev);
    tell_closed(shared, closed, now, out);
}

/// Sends `channel_closed` to each end that is still registered where it was.
pub fn tell_closed(
    shared: &Shared,
    ends: impl IntoIterator<Item = Closed>,
    now: Now,
    out: &mut Out,
) {
    for end in ends {
        // An end whose other end lives at another relay: that relay is told, and closes it.
        if let Some(node) = &end.remote {
            if let Some(c) = shared.cluster.get() {
                let via = Via::Closed(end.number);
                seal(c, node, &end.name, via, Payload::Bytes(&[]), now, out);
            }
            continue;
        }
        let Some((addr, trusted)) = shared.registry.target_of(&end.name, now.ms) else {
            continue;
        };
        if addr != end.to {
            continue;
        }
        let start = out.buf.len();
        reply::channel_closed(&mut out.buf, end.number);
        out.reply(addr, start, Kind::Announce, trusted);
    }
}
