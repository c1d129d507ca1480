//! The registry's unit tests, one file per concept, over the helpers here.

use super::*;

mod claims;
mod image;
mod layout;
mod sweep;
mod watch;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn registry(timeout_ms: u64) -> Registry {
    Registry::new(&Settings {
        peer_timeout_ms: timeout_ms,
        ..Settings::default()
    })
}

fn trusted(r: &Registry, name: &str) -> bool {
    r.peers.get(name, |_, e| r.trusted(e, 10)).unwrap_or(false)
}

/// The names registered at `addr`, oldest first.
fn names_at(r: &Registry, addr: SocketAddr) -> Vec<Name> {
    r.by_addr
        .get(&addr.into(), |_, at| at.names().to_vec())
        .unwrap_or_default()
}

/// Every shard's findings of one scan, together.
fn scan_all(r: &Registry, now_ms: u64, keepalive_ms: u64) -> (Vec<Name>, Vec<Live>) {
    let (mut stale, mut due) = (Vec::new(), Vec::new());
    r.scan(now_ms, keepalive_ms, |s, d| {
        stale.append(s);
        due.append(d);
    });
    (stale, due)
}
