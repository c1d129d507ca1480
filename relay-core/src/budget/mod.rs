//! Budgets: who pays for each datagram the relay sends. Shared by every worker and the reaper,
//! so that no limit multiplies with the number of workers.
//!
//! Any source address can be forged, so what an unauthenticated request makes the relay send to
//! its source must be paid by that address's host, its /24 (/48) and the relay as a whole: each
//! starts with a small credit and earns what it sends in, never anything by the clock. Over any
//! flood forged in a victim's name, the victim's network gets at most what was sent in its name
//! beyond the prefix's credit. Announcements are paid by the host whose datagram caused them (it
//! earns twice what it sends, beyond a fixed allowance) and are capped per recipient by a rate.
//! News an unauthenticated datagram causes is not told to trusted peers of its own /24 (/48) at
//! all: whoever forges a neighbour's address forges in that network's name. It is told when the
//! registration proves itself (see `presence::announce_to_neighbours`). Forwards are
//! paid by their sender's own admission limits ([`crate::ratelimit`]).
//!
//! Every table is a fixed array of atomics indexed by a keyed hash: memory is bounded whatever
//! the input, and state is never reset (a name going away changes nothing). Keys that share a
//! slot share its balance; with a random key per start-up, nobody can choose whom they share with.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use crate::addr::{host_key, prefix};
use crate::metrics::Counters;
use crate::out::{Kind, Out, Send};
use crate::settings::Settings;

mod announcements;
mod claims;
mod clocked;
mod earned;
mod image;
mod misses;
mod own;
mod replies;
mod table;
#[cfg(test)]
mod tests;

pub use image::Image;
pub use misses::Misses;
pub use own::Own;
pub use table::TableImage;

use clocked::Clocked;
use earned::Earned;

/// A request's own bytes pay for replies to its source up to this many times its size: QUIC's
/// anti-amplification factor (RFC 9000 §8). Only what goes beyond is paid from the pools.
pub const ANSWER_FACTOR: usize = 3;
/// Bytes of a host's reply budget that announcements to an untrusted registration may not use,
/// so that a `peer_list` after a `register_ack` still finds them.
pub const RESERVE: i64 = 512;
/// Bytes that acks nobody needs and keepalives to an untrusted registration (an old peer
/// ignores both) may not use: what the host earns goes to its `register_ack` and its
/// announcements first.
pub const COURTESY_RESERVE: i64 = 1536;
/// A reply budget may bank at most this many times its credit from what its owner sent.
const CAP_CREDITS: i64 = 16;
/// A recipient's presence budget allows bursts of this many seconds' worth of its rate.
const PRESENCE_BURST_S: u64 = 4;
/// Registrations and signature checks allow bursts of this many seconds' worth of their rate.
const REGISTRATION_BURST_S: u64 = 10;
/// Displacements allow bursts of this many seconds' worth of their rate.
const DISPLACEMENT_BURST_S: u64 = 10;

/// Displacements a second one network may cause: a sixteenth of the names kept for displaced
/// peers, spread over a peer timeout (68 a second at the default of 60 s).
fn displacement_rate(s: &Settings) -> u64 {
    let timeout_s = (s.peer_timeout_ms / 1000).max(1);
    ((crate::reservations::MAX / 16) as u64 / timeout_s).max(1)
}

/// A /48 (IPv4: /24) may cost this many times the signature checks of a /56 (an IPv4 address).
const SIGNATURE_NETWORK_FACTOR: u64 = 8;
/// A relay-originated send to a trusted peer this small (a `server_keepalive`) is free; a larger
/// one (a coalesced `peer_list`) is held to the recipient's presence rate.
const KEEPALIVE_FREE: usize = 256;

const HOST_SLOTS: usize = 1 << 18;
const PREFIX_SLOTS: usize = 1 << 16;
const LIMIT_SLOTS: usize = 1 << 16;

