//! The routing decision: for one datagram, its source and the time, what to send or why to drop.
//!
//! Sans-IO: it reads bytes and the shared state and appends sends to an [`Out`]; the I/O shells
//! do the sending. Every protocol rule lives here or in `presence`; who pays for each
//! send is settled by [`crate::budget`] once the datagram is decided.
//!
//! This file admits a datagram, tells its family, dispatches it by message group and answers
//! refusals; each group is a file of its own: `relay` (the JSON hot path), `claims`
//! (`register`, `keepalive`, signed), `queries` (`ping`, `watch`, `lookup`, `unregister`,
//! `connect`), `channels` (`bind`, `unbind` and the frames), `stun` (Binding).

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::debug;

use crate::budget::{ANSWER_FACTOR, Cause, Own};
use crate::clock::Now;
use crate::cluster::Pending;
use crate::destination::View;
use crate::events;
use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::presence;
use crate::ratelimit::Admission;
use crate::refusal::Reason;
use crate::registry::{Event, Name, Removed, Session};
use crate::shared::Shared;
use crate::wire::control::{self, ParseError};
use crate::wire::reply::{self, Presence};
use crate::wire::scan::{self, ScanError};
use crate::wire::{Family, classify};

mod channels;
mod claims;
mod meet;
mod mesh;
mod queries;
mod relay;
mod stun;
#[cfg(test)]
pub(crate) mod tests;

/// The largest `watch` or `unwatch` parsed is this or 136 bytes per name of `--max-watch` in
/// force (64 bytes, escaped where needed, quoted), whichever is larger: 34,816 bytes at the
/// default of 256. Its parse is paid per name (each costs a datagram of admission).
const MAX_WATCH_MESSAGE: usize = 20 * 1024;
/// The largest other control message parsed: IPv6's minimum MTU, room for a signed `register`
/// padded to buy its full reply, so that no request costs more parsing than a datagram's worth.
const MAX_CONTROL: usize = 1280;

/// The types a relay sends: arriving here, they are another relay's (or forged from one), and
/// answering them would let a forger set two relays answering each other without end.
const RELAY_TYPES: &[&str] = &[
    "error",
    "register_ack",
    "keepalive_ack",
    "peer_list",
    "peer_joined",
    "peer_left",
    "pong",
    "relayed_packet",
    "server_keepalive",
    "watch_ack",
    "peer_info",
    "introduce",
    "connect_request",
    "challenge",
    "bind_ack",
    "channel_bound",
    "channel_closed",
];

/// Who may be sent an error reply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Only an address that holds a registration.
    Registered,
    /// Whoever asked (a `register`).
    Requester,
}

/// The datagram being decided: where it came from, when, its size, and what it has shown.
#[derive(Clone, Copy)]
struct Req {
    from: SocketAddr,
    now: Now,
    len: usize,
    who: Answer,
    /// Whether it carried the session of the name it speaks for, from that name's address.
    authed: bool,
}

/// One worker's router.
pub struct Router {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    /// This worker's limits, taken from the shared state and given back when the router goes.
    admission: Admission,
    worker: usize,
    scratch: Vec<u8>,
    /// The peer addresses served.
    peers: View,
    /// Whether the datagram being decided is a registration whose cluster claim settled.
    settling: bool,
}

/// Gives the worker's limits back to the shared state, for the router that comes next.
impl Drop for Router {
    fn drop(&mut self) {
        let admission = std::mem::replace(&mut self.admission, Admission::empty());
        self.shared.park(self.worker, admission);
    }
}

impl Router {
    /// A router for worker `worker`: with the limits its worker left (a pause) or a relay
    /// handed over, else full ones.
    pub fn new(shared: Arc<Shared>, worker: usize) -> Router {
        let admission = shared
            .parked(worker)
            .unwrap_or_else(|| Admission::new(&shared.settings, shared.workers, 0));
        Router {
            counters: shared.metrics.block(worker),
            admission,
            worker,
            peers: shared.boundary.view(),
            shared,
            scratch: Vec::new(),
            settling: false,
        }
    }

