//! The other relays of a cluster as the directory tells of them: the nodes this relay takes
//! mesh datagrams from and sends them to, the names homed there, and who here hears of those
//! names joining and leaving (as of a join or leave here, under the same rules). The binary's
//! link to the directory hands each change in; what it causes lands in an [`Out`], settled.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::budget::Cause;
use crate::clock::Now;
use crate::cluster::Stats;
use crate::destination::{Kind, kind};
use crate::events;
use crate::metrics::Counters;
use crate::out::Out;
use crate::presence;
use crate::remote::Home;
use crate::seal::unix_us;
use crate::shared::Shared;
use crate::wire::reply::Presence;

/// Whether `mesh` may be sent mesh datagrams: never an address that is no destination (the
/// directory is the operator's, but a mistyped record must not aim the relay at one).
pub fn usable_mesh(mesh: SocketAddr) -> bool {
    mesh.port() != 0 && kind(mesh.ip()) != Kind::Never
}

/// Tells this relay's peers that `name`, homed elsewhere, joined or left: paid by `cause`.
fn announce(
    shared: &Shared,
    kind: Presence,
    name: &str,
    cause: Cause,
    now: Now,
    out: &mut Out,
    c: &Counters,
) {
    let start = out.sends.len();
    presence::announce_remote(shared, out, kind, name, now);
    shared.budgets.settle(out, start, cause, None, now.ms, c);
}

/// `name` is homed at `home` (a node, its mesh address, the claim's epoch): forwarded there
/// from now on, and its join told here if it is new, paid by `by`, the host whose registration
/// caused it (as a local join is paid by the host that registered: a host that floods one relay
/// with names gets at each other relay no more announcements than its own budgets there pay
/// for), or by the relay for a join no registration caused (a name published again). A name homed here at an earlier
/// epoch was given away by the directory (its node was thought dead): counted, and no longer
/// published from here.
pub fn joined(
    shared: &Shared,
    name: &str,
    home: Home,
    by: Option<IpAddr>,
    now: Now,
    out: &mut Out,
    c: &Counters,
) {
    let Some(cl) = shared.cluster.get() else {
        return;
    };
    if *home.node != cl.node && cl.lost(name, home.epoch) {
        let node = &*home.node;
        tracing::warn!(name, node, "a name homed here was claimed at another relay");
        evicted(shared, name, now, out, c);
    }
    if known(shared, name, home, now) {
        let cause = by.map_or(Cause::Relay, Cause::Unauthenticated);
        announce(shared, Presence::Joined, name, cause, now, out, c);
    }
}

/// `name` is homed at `home`, as [`joined`] says, but told to no one: the names a relay reads
/// when it starts, which its peers heard of already (from the relay it took over from) or
/// learn from their `peer_list`. Whether it is new to this relay's view.
pub fn known(shared: &Shared, name: &str, home: Home, now: Now) -> bool {
    let Some(cl) = shared.cluster.get() else {
        return false;
    };
    if *home.node == cl.node || !usable_mesh(home.mesh) {
        return false;
    }
    // A join older than this relay's own claim of the name (late news) is no home of it.
    if cl.home_epoch(name).is_some_and(|here| here >= home.epoch) {
        return false;
    }
    cl.nodes.add(&home.node, home.mesh, unix_us(now));
    cl.remote.joined(name, home)
}

/// `name`, registered here, is homed at another relay (the directory gave it there while this
/// relay was thought gone): counted, and its registration here ends as a reaped one does (its
/// leave told, its channels closed), so that the cluster holds one home for it.
pub fn evicted(shared: &Shared, name: &str, now: Now, out: &mut Out, c: &Counters) {
    let Some(cl) = shared.cluster.get() else {
        return;
    };
    Stats::add(&cl.stats.conflicts);
    let Some(gone) = shared.registry.evict(name) else {
        return;
    };
    let start = out.sends.len();
    presence::announce(shared, out, Presence::Left, &gone.name, gone.addr, now);
    events::react(shared, gone.event(), now, out);
    shared
        .budgets
        .settle(out, start, Cause::Relay, None, now.ms, c);
}

/// `name` left the claim of `epoch` at another relay: its leave told here.
pub fn left(shared: &Shared, name: &str, epoch: u64, now: Now, out: &mut Out, c: &Counters) {
    let Some(cl) = shared.cluster.get() else {
        return;
    };
    if cl.remote.left(name, epoch) {
        announce(shared, Presence::Left, name, Cause::Relay, now, out, c);
    }
}

