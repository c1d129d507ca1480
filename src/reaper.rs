//! The reaper's logic: one sweep removes stale peers (announcing them) and picks the live ones
//! owed a `server_keepalive`. Sans-IO: the caller sends what lands in the [`Out`].

use crate::clock::Now;
use crate::out::Out;
use crate::presence;
use crate::router::Shared;
use crate::wire::reply::{self, Presence};

/// Sends are handed to the caller in batches of about this many, to bound memory.
pub const FLUSH_EVERY: usize = 1024;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Peers removed.
    pub reaped: usize,
    /// `server_keepalive`s sent.
    pub keepalives: usize,
}

/// Sweeps the registry at `now`, calling `flush` whenever `out` holds a batch (and at the end).
pub fn sweep(shared: &Shared, now: Now, out: &mut Out, mut flush: impl FnMut(&mut Out)) -> Sweep {
    let reg = &shared.registry;
    let (stale, due) = reg.scan(now.ms, shared.settings.keepalive_ms);
    let mut done = Sweep::default();
    for name in stale {
        if let Some(gone) = reg.reap(&name, now.ms) {
            tracing::debug!(name = %gone.name, addr = %gone.addr, "reaped");
            done.reaped += 1;
            presence::announce(shared, out, Presence::Left, &gone.name, now);
            if out.sends.len() >= FLUSH_EVERY {
                flush(out);
            }
        }
    }
    for p in due {
        let start = out.buf.len();
        reply::server_keepalive(&mut out.buf, now.unix, &p.name);
        out.reply(p.addr, start);
        done.keepalives += 1;
        if out.sends.len() >= FLUSH_EVERY {
            flush(out);
        }
    }
    if !out.sends.is_empty() {
        flush(out);
    }
    done
}
