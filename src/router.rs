//! The routing decision: for one datagram, its source and the time, what to send or why to drop.
//!
//! Sans-IO: it reads bytes and the shared state and appends sends to an [`Out`]; the I/O shells
//! do the sending. Every protocol rule lives here or in [`crate::presence`]; who pays for each
//! send is settled by [`crate::budget`] once the datagram is decided.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::debug;

use crate::auth::{self, AuthError};
use crate::budget::Cause;
use crate::clock::Now;
use crate::config::{Auth, MAX_UDP_PAYLOAD};
use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::presence;
use crate::ratelimit::{Ingress, SourceLimiter};
use crate::refusal::Reason;
use crate::registry::{Claim, Name, Proof, Session};
use crate::shared::Shared;
use crate::wire::reply::{self, Presence, RELAYED_SUFFIX};
use crate::wire::scan::{self, Header, ScanError};
use crate::wire::{Family, MAX_NAME, classify, control, valid_name};

/// The largest control message (anything but `relay`) parsed is this or 136 bytes per name of
/// `--max-watch` (64 bytes, escaped where needed, quoted), whichever is larger: 34,816 bytes at
/// the default of 256.
const MAX_CONTROL: usize = 20 * 1024;

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
    "challenge",
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
    errors: SourceLimiter,
    ingress: Ingress,
    scratch: Vec<u8>,
    /// The largest control message parsed (see [`MAX_CONTROL`]).
    max_control: usize,
}

impl Router {
    /// A router for worker `worker`.
    pub fn new(shared: Arc<Shared>, worker: usize) -> Router {
        let rate = shared.settings.error_rate as f32;
        Router {
            counters: shared.metrics.block(worker),
            errors: SourceLimiter::new(rate, 2.0 * rate),
            ingress: Ingress::new(&shared.settings, shared.workers),
            max_control: MAX_CONTROL.max(shared.settings.max_watch.saturating_mul(136)),
            shared,
            scratch: Vec::new(),
        }
    }

    /// Decides what to do with datagram `d` from `from`, appending sends to `out`.
    pub fn handle(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        self.run(d, d.len(), from, now, out);
    }

    /// A datagram that did not fit the receive buffer: `len` bytes were received of it.
    pub fn truncated(&mut self, len: usize, from: SocketAddr, now: Now, out: &mut Out) {
        self.run(&[], len, from, now, out);
    }

    /// A native IPv6 datagram whose source is an IPv4-mapped address: counted and refused
    /// before anything else (nobody at that address sent it).
    pub fn mapped_source(&mut self, len: usize) {
        Counters::add(&self.counters.received, 1);
        Counters::add(&self.counters.received_bytes, len as u64);
        self.counters.refuse(Reason::MappedSource);
    }

    fn run(&mut self, d: &[u8], len: usize, from: SocketAddr, now: Now, out: &mut Out) {
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
        // Admission comes before any parsing, so a flood costs a hash and a few additions.
        if let Err(r) = self.ingress.admit(from, len, now.ms) {
            self.fail(out, r, &req);
        } else {
            if len > d.len() || len > self.shared.settings.max_datagram {
                self.fail(out, Reason::TooLarge, &req);
            } else {
                match classify(d) {
                    Family::Json => self.json(d, &mut req, out),
                    Family::Stun | Family::Channel => self.refuse(Reason::Unsupported, &req),
                    Family::Unknown => self.refuse(Reason::UnknownFamily, &req),
                }
            }
            // News from its own prefix it could not pay for is given when it next proves itself,
            // ahead of the answer (so that the answer is a barrier for what came before).
            if req.authed && self.shared.budgets.take_asked(from) {
                presence::peer_list(&self.shared, out, from, now, Kind::Reply, true);
                out.sends[start..].rotate_right(1);
            }
            // What a datagram sends in pays for what it gets back (before it is settled).
            let forwarded = out.sends[start..].iter().any(|s| s.kind == Kind::Forward);
            self.shared
                .budgets
                .earn(from.ip(), len, req.authed, forwarded);
        }
        let b = &self.shared.budgets;
        let cause = if req.authed {
            Cause::Authenticated(from.ip())
        } else {
            Cause::Unauthenticated(from.ip())
        };
        b.settle(out, start, cause, now.ms, &self.counters);
    }

