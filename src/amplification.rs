//! Anti-amplification: what the relay volunteers to an address that has not proven it receives.
//!
//! Any source address can be forged. An address is proven once a datagram from it echoes the
//! session token the relay sent there (see `Registry::proven`). Until then, replies and
//! announcements to it draw on a small credit of bytes, per address and per /24 (/56), that
//! refills slowly; beyond it they are withheld and counted. Forwards are not drawn from the
//! credit: a `relayed_packet` is never larger than the `relay` that caused it (for names of a
//! dozen bytes or more), and the sender's own rate limit bounds how many there are.
//!
//! What an old peer gets: it never echoes its token, so it stays unproven. Its `register_ack`
//! and a `peer_list` fit the first credit; afterwards the refill (64 bytes a second per address)
//! covers a `keepalive_ack` and a `server_keepalive` every ten seconds with room to spare. A
//! flood forged in a victim's name gets the victim at most the credit, whatever the flood's size;
//! the prefix's credit (64 KiB, refilling 8 KiB/s) bounds floods spread over a victim network
//! while leaving room for a few dozen old peers registering at once behind one NAT.

use std::net::SocketAddr;

use crate::metrics::Counters;
use crate::out::{Out, Seg};
use crate::ratelimit::{Buckets, prefix};
use crate::registry::Registry;

/// An address's credit refills by this fraction of itself each second (64 B/s of 1,600).
const ADDRESS_REFILL: f64 = 1.0 / 25.0;
/// A prefix's credit refills by this fraction of itself each second.
const PREFIX_REFILL: f64 = 1.0 / 8.0;
/// Buckets per table (16 bytes each): few addresses share one even at a million peers.
const SLOTS: usize = 1 << 16;

/// The credits of unproven addresses, one set per thread that sends (workers, the reaper).
pub struct Guard {
    /// Credits of addresses where no name is registered (those of registered addresses live
    /// in the registry, one per address).
    address: Buckets,
    prefix: Buckets,
    burst: u64,
    rate: u64,
    /// The last recipient looked up, and whether it was proven: replies come in runs.
    last: Option<(SocketAddr, bool)>,
}

impl Guard {
    /// Credits of `address` bytes per address and `prefix` bytes per /24 (/56); 0: no limit.
    pub fn new(address: u64, prefix: u64) -> Guard {
        let (a, p) = (address as f64, prefix as f64);
        Guard {
            address: Buckets::new(SLOTS, a * ADDRESS_REFILL, a),
            prefix: Buckets::new(SLOTS / 4, p * PREFIX_REFILL, p),
            burst: address,
            rate: (a * ADDRESS_REFILL) as u64,
            last: None,
        }
    }
}

fn is_forward(s: &crate::out::Send) -> bool {
    matches!(s.segs[1], Seg::Input(_))
}

fn len(s: &crate::out::Send) -> usize {
    s.segs[..s.nsegs]
        .iter()
        .map(|g| match g {
            Seg::Buf(r) | Seg::Input(r) => r.len(),
            Seg::Static(b) => b.len(),
        })
        .sum()
}

impl Guard {
    /// Withholds, among `out.sends[start..]`, what is not a forward and goes to an unproven
    /// address beyond its credit; counts what it withholds.
    pub fn filter(
        &mut self,
        reg: &Registry,
        out: &mut Out,
        start: usize,
        now_ms: u64,
        c: &Counters,
    ) {
        if out.sends[start..].iter().all(is_forward) {
            return;
        }
        self.last = None;
        let mut i = 0;
        let mut withheld = 0;
        out.sends.retain(|s| {
            i += 1;
            if i <= start || is_forward(s) || self.allow(reg, s.to, len(s) as f64, now_ms) {
                return true;
            }
            withheld += 1;
            false
        });
        if withheld > 0 {
            Counters::add(&c.unproven_withheld, withheld);
        }
    }

    fn allow(&mut self, reg: &Registry, to: SocketAddr, bytes: f64, now_ms: u64) -> bool {
        let proven = match self.last {
            Some((a, p)) if a == to => p,
            _ => {
                let p = reg.proven(to);
                self.last = Some((to, p));
                p
            }
        };
        if proven {
            return true;
        }
        // The prefix's credit is charged only once the address's has been: an address out of
        // credit must not drain its prefix's, which its neighbours share.
        let p = self.prefix.hash(prefix(to.ip()));
        if self.prefix.available_at(p, now_ms) < bytes {
            return false;
        }
        let address_ok = if self.burst == 0 {
            true
        } else if let Some(ok) = reg.spend_credit(to, bytes as u64, now_ms, self.burst, self.rate) {
            ok
        } else {
            let a = self.address.hash(to);
            let ok = self.address.available_at(a, now_ms) >= bytes;
            if ok {
                self.address.spend_at(a, bytes);
            }
            ok
        };
        if address_ok {
            self.prefix.spend_at(p, bytes);
        }
        address_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(out: &mut Out, to: SocketAddr, n: usize) {
        let start = out.buf.len();
        out.buf.resize(start + n, b'x');
        out.reply(to, start);
    }

    #[test]
    fn unproven_addresses_get_a_credit_and_proven_ones_everything() {
        let reg = Registry::new(60_000);
        let c = Counters::default();
        let mut g = Guard::new(1_600, 65_536);
        let victim: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let mut out = Out::default();
        for _ in 0..100 {
            reply(&mut out, victim, 100);
        }
        g.filter(&reg, &mut out, 0, 0, &c);
        assert_eq!(out.sends.len(), 16, "1,600 bytes of credit");
        assert_eq!(
            c.unproven_withheld
                .load(std::sync::atomic::Ordering::Relaxed),
            84
        );
        // A second later, 64 more bytes: not enough for another 100.
        out.clear();
        reply(&mut out, victim, 100);
        g.filter(&reg, &mut out, 0, 1000, &c);
        assert!(out.sends.is_empty());

        // A registered but unproven address (an old peer) has a credit of its own, kept in the
        // registry: spending the victim's above did not touch it.
        let old_peer: SocketAddr = "203.0.113.1:9".parse().unwrap();
        reg.claim("old", old_peer, crate::registry::Proof::Token(None), 0, 10);
        out.clear();
        for _ in 0..20 {
            reply(&mut out, old_peer, 100);
        }
        g.filter(&reg, &mut out, 0, 0, &c);
        assert_eq!(out.sends.len(), 16);

        // Proven: register, then echo the token from the same address.
        let peer: SocketAddr = "198.51.100.1:9".parse().unwrap();
        let crate::registry::Claim::Joined(s) =
            reg.claim("p", peer, crate::registry::Proof::Token(None), 0, 10)
        else {
            panic!()
        };
        reg.claim("p", peer, crate::registry::Proof::Token(Some(s)), 0, 10);
        out.clear();
        for _ in 0..100 {
            reply(&mut out, peer, 100);
        }
        g.filter(&reg, &mut out, 0, 0, &c);
        assert_eq!(out.sends.len(), 100);
    }
}
