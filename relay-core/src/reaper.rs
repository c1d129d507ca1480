//! The reaper's logic: one sweep removes stale peers (announcing them), picks the live ones
//! owed a `server_keepalive`, and sends the coalesced `peer_list`s owed to peers whose
//! announcements were withheld. Sans-IO: the caller sends what lands in the [`Out`], already
//! settled with the budgets.

use crate::budget::Cause;
use crate::clock::Now;
use crate::events;
use crate::mesh::Sender;
use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::presence;
use crate::shared::Shared;
use crate::wire::reply::{self, Presence};

/// Sends are handed to the caller in batches of about this many, to bound memory and, where a
/// worker sends them, the time it spends on one batch (about half a millisecond).
pub const FLUSH_EVERY: usize = 256;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Peers removed.
    pub reaped: usize,
    /// `server_keepalive`s decided (some may have been withheld by the budgets).
    pub keepalives: usize,
    /// Coalesced `peer_list`s sent.
    pub lists: usize,
}

/// Sweeps the registry at `now`, calling `flush` whenever `out` holds a batch (and at the end).
pub fn sweep(
    shared: &Shared,
    now: Now,
    out: &mut Out,
    c: &Counters,
    mut flush: impl FnMut(&mut Out),
) -> Sweep {
    let (reg, budgets) = (&shared.registry, &shared.budgets);
    out.stream = Sender::Reaper.stream(shared.workers);
    let every = shared.settings.keepalive_ms;
    let mut done = Sweep::default();
    let mut check = |out: &mut Out| {
        if out.sends.len() >= FLUSH_EVERY {
            flush(out);
        }
    };
    // A recipient owed a list gets it in place of its next keepalive: at most one per interval.
    let mut later = Vec::new();
    for to in budgets.take_owed() {
        match reg.list_due(to, now.ms, every) {
            Some(true) => {
                let first = out.sends.len();
                presence::peer_list(shared, out, to, now, Kind::Keepalive, true);
                budgets.settle(out, first, Cause::Relay, None, now.ms, c);
                done.lists += out.sends.len() - first;
                check(out);
            }
            Some(false) => later.push(to),
            None => {}
        }
    }
    budgets.keep_owed(later);
    Counters::add(&c.coalesced_lists, done.lists as u64);
    reg.scan(now.ms, every, |stale, due| {
        for name in stale.iter() {
            if let Some(gone) = reg.reap(name, now.ms) {
                tracing::debug!(name = %gone.name, addr = %gone.addr, "reaped");
                done.reaped += 1;
                if let Some(c) = shared.cluster.get() {
                    c.left(&gone.name);
                }
                // Paid by the host that held the name, as its datagrams caused the join; news to
                // its own network only if it ever proved itself there (else it may be forged).
                let start = out.sends.len();
                presence::announce(shared, out, Presence::Left, &gone.name, gone.addr, now);
                events::react(shared, gone.event(), now, out);
                let ip = gone.addr.ip();
                let cause = if gone.proven {
                    Cause::Authenticated(ip)
                } else {
                    Cause::Unauthenticated(ip)
                };
                budgets.settle(out, start, cause, None, now.ms, c);
                check(out);
            }
        }
        for p in due.iter() {
            let start = out.buf.len();
            reply::server_keepalive(&mut out.buf, now.unix, &p.name);
            let first = out.sends.len();
            out.reply(p.addr, start, Kind::Keepalive, p.trusted);
            budgets.settle(out, first, Cause::Relay, None, now.ms, c);
            done.keepalives += 1;
            check(out);
        }
    });
    if !out.sends.is_empty() {
        flush(out);
    }
    Counters::add(&c.reaped, done.reaped as u64);
    Counters::add(&c.keepalives, done.keepalives as u64);
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::{Harness, Json, addr, at, collect, parse};
    use crate::settings::Settings;
    use serde_json::json;

    #[test]
    fn sweep_reaps_announces_and_keeps_alive() {
        let s = Settings {
            peer_timeout_ms: 1000,
            keepalive_ms: 300,
            ..Settings::default()
        };
        let mut h = Harness::new(s);
        h.json(json!({"type": "register", "name": "A"}), addr(1), 0);
        h.json(json!({"type": "register", "name": "B"}), addr(2), 800);
        let mut sent = Vec::new();
        let mut out = Out::default();
        let c = Counters::default();
        let done = sweep(&h.shared, at(1100), &mut out, &c, |o| {
            sent.extend(parse(collect(o, &[])));
            o.clear();
        });
        assert_eq!(
            done,
            Sweep {
                reaped: 1,
                keepalives: 1,
                lists: 0
            }
        );
        // Shards are swept in turn, so the order across names is the shards'.
        sent.sort_by_key(|(_, m)| m["type"].as_str().map(str::to_owned));
        assert_eq!(
            sent,
            vec![
                (
                    addr(2),
                    json!({"type": "peer_left", "peer_name": "A", "peers": ["B"]})
                ),
                (
                    addr(2),
                    json!({"type": "server_keepalive", "server_time": at(1100).unix, "peer_name": "B"})
                ),
            ]
        );
        assert_eq!(h.shared.registry.len(), 1);
    }

    #[test]
    fn withheld_announcements_become_one_peer_list_later() {
        let s = Settings {
            peer_timeout_ms: 60_000,
            keepalive_ms: 100,
            presence_rate: 100,
            ..Settings::default()
        };
        let mut h = Harness::new(s);
        h.json(json!({"type": "register", "name": "A"}), addr(1), 0);
        let session = h.session("A", addr(1));
        let ping = json!({"type": "ping", "name": "A", "session": session});
        h.json(ping, addr(1), 0);
        // A's presence budget (400 bytes) takes a few joins, then the rest are withheld.
        let mut told = 0;
        for i in 2..20u16 {
            let r = h.json(
                json!({"type": "register", "name": format!("N{i}")}),
                addr(i),
                0,
            );
            told += r.iter().filter(|(to, _)| *to == addr(1)).count();
        }
        assert!(told > 0 && told < 18, "{told}");
        let c = Counters::default();
        let mut sent = Vec::new();
        let mut out = Out::default();
        let done = sweep(&h.shared, at(5000), &mut out, &c, |o| {
            sent.extend(parse(collect(o, &[])));
            o.clear();
        });
        assert_eq!(done.lists, 1);
        let lists: Vec<_> = sent
            .iter()
            .filter(|(_, m)| m["type"] == "peer_list")
            .collect();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].0, addr(1));
        assert_eq!(lists[0].1["count"], 19);
        // Owed once: the next sweep sends no other list.
        let again = sweep(&h.shared, at(10_000), &mut out, &c, |o| o.clear());
        assert_eq!(again.lists, 0);
    }

    #[test]
    fn sweep_flushes_in_bounded_batches() {
        let s = Settings {
            peer_timeout_ms: 10_000,
            keepalive_ms: 100,
            max_peers: 10_000,
            ..Settings::default()
        };
        let h = Harness::new(s);
        for i in 0..3000u16 {
            h.shared.registry.claim(
                &format!("p{i}"),
                addr(i),
                crate::registry::Proof::Token(None),
                0,
                usize::MAX,
            );
        }
        let mut out = Out::default();
        let mut batches = Vec::new();
        let c = Counters::default();
        let done = sweep(&h.shared, at(200), &mut out, &c, |o| {
            batches.push(o.sends.len());
            o.clear();
        });
        assert_eq!(done.keepalives, 3000);
        assert!(batches.iter().all(|&n| n <= FLUSH_EVERY), "{batches:?}");
        assert_eq!(batches.iter().sum::<usize>(), 3000);
    }
}
