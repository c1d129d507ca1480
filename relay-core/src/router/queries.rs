//! Queries and requests about others: `ping`, `watch`/`unwatch`, `lookup`, `unregister` and
//! `connect`.

use tracing::debug;

use crate::budget::ANSWER_FACTOR;
use crate::introductions::OFFLINE;
use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::refusal::Reason;
use crate::registry::{Name, Session};
use crate::wire::reply;
use crate::wire::{control, valid_name};

use super::{Req, Router};

impl Router {
    pub(super) fn ping(&mut self, d: &[u8], req: &mut Req, out: &mut Out) -> Result<(), Reason> {
        let p = self.parse::<control::Ping>(d)?;
        if let Some(name) = &p.name {
            // A ping naming a name keeps it live; with its session it is authenticated.
            if self
                .authenticate(Some(name), p.session.as_deref(), req, out)
                .is_err()
            {
                let reg = &self.shared.registry;
                reg.touch_sender(name, req.from, req.now.ms);
            }
        }
        let start = out.buf.len();
        reply::pong(&mut out.buf, req.now.unix, req.from);
        let most = req.len.saturating_mul(ANSWER_FACTOR);
        self.answer(req, out, start, |buf| {
            let at = buf.len();
            reply::pong_short(buf, Some(req.from));
            if buf.len() - at > most {
                buf.truncate(at);
                reply::pong_short(buf, None);
            }
        });
        Ok(())
    }

    /// `watch` (`add`) or `unwatch`: both answered with `watch_ack`.
    pub(super) fn watch(
        &mut self,
        d: &[u8],
        req: &mut Req,
        out: &mut Out,
        add: bool,
    ) -> Result<(), Reason> {
        let w = self.parse::<control::Watch>(d)?;
        let watcher = self.authenticate(w.name.as_deref(), w.session.as_deref(), req, out)?;
        let max = self.shared.registry.max_watch();
        if !w.names.iter().all(|n| valid_name(n)) {
            return Err(Reason::InvalidName);
        }
        // Work is charged, not only datagrams: a watch of N names costs N.
        let extra = w.names.len().saturating_sub(1);
        self.admission.ingress.charge(req.from, extra, req.now.ms)?;
        let names: Vec<Name> = w.names.iter().map(|n| Name::from(n.as_str())).collect();
        let reg = &self.shared.registry;
        let (now, budget) = (req.now.ms, self.shared.lists.reply_budget());
        let start = out.buf.len();
        if add {
            // The registry looks at no more than `max` names, and only those are answered.
            let asked = &w.names[..w.names.len().min(max)];
            let (ip, misses) = (req.from.ip(), &self.shared.misses);
            if !misses.reserve(ip, true, asked.len(), now) {
                return Err(Reason::MissLimited);
            }
            let online: Vec<&str> = asked
                .iter()
                .filter(|n| self.online(n, now))
                .map(String::as_str)
                .collect();
            misses.hits(ip, true, asked.len(), online.len());
            let left_out = reg
                .watch(&watcher, req.from, &names, max)
                .ok_or(Reason::NotRegistered)?;
            reply::watch_ack(&mut out.buf, online, budget);
            out.reply(req.from, start, Kind::Reply, true);
            if left_out > 0 {
                // What fitted is acknowledged; the error says the rest did not.
                self.fail(out, Reason::WatchLimit, req);
            }
        } else {
            let left = reg.unwatch(&watcher, &names).ok_or(Reason::NotRegistered)?;
            let online = left.iter().filter(|n| self.online(n, now));
            reply::watch_ack(&mut out.buf, online.map(|n| &**n), budget);
            out.reply(req.from, start, Kind::Reply, true);
        }
        Ok(())
    }

    /// Whether `name` is live here, or homed at another relay of the cluster.
    fn online(&self, name: &str, now_ms: u64) -> bool {
        self.shared.registry.addr_of(name, now_ms).is_some()
            || self
                .shared
                .cluster
                .get()
                .is_some_and(|c| c.remote.home_of(name).is_some())
    }

