//! The routing decision: for one datagram, its source and the time, what to send or why to drop.
//!
//! Sans-IO: it reads bytes and the registry and appends sends to an [`Out`]; the I/O shells do
//! the sending. Every protocol rule lives here or in [`crate::presence`].

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::debug;

use crate::amplification::Guard;
use crate::auth::{self, AuthError, Cookies};
use crate::clock::Now;
use crate::config::Auth;
use crate::config::{MAX_UDP_PAYLOAD, Settings};
use crate::metrics::{Counters, Metrics, Reason};
use crate::out::Out;
use crate::presence;
use crate::ratelimit::{Ingress, SourceLimiter};
use crate::registry::{Claim, Name, Proof, Registry, Session};
use crate::wire::reply::{self, ErrorCode, Presence, RELAYED_SUFFIX};
use crate::wire::scan::{self, Header, ScanError};
use crate::wire::{Family, MAX_NAME, classify, control, valid_name};

/// State shared by every worker and the reaper.
pub struct Shared {
    /// The peer registry.
    pub registry: Registry,
    /// The protocol settings.
    pub settings: Settings,
    /// The counters.
    pub metrics: Metrics,
    /// The live peers listed while the registry is beyond `announce_max`.
    pub sample: presence::Sample,
    /// How many workers share the relay-wide limits.
    pub workers: usize,
    /// The key of registration cookies, shared by all workers.
    pub cookies: Cookies,
}

impl Shared {
    /// Shared state for `workers` workers.
    pub fn new(settings: Settings, workers: usize) -> Arc<Shared> {
        Arc::new(Shared {
            registry: Registry::new(settings.peer_timeout_ms),
            metrics: Metrics::new(workers),
            sample: presence::Sample::default(),
            workers,
            cookies: Cookies::default(),
            settings,
        })
    }
}

/// Who may be sent an error reply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Only an address that holds a registration.
    Registered,
    /// Whoever asked (a `register`).
    Requester,
}

/// One worker's router.
pub struct Router {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    errors: SourceLimiter,
    ingress: Ingress,
    guard: Guard,
    scratch: Vec<u8>,
}

impl Router {
    /// A router for worker `worker`.
    pub fn new(shared: Arc<Shared>, worker: usize) -> Router {
        let rate = shared.settings.error_rate as f32;
        Router {
            counters: shared.metrics.block(worker),
            errors: SourceLimiter::new(rate, 2.0 * rate),
            ingress: Ingress::new(&shared.settings, shared.workers),
            guard: Guard::new(
                shared.settings.unproven_credit,
                shared.settings.unproven_prefix_credit,
            ),
            shared,
            scratch: Vec::new(),
        }
    }

    /// Decides what to do with datagram `d` from `from`, appending sends to `out`.
    pub fn handle(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        let start = out.sends.len();
        self.decide(d, from, now, out);
        self.guard
            .filter(&self.shared.registry, out, start, now.ms, &self.counters);
    }

    fn decide(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        Counters::add(&self.counters.received, 1);
        Counters::add(&self.counters.received_bytes, d.len() as u64);
        // Admission comes before any parsing, so a flood costs a hash and a few additions.
        if let Err(r) = self.ingress.admit(from, d.len(), now.ms) {
            let msg = "slow down";
            let who = Answer::Registered;
            return self.fail(out, r, from, now, ErrorCode::RateLimited, msg, d.len(), who);
        }
        if d.len() > self.shared.settings.max_datagram {
            return self.too_large(d.len(), from, now, out);
        }
        match classify(d) {
            Family::Json => self.json(d, from, now, out),
            Family::Stun | Family::Channel => self.refuse(Reason::Unsupported, from, d.len(), now),
            Family::Unknown => self.refuse(Reason::UnknownFamily, from, d.len(), now),
        }
    }

    /// A datagram that did not fit the receive buffer: `len` bytes were received of it.
    pub fn truncated(&mut self, len: usize, from: SocketAddr, now: Now, out: &mut Out) {
        Counters::add(&self.counters.received, 1);
        Counters::add(&self.counters.received_bytes, len as u64);
        let start = out.sends.len();
        self.too_large(len, from, now, out);
        self.guard
            .filter(&self.shared.registry, out, start, now.ms, &self.counters);
    }