    /// The mesh stream this router's thread seals in: a router's index is its thread's
    /// (`mesh::Sender::index`).
    fn stream(&self) -> u16 {
        u16::try_from(self.worker).unwrap_or(u16::MAX)
    }

    /// Takes up the limits a reload published (the buckets start full again).
    fn retune(&mut self) {
        let generation = self.shared.live.generation();
        self.admission.generation = generation;
        if let Some(s) = self.shared.live.current() {
            self.admission = Admission::new(&s, self.shared.workers, generation);
        }
    }

    /// Decides what to do with datagram `d` from `from`, appending sends to `out`.
    /// A channel frame is rewritten in place and sent on from `d` itself.
    pub fn handle(&mut self, d: &mut [u8], from: SocketAddr, now: Now, out: &mut Out) {
        self.run(d, d.len(), from, now, out);
    }

    /// Decides again registration `p`, whose cluster claim settled: the name is homed here now
    /// (see [`crate::cluster`]), unless the registration is refused after all.
    pub fn settle(&mut self, p: &Pending, now: Now, out: &mut Out) {
        self.settling = true;
        let mut d = p.datagram.clone();
        let len = d.len();
        self.run(&mut d, len, p.from, now, out);
        self.settling = false;
        // Refused all the same (its address full, the registry full): the name claimed for it
        // is released, or the directory would hold it here for no one.
        if let Some(c) = self.shared.cluster.get() {
            if self.shared.registry.addr_of(&p.name, now.ms).is_none() {
                c.left(&p.name);
            }
        }
    }

    /// Refuses registration `p`, whose cluster claim failed for `why`, with the reason's error.
    pub fn unsettled(&mut self, p: &Pending, why: Reason, now: Now, out: &mut Out) {
        let req = Req {
            from: p.from,
            now,
            len: p.datagram.len(),
            who: Answer::Requester,
            authed: false,
        };
        let start = out.sends.len();
        self.fail(out, why, &req);
        let own = Some(Own::of(p.from, req.len));
        let cause = Cause::Unauthenticated(p.from.ip());
        self.shared
            .budgets
            .settle(out, start, cause, own, now.ms, &self.counters);
    }

    /// A datagram that did not fit the receive buffer: `len` bytes were received of it.
    pub fn truncated(&mut self, len: usize, from: SocketAddr, now: Now, out: &mut Out) {
        self.run(&mut [], len, from, now, out);
    }

    /// A native IPv6 datagram whose source is an IPv4-mapped address: counted and refused
    /// before anything else (nobody at that address sent it).
    pub fn mapped_source(&mut self, len: usize) {
        Counters::add(&self.counters.received, 1);
        Counters::add(&self.counters.received_bytes, len as u64);
        self.counters.refuse(Reason::MappedSource);
    }

    fn run(&mut self, d: &mut [u8], len: usize, from: SocketAddr, now: Now, out: &mut Out) {
        out.stream = self.stream();
        Counters::add(&self.counters.received, 1);
        Counters::add(&self.counters.received_bytes, len as u64);
        let mut req = Req {
            from,
            now,
            len,
            who: Answer::Registered,
            authed: false,
        };
        let start = out.sends.len();
        let mut admitted = false;
        if self.shared.live.generation() != self.admission.generation {
            self.retune();
        }
        // A source the relay never sends to, or does not serve, is refused before it costs
        // anyone's bucket (a few comparisons), and never answered.
        if let Err(r) = self.peers.policy().check(from) {
            return self.refuse(r, &req);
        }
        // Admission comes before any parsing, so a flood costs a hash and a few additions.
        if let Err(r) = self.admission.ingress.admit(from, len, now.ms) {
            self.fail(out, r, &req);
        } else {
            if len > d.len() || len > self.shared.settings.max_datagram {
                self.fail(out, Reason::TooLarge, &req);
            } else {
                match classify(d) {
                    Family::Json => self.json(d, &mut req, out),
                    Family::Channel => self.frame(d, &req, out),
                    Family::Stun => self.stun(d, &req, out),
                    Family::Unknown => self.refuse(Reason::UnknownFamily, &req),
                }
            }
            // What a datagram sends in pays for the announcements it causes (before they are
            // settled); a forward is itself what it pays for.
            if !out.sends[start..].iter().any(|s| s.kind == Kind::Forward) {
                self.shared.budgets.earn_fanout(from.ip(), len);
            }
            admitted = true;
        }
        let b = &self.shared.budgets;
        let (cause, own) = if req.authed {
            (Cause::Authenticated(from.ip()), None)
        } else {
            (Cause::Unauthenticated(from.ip()), Some(Own::of(from, len)))
        };
        let used = b.settle(out, start, cause, own, now.ms, &self.counters);
        if admitted && !req.authed {
            b.earn_replies(from.ip(), len, used);
        }
    }