/// Whose datagram caused a batch of sends, which decides who pays for its announcements.
#[derive(Clone, Copy, Debug)]
pub enum Cause {
    /// The relay itself (keepalives, coalesced lists).
    Relay,
    /// A datagram from this host that carried its session.
    Authenticated(IpAddr),
    /// A datagram from this host that proved nothing (or a reaped registration it made).
    Unauthenticated(IpAddr),
}

impl Cause {
    fn host(self) -> Option<IpAddr> {
        match self {
            Cause::Relay => None,
            Cause::Authenticated(ip) | Cause::Unauthenticated(ip) => Some(ip),
        }
    }
}

/// Every budget of the relay.
pub struct Budgets {
    reply_host: Earned,
    reply_prefix: Earned,
    reply_global: Earned,
    fanout: Earned,
    presence: Clocked,
    /// New names per source address (IP and port: one NAT mapping, so that names forged at a
    /// host's other ports take nothing from its users).
    registrations: Clocked,
    /// Signature checks per /56 (IPv4 address), per /48 (IPv4 /24) and in the relay: CPU a
    /// source may cost. Not handed over: they refill within a burst's time.
    signatures: [Clocked; 3],
    /// Displacements from a full registry per network (/24, /48): a sixteenth of the names kept
    /// for displaced peers ([`crate::reservations::MAX`]) a peer timeout, so that it takes
    /// sixteen networks to cycle them. Not handed over.
    displacements: Clocked,
    /// Trusted recipients an announcement was withheld from: each gets one `peer_list` later.
    owed: Mutex<HashSet<SocketAddr>>,
}

/// What a settled send cost, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Sent,
    Withheld,
    /// Withheld, and the recipient is owed a `peer_list` for it.
    Owed,
}

impl Budgets {
    /// The budgets `s` configures.
    pub fn new(s: &Settings) -> Budgets {
        Budgets {
            reply_host: Earned::new(HOST_SLOTS, s.reply_credit, CAP_CREDITS),
            reply_prefix: Earned::new(PREFIX_SLOTS, s.reply_prefix_credit, CAP_CREDITS),
            reply_global: Earned::new(1, s.reply_global_credit, CAP_CREDITS),
            // A host's fan-out banks no more than its allowance.
            fanout: Earned::new(LIMIT_SLOTS, s.fanout_allowance, 1),
            presence: Clocked::new(LIMIT_SLOTS, s.presence_rate, PRESENCE_BURST_S),
            registrations: Clocked::new(LIMIT_SLOTS, s.registration_rate, REGISTRATION_BURST_S),
            signatures: [
                Clocked::new(LIMIT_SLOTS, s.registration_rate, REGISTRATION_BURST_S),
                Clocked::new(
                    LIMIT_SLOTS,
                    s.registration_rate.saturating_mul(SIGNATURE_NETWORK_FACTOR),
                    REGISTRATION_BURST_S,
                ),
                Clocked::new(1, s.signature_rate, REGISTRATION_BURST_S),
            ],
            displacements: Clocked::new(LIMIT_SLOTS, displacement_rate(s), DISPLACEMENT_BURST_S),
            owed: Mutex::default(),
        }
    }

    /// Puts in force the credits, the fan-out allowance and the rates of `s` (a reload).
    pub fn retune(&self, s: &Settings) {
        self.reply_host.set_credit(s.reply_credit);
        self.reply_prefix.set_credit(s.reply_prefix_credit);
        self.reply_global.set_credit(s.reply_global_credit);
        self.fanout.set_credit(s.fanout_allowance);
        self.presence.set_rate(s.presence_rate);
        self.registrations.set_rate(s.registration_rate);
        let [small, large, all] = &self.signatures;
        small.set_rate(s.registration_rate);
        large.set_rate(s.registration_rate.saturating_mul(SIGNATURE_NETWORK_FACTOR));
        all.set_rate(s.signature_rate);
        self.displacements.set_rate(displacement_rate(s));
    }