/// The live nodes are `live` (with their mesh addresses), as the directory's heartbeat said: a
/// node that is no longer among them is gone, and its names with it (their leaves told here).
/// Whether a node came that was not known (its names are then read from the directory).
pub fn nodes(
    shared: &Shared,
    live: &[(String, SocketAddr)],
    now: Now,
    out: &mut Out,
    c: &Counters,
) -> bool {
    let Some(cl) = shared.cluster.get() else {
        return false;
    };
    let live: Vec<&(String, SocketAddr)> = live
        .iter()
        .filter(|(n, m)| *n != cl.node && usable_mesh(*m))
        .collect();
    let listed = cl.nodes.listed();
    let known: HashSet<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    let mut came = false;
    for (node, mesh) in &live {
        came |= !known.contains(node.as_str());
        cl.nodes.add(node, *mesh, unix_us(now));
    }
    let alive: HashSet<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
    for (node, _) in &listed {
        if alive.contains(node.as_str()) {
            continue;
        }
        cl.nodes.remove(node);
        // Its channels' ends here close, their owners told.
        let start = out.sends.len();
        events::tell_closed(shared, shared.channels.node_gone(node), now, out);
        shared
            .budgets
            .settle(out, start, Cause::Relay, None, now.ms, c);
        for name in cl.remote.node_gone(node) {
            announce(shared, Presence::Left, &name, Cause::Relay, now, out, c);
        }
        tracing::info!(node, "a relay left the cluster");
    }
    came
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::mesh::Keys;
    use crate::settings::Settings;
    use crate::testing::{Harness, addr, at, collect};

    fn mesh(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 7000))
    }

    fn b(epoch: u64) -> Home {
        Home {
            node: "relay-b".into(),
            mesh: mesh(2),
            epoch,
        }
    }

    fn texts(out: &Out) -> Vec<(SocketAddr, String)> {
        collect(out, &[])
            .into_iter()
            .map(|(to, d)| (to, String::from_utf8(d).unwrap()))
            .collect()
    }

    #[test]
    fn the_other_relays_names_join_leave_and_go_with_their_node_and_are_told_here() {
        let mut h = Harness::new(Settings::default());
        let keys = Keys::new(&[1; 32]).unwrap();
        let cl = Cluster::new("relay-a", keys, 100, Box::new(|| {}));
        assert!(h.shared.cluster.set(cl).is_ok());
        // Alice is homed here (her claim settled by hand, as the directory would).
        h.register("alice", addr(1), 0);
        let cl = h.shared.cluster.get().unwrap();
        let Some(crate::cluster::Op::Claim(p)) = cl.take(1).pop() else {
            panic!("a claim")
        };
        cl.homed("alice", 1, None);
        h.router.settle(&p, at(0), &mut Out::default());
        let c = Counters::default();
        let shared = h.shared.clone();
        let mut out = Out::default();
        let live = [
            ("relay-a".to_string(), mesh(1)),
            ("relay-b".to_string(), mesh(2)),
            (
                "relay-z".to_string(),
                SocketAddr::from(([0, 0, 0, 0], 7000)),
            ),
        ];
        assert!(nodes(&shared, &live, at(1), &mut out, &c));
        assert_eq!(cl.nodes.listed(), vec![("relay-b".to_string(), mesh(2))]);
        joined(&shared, "bob", b(7), None, at(1), &mut out, &c);
        let told = texts(&out);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].0, addr(1));
        assert!(told[0].1.contains(r#""peer_joined","peer_name":"bob""#));
        assert!(told[0].1.contains(r#""alice","bob""#), "{}", told[0].1);
        // Bob is listed to whoever registers here, and a relay to him goes to relay-b.
        assert!(cl.remote.home_of("bob").is_some());
        // Told once: the same join again is no news.
        out.clear();
        joined(&shared, "bob", b(7), None, at(1), &mut out, &c);
        assert!(out.sends.is_empty());
        // A stale leave is not news either; the real one is.
        left(&shared, "bob", 6, at(2), &mut out, &c);
        assert!(out.sends.is_empty());
        left(&shared, "bob", 7, at(2), &mut out, &c);
        assert!(texts(&out)[0].1.contains("peer_left"));
        // relay-b dies: its names go, their leaves told.
        out.clear();
        joined(&shared, "carol", b(9), None, at(3), &mut out, &c);
        out.clear();
        assert!(!nodes(&shared, &live[..1], at(4), &mut out, &c));
        assert!(
            texts(&out)[0]
                .1
                .contains(r#""peer_left","peer_name":"carol""#)
        );
        assert!(cl.nodes.listed().is_empty() && cl.remote.is_empty());
        // A name homed here, claimed at a later epoch elsewhere, is homed here no more.
        joined(&shared, "alice", b(2), None, at(5), &mut out, &c);
        assert!(!cl.is_home("alice"));
        assert_eq!(
            cl.stats
                .conflicts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