    /// The most bytes a reply to `req` can take: any, authenticated; else what its own bytes
    /// pay for or what the pools hold for its source, whichever is more.
    fn affordable(&self, req: &Req) -> usize {
        if req.authed {
            return usize::MAX;
        }
        let pools = self.shared.budgets.reply_available(req.from.ip());
        let pools = usize::try_from(pools).unwrap_or(0);
        pools.max(req.len.saturating_mul(ANSWER_FACTOR))
    }

    /// Sends the essential answer to `req` written at `out.buf[start..]`: whole where its
    /// request's own bytes or the pools pay for it (the pools at once, so that no other
    /// worker's spending before this batch is settled withholds it), else in the short form
    /// `short` writes, which its request pays for: an answer a peer needs is never withheld for
    /// want of anyone else's budget.
    fn answer(&self, req: &Req, out: &mut Out, start: usize, short: impl FnOnce(&mut Vec<u8>)) {
        let full = out.buf.len() - start;
        let own = req.authed || full <= req.len.saturating_mul(ANSWER_FACTOR);
        let prepaid = !own && self.shared.budgets.prepay(req.from.ip(), full);
        if !own && !prepaid {
            out.buf.truncate(start);
            short(&mut out.buf);
            Counters::add(&self.counters.short_answers, 1);
        }
        out.reply(req.from, start, Kind::Reply, req.authed || prepaid);
    }

    /// A registration is gone (unregistered, displaced): who should hear of it hears that it
    /// left, and its channels close.
    fn gone(&self, gone: &Removed, now: Now, out: &mut Out) {
        if let Some(c) = self.shared.cluster.get() {
            c.left(&gone.name);
        }
        presence::announce(
            &self.shared,
            out,
            Presence::Left,
            &gone.name,
            gone.addr,
            now,
        );
        events::react(&self.shared, gone.event(), now, out);
    }

    /// A registration proved itself for the first time where it is: its join, unproven news
    /// until now, is told to the trusted peers of its own network, and its channels, if it
    /// moved here, follow it now.
    fn proven(&self, name: &str, req: &Req, out: &mut Out) {
        presence::announce_to_neighbours(&self.shared, out, name, req.from, req.now);
        events::react(&self.shared, Event::Moved(name, req.from), req.now, out);
    }

    fn refuse(&self, r: Reason, req: &Req) {
        self.counters.refuse(r);
        debug!(from = %req.from, len = req.len, reason = r.as_str(), "refused");
    }

    /// Refuses, and answers with the reason's `error` where the protocol allows it: to a
    /// registered address (or whoever sent a `register`), within the per-source error rate; to
    /// an unauthenticated request in full only if its own bytes or the budgets can pay it, else
    /// in short form.
    fn fail(&mut self, out: &mut Out, r: Reason, req: &Req) {
        self.refuse(r, req);
        let Some(code) = r.code() else { return };
        let to = req.from;
        if req.who == Answer::Registered && !self.shared.registry.has_addr(to) {
            return;
        }
        if !self.admission.errors.allow(to.ip(), req.now.ms) {
            Counters::add(&self.counters.errors_suppressed, 1);
            return;
        }
        let start = out.buf.len();
        if reply::error(&mut out.buf, code, r.message(), self.affordable(req)) {
            out.reply(to, start, Kind::Reply, req.authed);
        } else {
            Counters::add(&self.counters.withheld_replies, 1);
        }
    }