    fn settle_one(
        &self,
        s: &Send,
        len: usize,
        cause: Cause,
        own: &mut Option<Own>,
        now_ms: u64,
    ) -> Verdict {
        let n = len as i64;
        let to = s.to.ip();
        let ok = match (s.kind, s.trusted) {
            (Kind::Forward, _) | (Kind::Reply | Kind::Courtesy, true) => true,
            // The request pays for its own answer, in whole sends while its bytes last.
            (Kind::Reply | Kind::Courtesy, false) if own.is_some_and(|o| o.pays(s.to, len)) => {
                if let Some(o) = own {
                    o.left -= len;
                }
                true
            }
            // A coalesced list (a keepalive's worth of presence) is held to the presence rate.
            (Kind::Keepalive, true) => {
                len <= KEEPALIVE_FREE || self.presence.take(s.to, len as u64, now_ms)
            }
            (Kind::Reply, false) => self.spend_reply(to, n, 0),
            (Kind::Courtesy | Kind::Keepalive, false) => self.spend_reply(to, n, COURTESY_RESERVE),
            (Kind::Announce, trusted) => {
                // Unproven news of a neighbour waits for its proof (it may be forged).
                if trusted
                    && matches!(cause, Cause::Unauthenticated(ip) if prefix(ip) == prefix(to))
                {
                    return Verdict::Withheld;
                }
                let key = cause.host().map(host_key);
                // A payer that cannot pay gets nothing sent, now or later: owing a list for it
                // would let anyone make the relay send lists at no cost.
                if let Some(k) = key {
                    if !self.fanout.spend(k, n, 0) {
                        return Verdict::Withheld;
                    }
                }
                if !trusted && !self.spend_reply(to, n, RESERVE) {
                    if let Some(k) = key {
                        self.fanout.refund(k, n);
                    }
                    return Verdict::Withheld;
                }
                if !self.presence.take(s.to, len as u64, now_ms) {
                    // Paid, but the recipient hears too much: it gets one list later instead,
                    // itself held to the presence rate.
                    return if trusted {
                        Verdict::Owed
                    } else {
                        Verdict::Withheld
                    };
                }
                true
            }
        };
        if ok { Verdict::Sent } else { Verdict::Withheld }
    }

    /// Withholds, among `out.sends[start..]`, what its payers cannot pay, and counts it;
    /// `cause` is whose datagram caused them, `own` what that datagram's own bytes pay for.
    /// Returns how many of those bytes its replies used.
    pub fn settle(
        &self,
        out: &mut Out,
        start: usize,
        cause: Cause,
        own: Option<Own>,
        now_ms: u64,
        c: &Counters,
    ) -> usize {
        if out.sends[start..].iter().all(|s| s.kind == Kind::Forward) {
            return 0;
        }
        let mut own = own;
        let mut i = 0;
        let mut owed = Vec::new();
        // A reply withheld makes the replies after it to the same address pointless (a
        // `peer_list` without its `register_ack`): they are withheld too.
        let mut cut = None;
        out.sends.retain(|s| {
            i += 1;
            if i <= start {
                return true;
            }
            let v = if s.kind == Kind::Reply && cut == Some(s.to) {
                Verdict::Withheld
            } else {
                self.settle_one(s, s.wire_len(), cause, &mut own, now_ms)
            };
            if v != Verdict::Sent && s.kind == Kind::Reply {
                cut = Some(s.to);
            }
            if v != Verdict::Sent {
                let counter = match s.kind {
                    Kind::Announce => &c.withheld_announcements,
                    Kind::Keepalive => &c.withheld_keepalives,
                    _ => &c.withheld_replies,
                };
                Counters::add(counter, 1);
            }
            if v == Verdict::Owed {
                owed.push(s.to);
            }
            v == Verdict::Sent
        });
        if !owed.is_empty() {
            self.keep_owed(owed);
        }
        own.map_or(0, |o| o.bytes - o.left)
    }
}