    pub(super) fn lookup(&mut self, d: &[u8], req: &Req, out: &mut Out) -> Result<(), Reason> {
        let l = self.parse::<control::Lookup>(d)?;
        if !valid_name(&l.name) {
            return Err(Reason::InvalidName);
        }
        let (ip, misses) = (req.from.ip(), &self.shared.misses);
        if !misses.reserve(ip, req.authed, 1, req.now.ms) {
            return Err(Reason::MissLimited);
        }
        let online = self.online(&l.name, req.now.ms);
        misses.hits(ip, req.authed, 1, usize::from(online));
        // A miss, already paid: the directory is asked, for the next lookup, whether the name
        // is homed at another relay this one has not heard of.
        if let Some(c) = self.shared.cluster.get().filter(|_| !online) {
            c.lookup(&l.name);
        }
        let start = out.buf.len();
        reply::peer_info(&mut out.buf, &l.name, online);
        out.reply(req.from, start, Kind::Reply, req.authed);
        Ok(())
    }

    pub(super) fn unregister(
        &mut self,
        d: &[u8],
        req: &mut Req,
        out: &mut Out,
    ) -> Result<(), Reason> {
        let u = self.parse::<control::Unregister>(d)?;
        let name = self.authenticate(Some(&u.name), u.session.as_deref(), req, out)?;
        let token = u.session.as_deref().and_then(Session::parse);
        let reg = &self.shared.registry;
        let gone = reg
            .unregister(&name, req.from, token, req.now.ms)
            .ok_or(Reason::NotRegistered)?;
        debug!(from = %req.from, name = %gone.name, "unregistered");
        Counters::add(&self.counters.unregistered, 1);
        self.gone(&gone, req.now, out);
        Ok(())
    }

    /// `connect`: records that the sender asks for its target, and introduces the two if the
    /// target asked for the sender too (see [`crate::introductions`]); until then the target
    /// is told that the sender asks. The sender hears nothing but an introduction, so that
    /// whether the target exists, is online or has been told is not answered.
    pub(super) fn connect(&mut self, d: &[u8], req: &mut Req, out: &mut Out) -> Result<(), Reason> {
        if self.shared.settings.no_introductions {
            return Err(Reason::Disabled);
        }
        let c = self.parse::<control::Connect>(d)?;
        let me = self.authenticate(c.name.as_deref(), c.session.as_deref(), req, out)?;
        if !valid_name(&c.target) {
            return Err(Reason::InvalidName);
        }
        let (reg, now) = (&self.shared.registry, req.now.ms);
        let (_, _, my_seq) = reg.registration_of(&me, now).ok_or(Reason::NotRegistered)?;
        let pending = &self.shared.introductions;
        let peer = reg.registration_of(&c.target, now);
        // Homed at another relay of the cluster: asked there.
        let cluster = self.shared.cluster.get();
        if peer.is_none() && cluster.is_some_and(|cl| cl.remote.home_of(&c.target).is_some()) {
            return self.connect_remote(&me, my_seq, &c.target, req, out);
        }
        let peer_seq = peer.map_or(OFFLINE, |(_, _, seq)| seq);
        if !pending.ask(&me, my_seq, &c.target, peer_seq, now) {
            return Err(Reason::ConnectLimited);
        }
        let Some((peer_addr, peer_trusted, peer_seq)) = peer else {
            return Ok(());
        };
        let start = out.buf.len();
        if pending.asked(&c.target, peer_seq, &me, my_seq, now) {
            reply::introduce(&mut out.buf, &c.target, peer_addr);
            out.reply(req.from, start, Kind::Reply, true);
            let start = out.buf.len();
            reply::introduce(&mut out.buf, &me, req.from);
            out.reply(peer_addr, start, Kind::Announce, peer_trusted);
        } else {
            reply::connect_request(&mut out.buf, &me);
            out.reply(peer_addr, start, Kind::Announce, peer_trusted);
        }
        Ok(())
    }
}