    fn json(&mut self, d: &[u8], req: &mut Req, out: &mut Out) {
        if std::str::from_utf8(d).is_err() {
            return self.fail(out, Reason::NotUtf8, req);
        }
        let h = match scan::scan(d) {
            Ok(h) => h,
            Err(e) => {
                let r = match e {
                    ScanError::Syntax => Reason::Syntax,
                    ScanError::TooDeep => Reason::TooDeep,
                    ScanError::Duplicate => Reason::Duplicate,
                    ScanError::WrongType => Reason::WrongType,
                    ScanError::MissingType => Reason::MissingField,
                };
                return self.fail(out, r, req);
            }
        };
        let mut tmp = [0u8; 16];
        let ty = scan::text(d, h.ty, &mut tmp).unwrap_or("");
        if ty == "relay" {
            return self.relay(d, &h, req, out);
        }
        // Only a relay carries a payload: a control message larger than its type needs is
        // refused before the work of parsing it (a `watch` of `--max-watch` 64-byte names fits;
        // a reload may change that, so it is read here).
        let max_control = match ty {
            "watch" | "unwatch" => {
                MAX_WATCH_MESSAGE.max(self.shared.registry.max_watch().saturating_mul(136))
            }
            _ => MAX_CONTROL,
        };
        if d.len() > max_control {
            return self.fail(out, Reason::TooLarge, req);
        }
        let result = match ty {
            "register" => {
                req.who = Answer::Requester;
                self.register(d, req, out, true)
            }
            "keepalive" => self.register(d, req, out, false),
            "ping" => self.ping(d, req, out),
            "watch" => self.watch(d, req, out, true),
            "unwatch" => self.watch(d, req, out, false),
            "lookup" => self.lookup(d, req, out),
            "unregister" => self.unregister(d, req, out),
            "connect" => self.connect(d, req, out),
            "bind" => self.bind(d, req, out),
            "unbind" => self.unbind(d, req, out),
            t if RELAY_TYPES.contains(&t) => return self.refuse(Reason::RelayMessage, req),
            _ => Err(Reason::UnknownType),
        };
        if let Err(r) = result {
            self.fail(out, r, req);
        }
    }

    /// Parses a control message from a scratch copy (simd-json parses in place).
    fn parse<T: for<'de> serde::Deserialize<'de>>(&mut self, d: &[u8]) -> Result<T, Reason> {
        self.scratch.clear();
        self.scratch.extend_from_slice(d);
        control::parse(&mut self.scratch).map_err(|e| match e {
            ParseError::MissingField => Reason::MissingField,
            ParseError::Duplicate => Reason::Duplicate,
            ParseError::WrongType => Reason::WrongType,
            ParseError::Malformed => Reason::BadRequest,
        })
    }

    /// The name a request speaks for, if it carries that name's session from its address: the
    /// one it names, or, when it names none, the only one at its address. Marks `req`
    /// authenticated.
    fn authenticate(
        &self,
        named: Option<&str>,
        session: Option<&str>,
        req: &mut Req,
        out: &mut Out,
    ) -> Result<Name, Reason> {
        let reg = &self.shared.registry;
        let token = session.and_then(Session::parse);
        // Leaving the name out is for an address that holds one: checking the session against
        // every name there would cost a token derivation each.
        let name = match named {
            Some(n) => Name::from(n),
            None => match reg.only_name_at(req.from) {
                Ok(n) => n,
                Err(0) => return Err(Reason::NotRegistered),
                Err(_) => return Err(Reason::MissingField),
            },
        };
        if let Some(first) = reg.authenticate(&name, req.from, token, req.now.ms) {
            req.authed = true;
            if first {
                self.proven(&name, req, out);
            }
            Ok(name)
        } else if reg.session_at(&name, req.from, req.now.ms).is_none() {
            Err(Reason::NotRegistered)
        } else {
            Err(Reason::SessionRequired)
        }
    }
}