    fn refuse(&self, r: Reason, req: &Req) {
        self.counters.refuse(r);
        debug!(from = %req.from, len = req.len, reason = r.as_str(), "refused");
    }

    /// Refuses, and answers with the reason's `error` where the protocol allows it: to a
    /// registered address (or whoever sent a `register`), within the per-source error rate; to
    /// an unauthenticated request in full only if the budgets can pay it, else in short form.
    fn fail(&mut self, out: &mut Out, r: Reason, req: &Req) {
        self.refuse(r, req);
        let Some(code) = r.code() else { return };
        let to = req.from;
        if req.who == Answer::Registered && !self.shared.registry.has_addr(to) {
            return;
        }
        if !self.errors.allow(to.ip(), req.now.ms) {
            Counters::add(&self.counters.errors_suppressed, 1);
            return;
        }
        // The request's own bytes are earned before its replies are settled.
        let limit = if req.authed {
            usize::MAX
        } else {
            let available = self.shared.budgets.reply_available(to.ip());
            usize::try_from(available.saturating_add(req.len as i64)).unwrap_or(0)
        };
        let start = out.buf.len();
        if reply::error(&mut out.buf, code, r.message(), limit) {
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
        // Only a relay carries a payload: a control message that large is refused before the
        // work of parsing it (a `watch` of `--max-watch` 64-byte names fits).
        if d.len() > self.max_control {
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
            t if RELAY_TYPES.contains(&t) => return self.refuse(Reason::RelayMessage, req),
            _ => Err(Reason::UnknownType),
        };
        if let Err(r) = result {
            self.fail(out, r, req);
        }
    }

    /// The hot path: forwards the payload span, untouched, behind a header naming the sender.
    fn relay(&mut self, d: &[u8], h: &Header, req: &Req, out: &mut Out) {
        let (Some(source), Some(target), Some(payload)) = (h.source, h.target, h.payload) else {
            return self.fail(out, Reason::MissingField, req);
        };
        let reg = &self.shared.registry;
        let mut sbuf = [0u8; MAX_NAME];
        let source = scan::text(d, source, &mut sbuf);
        let Some(source) = source.filter(|s| reg.touch_sender(s, req.from, req.now.ms)) else {
            return self.fail(out, Reason::NotRegistered, req);
        };
        let mut tbuf = [0u8; MAX_NAME];
        let target = scan::text(d, target, &mut tbuf).and_then(|t| reg.target_of(t, req.now.ms));
        let Some((to, trusted)) = target else {
            return self.fail(out, Reason::UnknownTarget, req);
        };
        // Where registration is signed, every registration echoed a cookie where it lives: one
        // that did not can only be a name forged for someone else.
        if self.shared.settings.auth == Auth::Signed && !trusted {
            return self.refuse(Reason::UnauthenticatedTarget, req);
        }
        let start = out.buf.len();
        reply::relayed_prefix(&mut out.buf, source);
        let size = out.buf.len() - start + payload.len() + RELAYED_SUFFIX.len();
        if size > MAX_UDP_PAYLOAD {
            out.buf.truncate(start);
            return self.fail(out, Reason::TooLarge, req);
        }
        let end = out.buf.len();
        out.forward(to, start..end, payload.start..payload.end, RELAYED_SUFFIX);
        Counters::add(&self.counters.forwarded, 1);
    }

    /// Parses a control message from a scratch copy (simd-json parses in place).
    fn parse<T: for<'de> serde::Deserialize<'de>>(&mut self, d: &[u8]) -> Result<T, Reason> {
        self.scratch.clear();
        self.scratch.extend_from_slice(d);
        control::parse(&mut self.scratch)
    }

    /// The name a request speaks for, if it carries that name's session from its address: the
    /// one it names, or, when it names none, the only one at its address. Marks `req`
    /// authenticated.
    fn authenticate(
        &self,
        named: Option<&str>,
        session: Option<&str>,
        req: &mut Req,
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
        if reg.authenticate(&name, req.from, token, req.now.ms) {
            req.authed = true;
            Ok(name)
        } else if reg.session_at(&name, req.from, req.now.ms).is_none() {
            Err(Reason::NotRegistered)
        } else {
            Err(Reason::SessionRequired)
        }
    }

    /// `register` (`explicit`) or `keepalive`: both claim the name; they differ in the reply.
    fn register(
        &mut self,
        d: &[u8],
        req: &mut Req,
        out: &mut Out,
        explicit: bool,
    ) -> Result<(), Reason> {
        let r = self.parse::<control::Register>(d)?;
        if !valid_name(&r.name) {
            return Err(Reason::InvalidName);
        }
        let (from, now) = (req.from, req.now);
        let token = r.session.as_deref().and_then(Session::parse);
        let reg = &self.shared.registry;
        let held_here = reg.session_at(&r.name, from, now.ms).is_some();
        // A registration token is spent on a name new to this address (refreshes are free) and
        // on every signature to check (a challenge costs little, a signature check much more).
        let costs = match (&r.pubkey, &r.cookie) {
            (Some(_), cookie) => cookie.is_some(),
            (None, _) => !held_here,
        };
        if costs && !self.shared.budgets.register(from.ip(), now.ms) {
            return Err(Reason::RegistrationLimited);
        }
        let proof = match &r.pubkey {
            Some(key) => match self.signed(&r, key, d, req, out)? {
                Some((k, issued)) => Proof::Key(k, issued),
                None => return Ok(()),
            },
            // Where registration must be signed, an unsigned claim may only keep a name live
            // at the address that holds it.
            None if self.shared.settings.auth == Auth::Signed && !held_here => {
                return Err(Reason::AuthRequired);
            }
            None => Proof::Token(token),
        };
        let s = &self.shared.settings;
        let claim = self
            .shared
            .registry
            .claim(&r.name, from, proof, now.ms, s.max_peers);
        let session = match claim {
            Claim::Joined(s) | Claim::Refreshed(s) | Claim::Moved(s) => s,
            Claim::InUse => return Err(Reason::NameInUse),
            Claim::Full => return Err(Reason::RegistryFull),
            Claim::AddressFull => return Err(Reason::AddressFull),
        };
        // Authenticated: a refresh that showed the token sent here, or a verified signature over
        // a cookie sent here. A move is not: the new address has not shown the new token yet.
        req.authed = matches!(proof, Proof::Key(..))
            || (matches!(claim, Claim::Refreshed(_)) && token == Some(session));
        debug!(%from, name = %r.name, ?claim, explicit, "claim");
        let start = out.buf.len();
        if explicit {
            reply::register_ack(&mut out.buf, from, now.unix, &r.name, &session.to_hex());
            out.reply(from, start, Kind::Reply, req.authed);
            presence::peer_list(&self.shared, out, from, now, Kind::Reply, req.authed);
        } else {
            reply::keepalive_ack(&mut out.buf, &r.name, now.unix, &session.to_hex());
            // The ack of a keepalive that registered or moved the name carries its new session:
            // a reply. Refreshed, it is one the old peers ignore (a new peer authenticates its
            // keepalives), sent only from what its host has to spare.
            let kind = match claim {
                Claim::Refreshed(_) => Kind::Courtesy,
                _ => Kind::Reply,
            };
            out.reply(from, start, kind, req.authed);
        }
        // A `register` is announced even when it only refreshes: the old relay did, and its
        // peers may use `peer_joined` to learn that a partner restarted. Refreshes are announced
        // at most once per keepalive interval, or repeating `register` would make the relay
        // broadcast at the sender's will.
        let announce = match claim {
            Claim::Joined(_) => true,
            Claim::Refreshed(_) if explicit => {
                let every = self.shared.settings.keepalive_ms;
                self.shared
                    .registry
                    .announce_refresh(&r.name, now.ms, every)
            }
            _ => explicit,
        };
        if announce {
            presence::announce(&self.shared, out, Presence::Joined, &r.name, from, now);
        }
        Ok(())
    }

    /// The signed half of a claim: a `challenge` when the cookie is missing (then `None`), the
    /// verified key and its cookie's issue time when both check, else the refusal.
    fn signed(
        &mut self,
        r: &control::Register,
        key: &str,
        d: &[u8],
        req: &Req,
        out: &mut Out,
    ) -> Result<Option<(auth::Key, u64)>, Reason> {
        let (from, now) = (req.from, req.now);
        let secs = now.unix as u64;
        let checked = auth::key(key).and_then(|k| match (&r.cookie, &r.sig) {
            (None, _) => {
                let cookie = self.shared.cookies.issue(secs, from, &r.name, &k);
                let start = out.buf.len();
                reply::challenge(&mut out.buf, &cookie);
                // Never larger than the request (and paid from the budgets like any reply).
                if out.buf.len() - start <= d.len() {
                    out.reply(from, start, Kind::Reply, false);
                } else {
                    out.buf.truncate(start);
                }
                Ok(None)
            }
            (Some(c), Some(sig)) => {
                let cookies = &self.shared.cookies;
                let issued = cookies.check(c, secs, from, &r.name, &k)?;
                auth::verify(&k, &r.name, c, sig)?;
                Ok(Some((k, issued)))
            }
            (Some(_), None) => Err(AuthError::Malformed),
        });
        checked.map_err(|e| match e {
            AuthError::Malformed => Reason::BadRequest,
            AuthError::BadCookie | AuthError::BadSignature => Reason::BadSignature,
        })
    }

    fn ping(&mut self, d: &[u8], req: &mut Req, out: &mut Out) -> Result<(), Reason> {
        let p = self.parse::<control::Ping>(d)?;
        if let Some(name) = &p.name {
            // A ping naming a name keeps it live; with its session it is authenticated.
            if self
                .authenticate(Some(name), p.session.as_deref(), req)
                .is_err()
            {
                let reg = &self.shared.registry;
                reg.touch_sender(name, req.from, req.now.ms);
            }
        }
        let start = out.buf.len();
        reply::pong(&mut out.buf, req.now.unix, req.from);
        out.reply(req.from, start, Kind::Reply, req.authed);
        Ok(())
    }

    /// `watch` (`add`) or `unwatch`: both answered with `watch_ack`.
    fn watch(&mut self, d: &[u8], req: &mut Req, out: &mut Out, add: bool) -> Result<(), Reason> {
        let w = self.parse::<control::Watch>(d)?;
        let watcher = self.authenticate(w.name.as_deref(), w.session.as_deref(), req)?;
        let max = self.shared.settings.max_watch;
        if !w.names.iter().all(|n| valid_name(n)) {
            return Err(Reason::InvalidName);
        }
        // Work is charged, not only datagrams: a watch of N names costs N.
        let extra = w.names.len().saturating_sub(1);
        self.ingress.charge(req.from, extra, req.now.ms)?;
        let names: Vec<Name> = w.names.iter().map(|n| Name::from(n.as_str())).collect();
        let reg = &self.shared.registry;
        let (now, budget) = (req.now.ms, self.shared.settings.reply_budget);
        let start = out.buf.len();
        if add {
            let left_out = reg
                .watch(&watcher, req.from, &names, max)
                .ok_or(Reason::NotRegistered)?;
            let online = w.names.iter().filter(|n| reg.addr_of(n, now).is_some());
            reply::watch_ack(&mut out.buf, online.map(String::as_str), budget);
            out.reply(req.from, start, Kind::Reply, true);
            if left_out > 0 {
                // What fitted is acknowledged; the error says the rest did not.
                self.fail(out, Reason::WatchLimit, req);
            }
        } else {
            let left = reg.unwatch(&watcher, &names).ok_or(Reason::NotRegistered)?;
            let online = left.iter().filter(|n| reg.addr_of(n, now).is_some());
            reply::watch_ack(&mut out.buf, online.map(|n| &**n), budget);
            out.reply(req.from, start, Kind::Reply, true);
        }
        Ok(())
    }

    fn lookup(&mut self, d: &[u8], req: &Req, out: &mut Out) -> Result<(), Reason> {
        let l = self.parse::<control::Lookup>(d)?;
        if !valid_name(&l.name) {
            return Err(Reason::InvalidName);
        }
        let online = self.shared.registry.addr_of(&l.name, req.now.ms).is_some();
        let start = out.buf.len();
        reply::peer_info(&mut out.buf, &l.name, online);
        out.reply(req.from, start, Kind::Reply, req.authed);
        Ok(())
    }

    fn unregister(&mut self, d: &[u8], req: &mut Req, out: &mut Out) -> Result<(), Reason> {
        let u = self.parse::<control::Unregister>(d)?;
        let name = self.authenticate(Some(&u.name), u.session.as_deref(), req)?;
        let token = u.session.as_deref().and_then(Session::parse);
        let reg = &self.shared.registry;
        let gone = reg
            .unregister(&name, req.from, token, req.now.ms)
            .ok_or(Reason::NotRegistered)?;
        debug!(from = %req.from, name = %gone.name, "unregistered");
        presence::announce(
            &self.shared,
            out,
            Presence::Left,
            &gone.name,
            gone.addr,
            req.now,
        );
        Ok(())
    }

    fn connect(&mut self, d: &[u8], req: &mut Req, out: &mut Out) -> Result<(), Reason> {
        if !self.shared.settings.introductions {
            return Err(Reason::Disabled);
        }
        let c = self.parse::<control::Connect>(d)?;
        let me = self.authenticate(c.name.as_deref(), c.session.as_deref(), req)?;
        let reg = &self.shared.registry;
        let (peer_addr, peer_trusted) = reg
            .target_of(&c.target, req.now.ms)
            .ok_or(Reason::UnknownTarget)?;
        let start = out.buf.len();
        reply::introduce(&mut out.buf, &c.target, peer_addr);
        out.reply(req.from, start, Kind::Reply, true);
        let start = out.buf.len();
        reply::introduce(&mut out.buf, &me, req.from);
        out.reply(peer_addr, start, Kind::Announce, peer_trusted);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Settings;
    use serde_json::{Value, json};

    /// A router over fresh shared state, and a way to run datagrams through it.
    pub(crate) struct Harness {
        pub shared: Arc<Shared>,
        pub router: Router,
        pub out: Out,
    }

    pub(crate) fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 1000 + i))
    }

    pub(crate) fn at(ms: u64) -> Now {
        Now {
            ms,
            unix: 1_795_574_001.25 + ms as f64 / 1000.0,
        }
    }

    impl Harness {
        pub fn new(settings: Settings) -> Harness {
            let shared = Shared::new(settings, 1);
            Harness {
                router: Router::new(shared.clone(), 0),
                shared,
                out: Out::default(),
            }
        }

        /// Handles `d` from `from` at `ms`; returns the sends as (to, bytes).
        pub fn run(&mut self, d: &[u8], from: SocketAddr, ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
            self.out.clear();
            self.router.handle(d, from, at(ms), &mut self.out);
            collect(&self.out, d)
        }

        /// Like [`Harness::run`] with JSON parsed.
        pub fn json(&mut self, v: Value, from: SocketAddr, ms: u64) -> Vec<(SocketAddr, Value)> {
            parse(self.run(v.to_string().as_bytes(), from, ms))
        }

        pub fn refused(&self, r: Reason) -> u64 {
            self.shared.metrics.refused(r)
        }

        /// The session of `name` at `from`, as its `register_ack` gave it.
        pub fn session(&self, name: &str, from: SocketAddr) -> String {
            self.shared
                .registry
                .session_at(name, from, 0)
                .expect("registered")
                .to_hex()
        }
    }

    pub(crate) fn collect(out: &Out, input: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        out.sends
            .iter()
            .map(|s| (s.to, out.segments(s, input).concat()))
            .collect()
    }

    pub(crate) fn parse(sends: Vec<(SocketAddr, Vec<u8>)>) -> Vec<(SocketAddr, Value)> {
        sends
            .into_iter()
            .map(|(to, b)| (to, serde_json::from_slice(&b).expect("valid JSON")))
            .collect()
    }

    fn register(
        h: &mut Harness,
        name: &str,
        from: SocketAddr,
        ms: u64,
    ) -> Vec<(SocketAddr, Value)> {
        h.json(json!({"type": "register", "name": name}), from, ms)
    }

    #[test]
    fn register_acks_lists_and_announces() {
        let mut h = Harness::new(Settings::default());
        let r = register(&mut h, "Bob", addr(2), 0);
        assert_eq!(r.len(), 2);
        let r = register(&mut h, "Alice", addr(1), 5);
        assert_eq!(r[0].0, addr(1));
        assert_eq!(r[0].1["type"], "register_ack");
        assert_eq!(r[0].1["your_address"], "10.0.0.1:1001");
        assert_eq!(r[0].1["peer_name"], "Alice");
        assert_eq!(
            r[1].1,
            json!({"type": "peer_list", "peers": ["Bob", "Alice"], "count": 2})
        );
        assert_eq!(r[2].0, addr(2));
        assert_eq!(
            r[2].1,
            json!({"type": "peer_joined", "peer_name": "Alice", "peers": ["Bob", "Alice"]})
        );
        // Registering again from the same address refreshes, and is announced all the same.
        let r = register(&mut h, "Alice", addr(1), 10);
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].0, addr(2));
        assert_eq!(r[2].1["type"], "peer_joined");
    }

    #[test]
    fn relay_forwards_the_payload_span_byte_for_byte() {
        let mut h = Harness::new(Settings::default());
        register(&mut h, "A", addr(1), 0);
        register(&mut h, "B", addr(2), 0);
        let d = br#"{ "payload" : "{\"k\": \"caf\u00e9\"}" , "source":"A","target":"B","type":"relay"}"#;
        let r = h.run(d, addr(1), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, addr(2));
        assert_eq!(
            r[0].1,
            br#"{"type":"relayed_packet","from_peer":"A","via_relay":true,"payload":"{\"k\": \"caf\u00e9\"}"}"#
        );
    }

    #[test]
    fn relay_believes_the_registry_not_the_source_field() {
        let mut h = Harness::new(Settings::default());
        register(&mut h, "A", addr(1), 0);
        register(&mut h, "B", addr(2), 0);
        let spoof =
            json!({"type": "relay", "source": "A", "target": "B", "payload": "x".repeat(80)});
        let r = h.json(spoof.clone(), addr(3), 1);
        assert!(r.is_empty(), "unregistered address gets nothing");
        let r = h.json(spoof, addr(2), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, addr(2));
        assert_eq!(r[0].1["code"], "not_registered");
        assert_eq!(h.refused(Reason::NotRegistered), 2);
    }

    #[test]
    fn relay_to_unknown_or_stale_target_is_refused() {
        let s = Settings {
            peer_timeout_ms: 1000,
            keepalive_ms: 100,
            ..Settings::default()
        };
        let mut h = Harness::new(s);
        register(&mut h, "A", addr(1), 0);
        register(&mut h, "B", addr(2), 0);
        let msg = json!({"type": "relay", "source": "A", "target": "B", "payload": "x".repeat(60)});
        // A keeps itself live by relaying; B falls silent.
        assert_eq!(h.json(msg.clone(), addr(1), 900)[0].0, addr(2));
        let r = h.json(msg, addr(1), 1500);
        assert_eq!(r[0].0, addr(1));
        assert_eq!(r[0].1["code"], "unknown_target");
    }

    #[test]
    fn keepalive_registers_moves_only_with_session() {
        let mut h = Harness::new(Settings::default());
        let r = h.json(json!({"type": "keepalive", "name": "A"}), addr(1), 0);
        assert_eq!(r[0].1["type"], "keepalive_ack");
        assert!(h.shared.registry.addr_of("A", 0).is_some());
        let r = h.json(json!({"type": "keepalive", "name": "A"}), addr(2), 1);
        assert!(r.is_empty(), "unregistered address: no error reply");
        assert_eq!(h.refused(Reason::NameInUse), 1);
        let session = h
            .shared
            .registry
            .session_at("A", addr(1), 1)
            .unwrap()
            .to_hex();
        let r = h.json(
            json!({"type": "keepalive", "name": "A", "session": session}),
            addr(2),
            2,
        );
        assert_eq!(r[0].1["type"], "keepalive_ack");
        assert_eq!(h.shared.registry.addr_of("A", 2), Some(addr(2)));
    }

    #[test]
    fn unauthenticated_errors_are_paid_from_the_budgets() {
        let s = Settings {
            reply_credit: 80,
            reply_prefix_credit: 4096,
            reply_global_credit: 1 << 20,
            ..Settings::default()
        };
        let mut h = Harness::new(s);
        let reg = &h.shared.registry;
        reg.claim("A", addr(1), Proof::Token(None), 0, 10);
        // 10 bytes sent and 80 of credit pay a 73-byte error, in full.
        let r = h.run(b"{\"type\":1}", addr(1), 1);
        let v: Value = serde_json::from_slice(&r[0].1).unwrap();
        assert_eq!(v["message"], "field of the wrong type");
        // 17 left and 10 more earned: not even the 50-byte short form fits.
        assert!(h.run(b"{\"type\":1}", addr(1), 1).is_empty());
        // A longer request pays for a longer answer.
        let padded = format!(r#"{{"type":1,"pad":"{}"}}"#, "x".repeat(20));
        let r = h.run(padded.as_bytes(), addr(1), 1);
        let v: Value = serde_json::from_slice(&r[0].1).unwrap();
        assert_eq!(v["code"], "bad_request");
        assert_eq!(v["message"], "");
        assert_eq!(h.refused(Reason::WrongType), 3);
    }

    #[test]
    fn beyond_announce_max_only_watchers_hear() {
        let s = Settings {
            announce_max: 2,
            ..Settings::default()
        };
        let mut h = Harness::new(s);
        register(&mut h, "A", addr(1), 0);
        register(&mut h, "B", addr(2), 0);
        let w = json!({"type": "watch", "names": ["D", "B"]});
        let r = h.json(w.clone(), addr(1), 0);
        assert_eq!(r[0].1["code"], "session_required");
        let mut w = w;
        w["session"] = h.session("A", addr(1)).into();
        let r = h.json(w, addr(1), 0);
        assert_eq!(r[0].1, json!({"type": "watch_ack", "online": ["B"]}));
        let r = register(&mut h, "C", addr(3), 0);
        assert_eq!(r.len(), 2, "nobody watches C");
        let r = register(&mut h, "D", addr(4), 0);
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].0, addr(1));
        assert_eq!(r[2].1["type"], "peer_joined");
        assert_eq!(r[2].1["peer_name"], "D");
        let session = h.session("D", addr(4));
        let r = h.json(
            json!({"type": "unregister", "name": "D", "session": session}),
            addr(4),
            1,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1["type"], "peer_left");
    }

    #[test]
    fn connect_introduces_both_sides() {
        let mut h = Harness::new(Settings::default());
        register(&mut h, "A", addr(1), 0);
        register(&mut h, "B", addr(2), 0);
        let r = h.json(json!({"type": "connect", "target": "B"}), addr(1), 1);
        assert_eq!(r[0].1["code"], "session_required");
        let session = h.session("A", addr(1));
        let r = h.json(
            json!({"type": "connect", "target": "B", "session": session}),
            addr(1),
            1,
        );
        assert_eq!(
            r,
            vec![
                (
                    addr(1),
                    json!({"type": "introduce", "peer_name": "B", "address": "10.0.0.1:1002"})
                ),
                (
                    addr(2),
                    json!({"type": "introduce", "peer_name": "A", "address": "10.0.0.1:1001"})
                ),
            ]
        );
    }

    #[test]
    fn families_other_than_json_are_counted() {
        let mut h = Harness::new(Settings::default());
        assert!(h.run(b"", addr(1), 0).is_empty());
        assert!(h.run(&[0xD1, 0, 0, 0, 0, 1, 9], addr(1), 0).is_empty());
        assert_eq!(h.refused(Reason::UnknownFamily), 1);
        assert_eq!(h.refused(Reason::Unsupported), 1);
    }
}