    fn too_large(&mut self, len: usize, from: SocketAddr, now: Now, out: &mut Out) {
        self.refuse(Reason::TooLarge, from, len, now);
        self.error(
            out,
            from,
            now,
            ErrorCode::TooLarge,
            "datagram too large",
            len,
            Answer::Registered,
        );
    }

    fn refuse(&self, r: Reason, from: SocketAddr, len: usize, now: Now) {
        self.counters.refuse(r);
        debug!(%from, len, reason = r.as_str(), "refused");
        // A refused datagram still shows that whoever sent it is there (spec: liveness counts
        // any datagram).
        self.shared.registry.touch_addr(from, now.ms);
    }

    /// Refuses and answers with an error where the protocol allows it.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        out: &mut Out,
        r: Reason,
        from: SocketAddr,
        now: Now,
        code: ErrorCode,
        message: &str,
        request_len: usize,
        who: Answer,
    ) {
        self.refuse(r, from, request_len, now);
        self.error(out, from, now, code, message, request_len, who);
    }

    #[allow(clippy::too_many_arguments)]
    fn error(
        &mut self,
        out: &mut Out,
        to: SocketAddr,
        now: Now,
        code: ErrorCode,
        message: &str,
        request_len: usize,
        who: Answer,
    ) {
        if who == Answer::Registered && !self.shared.registry.has_addr(to) {
            return;
        }
        if !self.errors.allow(to.ip(), now.ms) {
            Counters::add(&self.counters.errors_suppressed, 1);
            return;
        }
        let start = out.buf.len();
        if reply::error(&mut out.buf, code, message, request_len) {
            out.reply(to, start);
        }
    }

    fn json(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        if std::str::from_utf8(d).is_err() {
            let msg = "datagram is not UTF-8";
            return self.fail(
                out,
                Reason::NotUtf8,
                from,
                now,
                ErrorCode::BadRequest,
                msg,
                d.len(),
                Answer::Registered,
            );
        }
        let h = match scan::scan(d) {
            Ok(h) => h,
            Err(e) => {
                let (r, msg) = match e {
                    ScanError::Syntax => (Reason::Syntax, "malformed JSON"),
                    ScanError::TooDeep => (Reason::TooDeep, "nested too deeply"),
                    ScanError::Duplicate => (Reason::Duplicate, "duplicate field"),
                    ScanError::WrongType => (Reason::WrongType, "field of the wrong type"),
                    ScanError::MissingType => (Reason::MissingField, "missing type"),
                };
                return self.fail(
                    out,
                    r,
                    from,
                    now,
                    ErrorCode::BadRequest,
                    msg,
                    d.len(),
                    Answer::Registered,
                );
            }
        };
        let mut tmp = [0u8; 16];
        let ty = scan::text(d, h.ty, &mut tmp).unwrap_or("");
        if ty == "relay" {
            return self.relay(d, &h, from, now, out);
        }
        match ty {
            "register" => return self.register(d, from, now, out, true),
            "keepalive" => return self.register(d, from, now, out, false),
            _ => {}
        }
        // Any datagram from a registered peer shows that it is still there.
        self.shared.registry.touch_addr(from, now.ms);
        match ty {
            "ping" => self.ping(d, from, now, out),
            "watch" => self.watch(d, from, now, out),
            "lookup" => self.lookup(d, from, now, out),
            "unregister" => self.unregister(d, from, now, out),
            "connect" => self.connect(d, from, now, out),
            _ => self.fail(
                out,
                Reason::UnknownType,
                from,
                now,
                ErrorCode::BadRequest,
                "unknown type",
                d.len(),
                Answer::Registered,
            ),
        }
    }

    /// The hot path: forwards the payload span, untouched, behind a header naming the sender.
    fn relay(&mut self, d: &[u8], h: &Header, from: SocketAddr, now: Now, out: &mut Out) {
        let (Some(source), Some(target), Some(payload)) = (h.source, h.target, h.payload) else {
            let msg = "relay needs target, source and payload";
            return self.fail(
                out,
                Reason::MissingField,
                from,
                now,
                ErrorCode::BadRequest,
                msg,
                d.len(),
                Answer::Registered,
            );
        };
        let reg = &self.shared.registry;
        let mut sbuf = [0u8; MAX_NAME];
        let source = scan::text(d, source, &mut sbuf);
        let Some(source) = source.filter(|s| reg.touch_sender(s, from, now.ms)) else {
            let msg = "source is not registered at this address";
            return self.fail(
                out,
                Reason::NotRegistered,
                from,
                now,
                ErrorCode::NotRegistered,
                msg,
                d.len(),
                Answer::Registered,
            );
        };
        let mut tbuf = [0u8; MAX_NAME];
        let Some(to) = scan::text(d, target, &mut tbuf).and_then(|t| reg.addr_of(t, now.ms)) else {
            return self.fail(
                out,
                Reason::UnknownTarget,
                from,
                now,
                ErrorCode::UnknownTarget,
                "target is not online",
                d.len(),
                Answer::Registered,
            );
        };
        // Where registration is signed, every peer has proven it receives: an unproven target
        // can only be a name forged for someone else.
        if self.shared.settings.auth == Auth::Signed && !reg.proven(to) {
            return self.refuse(Reason::UnprovenTarget, from, d.len(), now);
        }
        let start = out.buf.len();
        reply::relayed_prefix(&mut out.buf, source);
        let size = out.buf.len() - start + payload.len() + RELAYED_SUFFIX.len();
        if size > MAX_UDP_PAYLOAD {
            out.buf.truncate(start);
            return self.fail(
                out,
                Reason::TooLarge,
                from,
                now,
                ErrorCode::TooLarge,
                "relayed packet would be too large",
                d.len(),
                Answer::Registered,
            );
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

    #[allow(clippy::too_many_arguments)]
    fn bad_request(
        &mut self,
        r: Reason,
        d: &[u8],
        from: SocketAddr,
        now: Now,
        out: &mut Out,
        who: Answer,
    ) {
        let msg = "missing, repeated or mistyped field";
        self.fail(out, r, from, now, ErrorCode::BadRequest, msg, d.len(), who);
    }

    /// `register` (`explicit`) or `keepalive`: both claim the name; they differ in the reply.
    fn register(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out, explicit: bool) {
        let who = if explicit {
            Answer::Requester
        } else {
            Answer::Registered
        };
        let r = match self.parse::<control::Register>(d) {
            Ok(v) => v,
            Err(e) => return self.bad_request(e, d, from, now, out, who),
        };
        if !valid_name(&r.name) {
            let msg = "names are 1-64 bytes of UTF-8 without control characters";
            return self.fail(
                out,
                Reason::InvalidName,
                from,
                now,
                ErrorCode::InvalidName,
                msg,
                d.len(),
                who,
            );
        }
        let token = r.session.as_deref().and_then(Session::parse);
        let reg = &self.shared.registry;
        let held_here = reg.session_at(&r.name, from, now.ms).is_some();
        // A registration token is spent on a name new to this address (refreshes are free) and
        // on every signature to check (a challenge costs little, a signature check much more).
        let costs = match (&r.pubkey, &r.cookie) {
            (Some(_), cookie) => cookie.is_some(),
            (None, _) => !held_here,
        };
        if costs && !self.ingress.register(from.ip(), now.ms) {
            let msg = "registering new names too fast";
            return self.fail(
                out,
                Reason::RegistrationLimited,
                from,
                now,
                ErrorCode::RateLimited,
                msg,
                d.len(),
                who,
            );
        }
        let proof = match &r.pubkey {
            Some(key) => match self.signed(&r, key, d, from, now, out) {
                Some((k, issued)) => Proof::Key(k, issued),
                None => return,
            },
            // Where registration must be signed, an unsigned claim may only keep a name live
            // at the address that holds it.
            None if self.shared.settings.auth == Auth::Signed && !held_here => {
                let msg = "this relay requires signed registration";
                return self.fail(
                    out,
                    Reason::AuthRequired,
                    from,
                    now,
                    ErrorCode::AuthRequired,
                    msg,
                    d.len(),
                    who,
                );
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
            Claim::InUse => {
                let msg = "name is live at another address";
                return self.fail(
                    out,
                    Reason::NameInUse,
                    from,
                    now,
                    ErrorCode::NameInUse,
                    msg,
                    d.len(),
                    who,
                );
            }
            Claim::Full => {
                let msg = "relay is full";
                return self.fail(
                    out,
                    Reason::RegistryFull,
                    from,
                    now,
                    ErrorCode::RateLimited,
                    msg,
                    d.len(),
                    who,
                );
            }
        };
        debug!(%from, name = %r.name, ?claim, explicit, "claim");
        // The other names at this address are live too: any datagram proves the peer is there.
        self.shared.registry.touch_addr(from, now.ms);
        let start = out.buf.len();
        if explicit {
            reply::register_ack(&mut out.buf, from, now.unix, &r.name, &session.to_hex());
            out.reply(from, start);
            presence::peer_list(&self.shared, out, from, now);
        } else {
            reply::keepalive_ack(&mut out.buf, &r.name, now.unix, &session.to_hex());
            out.reply(from, start);
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
            presence::announce(&self.shared, out, Presence::Joined, &r.name, now);
        }
    }

    /// The signed half of a claim: a `challenge` when the cookie is missing (then `None`), the
    /// verified key and its cookie's issue time when both check, else an error and `None`.
    #[allow(clippy::too_many_arguments)]
    fn signed(
        &mut self,
        r: &control::Register,
        key: &str,
        d: &[u8],
        from: SocketAddr,
        now: Now,
        out: &mut Out,
    ) -> Option<(auth::Key, u64)> {
        let secs = now.unix as u64;
        let checked = auth::key(key).and_then(|k| match (&r.cookie, &r.sig) {
            (None, _) => {
                let cookie = self.shared.cookies.issue(secs, from, &r.name, &k);
                let start = out.buf.len();
                reply::challenge(&mut out.buf, &cookie);
                // Never larger than the request: no amplification by challenges.
                if out.buf.len() - start <= d.len() {
                    out.reply(from, start);
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
        match checked {
            Ok(k) => k,
            Err(AuthError::Malformed) => {
                self.bad_request(Reason::BadRequest, d, from, now, out, Answer::Requester);
                None
            }
            Err(AuthError::BadCookie | AuthError::BadSignature) => {
                let msg = "cookie or signature does not check";
                self.fail(
                    out,
                    Reason::BadSignature,
                    from,
                    now,
                    ErrorCode::BadSignature,
                    msg,
                    d.len(),
                    Answer::Requester,
                );
                None
            }
        }
    }

    fn ping(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        if let Err(e) = self.parse::<control::Ping>(d) {
            return self.bad_request(e, d, from, now, out, Answer::Registered);
        }
        let start = out.buf.len();
        reply::pong(&mut out.buf, now.unix, from);
        out.reply(from, start);
    }

    /// Which registered name at `from` speaks: the one it names, or its oldest.
    fn speaker(&self, named: Option<&str>, from: SocketAddr, now: Now) -> Option<Name> {
        let reg = &self.shared.registry;
        match named {
            Some(n) => reg.session_at(n, from, now.ms).map(|_| Name::from(n)),
            None => reg.first_name_at(from),
        }
    }

    fn watch(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        let w = match self.parse::<control::Watch>(d) {
            Ok(v) => v,
            Err(e) => return self.bad_request(e, d, from, now, out, Answer::Registered),
        };
        let Some(watcher) = self.speaker(w.name.as_deref(), from, now) else {
            return self.fail(
                out,
                Reason::NotRegistered,
                from,
                now,
                ErrorCode::NotRegistered,
                "register before watching",
                d.len(),
                Answer::Registered,
            );
        };
        if !w.names.iter().all(|n| valid_name(n)) {
            return self.fail(
                out,
                Reason::InvalidName,
                from,
                now,
                ErrorCode::InvalidName,
                "invalid name in names",
                d.len(),
                Answer::Registered,
            );
        }
        let names: Vec<Name> = w.names.iter().map(|n| Name::from(n.as_str())).collect();
        let max = self.shared.settings.max_watch;
        let Some(left_out) = self.shared.registry.watch(&watcher, &names, max) else {
            return self.fail(
                out,
                Reason::NotRegistered,
                from,
                now,
                ErrorCode::NotRegistered,
                "register before watching",
                d.len(),
                Answer::Registered,
            );
        };
        if left_out > 0 {
            // Still acknowledge what was taken; the error says the rest was not.
            self.fail(
                out,
                Reason::WatchLimit,
                from,
                now,
                ErrorCode::RateLimited,
                "watch limit reached",
                d.len(),
                Answer::Registered,
            );
        }
        let reg = &self.shared.registry;
        let online: Vec<&str> = w
            .names
            .iter()
            .filter(|n| reg.addr_of(n, now.ms).is_some())
            .map(String::as_str)
            .collect();
        let start = out.buf.len();
        reply::watch_ack(&mut out.buf, online, self.shared.settings.reply_budget);
        out.reply(from, start);
    }

    fn lookup(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        let l = match self.parse::<control::Lookup>(d) {
            Ok(v) => v,
            Err(e) => return self.bad_request(e, d, from, now, out, Answer::Registered),
        };
        if !valid_name(&l.name) {
            return self.fail(
                out,
                Reason::InvalidName,
                from,
                now,
                ErrorCode::InvalidName,
                "invalid name",
                d.len(),
                Answer::Registered,
            );
        }
        let online = self.shared.registry.addr_of(&l.name, now.ms).is_some();
        let start = out.buf.len();
        reply::peer_info(&mut out.buf, &l.name, online);
        out.reply(from, start);
    }

    fn unregister(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        let u = match self.parse::<control::Unregister>(d) {
            Ok(v) => v,
            Err(e) => return self.bad_request(e, d, from, now, out, Answer::Registered),
        };
        let token = u.session.as_deref().and_then(Session::parse);
        let Some(gone) = self
            .shared
            .registry
            .unregister(&u.name, from, token, now.ms)
        else {
            return self.fail(
                out,
                Reason::NotRegistered,
                from,
                now,
                ErrorCode::NotRegistered,
                "name is not registered at this address",
                d.len(),
                Answer::Registered,
            );
        };
        debug!(%from, name = %gone.name, "unregistered");
        presence::announce(&self.shared, out, Presence::Left, &gone.name, now);
    }

    fn connect(&mut self, d: &[u8], from: SocketAddr, now: Now, out: &mut Out) {
        if !self.shared.settings.introductions {
            return self.fail(
                out,
                Reason::Disabled,
                from,
                now,
                ErrorCode::BadRequest,
                "introductions are disabled",
                d.len(),
                Answer::Registered,
            );
        }
        let c = match self.parse::<control::Connect>(d) {
            Ok(v) => v,
            Err(e) => return self.bad_request(e, d, from, now, out, Answer::Registered),
        };
        let Some(me) = self.speaker(c.name.as_deref(), from, now) else {
            return self.fail(
                out,
                Reason::NotRegistered,
                from,
                now,
                ErrorCode::NotRegistered,
                "register before connecting",
                d.len(),
                Answer::Registered,
            );
        };
        let Some(peer_addr) = self.shared.registry.addr_of(&c.target, now.ms) else {
            return self.fail(
                out,
                Reason::UnknownTarget,
                from,
                now,
                ErrorCode::UnknownTarget,
                "target is not online",
                d.len(),
                Answer::Registered,
            );
        };
        let start = out.buf.len();
        reply::introduce(&mut out.buf, &c.target, peer_addr);
        out.reply(from, start);
        let start = out.buf.len();
        reply::introduce(&mut out.buf, &me, from);
        out.reply(peer_addr, start);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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
    fn error_replies_never_exceed_the_request() {
        let mut h = Harness::new(Settings::default());
        register(&mut h, "A", addr(1), 0);
        assert!(h.run(b"{\"type\":1}", addr(1), 1).is_empty());
        let padded = format!(r#"{{"type":1,"pad":"{}"}}"#, "x".repeat(60));
        let r = h.run(padded.as_bytes(), addr(1), 1);
        assert_eq!(r.len(), 1);
        assert!(r[0].1.len() <= padded.len());
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
        let r = h.json(json!({"type": "watch", "names": ["D", "B"]}), addr(1), 0);
        assert_eq!(r[0].1, json!({"type": "watch_ack", "online": ["B"]}));
        let r = register(&mut h, "C", addr(3), 0);
        assert_eq!(r.len(), 2, "nobody watches C");
        let r = register(&mut h, "D", addr(4), 0);
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].0, addr(1));
        assert_eq!(r[2].1["type"], "peer_joined");
        assert_eq!(r[2].1["peer_name"], "D");
        let r = h.json(json!({"type": "unregister", "name": "D"}), addr(4), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1["type"], "peer_left");
    }

    #[test]
    fn connect_introduces_both_sides() {
        let mut h = Harness::new(Settings::default());
        register(&mut h, "A", addr(1), 0);
        register(&mut h, "B", addr(2), 0);
        let r = h.json(json!({"type": "connect", "target": "B"}), addr(1), 1);
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
