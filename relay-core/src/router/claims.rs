//! Claims: `register` and `keepalive` (a name at an address, with its session or signature),
//! and the signed half of a claim (Part 5).

use tracing::debug;

use crate::auth::{self, AuthError};
use crate::cluster::Pending;
use crate::events;
use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::presence;
use crate::refusal::Reason;
use crate::registry::{Claim, Event, Proof, Session};
use crate::settings::Auth;
use crate::wire::reply::{self, Presence};
use crate::wire::{control, valid_name};

use super::{Req, Router};

/// Most displacements one newcomer tries before it is refused `registry_full`.
const DISPLACE_TRIES: usize = 3;

impl Router {
    /// `register` (`explicit`) or `keepalive`: both claim the name; they differ in the reply.
    pub(super) fn register(
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
        let proven_before = reg.proven_at(&r.name, from);
        // A name new to this address costs a registration token of the address (refreshes are
        // free); a signature costs a check of its own, once its cookie has been checked.
        // (A registration decided again once its cluster claim settled paid the first time.)
        if r.pubkey.is_none()
            && !held_here
            && !self.settling
            && !self.shared.budgets.register(from, now.ms)
        {
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
        // In a cluster, a name not homed here is claimed in the directory first: the
        // registration waits, and is decided again once the claim settles.
        if let Some(c) = self.shared.cluster.get() {
            // A name registered here is homed here (one restored by a takeover, too, before
            // the link has published it again).
            let here = || self.shared.registry.target_of(&r.name, now.ms).is_some();
            if !self.settling && !c.is_home(&r.name) && !here() {
                let key = match proof {
                    Proof::Key(..) => r.pubkey.clone(),
                    Proof::Token(_) => None,
                };
                let p = Pending {
                    name: r.name.to_string(),
                    key,
                    from,
                    datagram: d.to_vec(),
                    at_ms: now.ms,
                };
                return if c.pend(p) {
                    Ok(())
                } else {
                    Err(Reason::ClusterBusy)
                };
            }
        }
        let reg = &self.shared.registry;
        let mut claim = reg.claim(&r.name, from, proof, now.ms, reg.max_peers());
        // A full registry makes room for a newcomer rather than refuse every one of them, as
        // far as the newcomer's network may displace (a few tries: another worker may have
        // displaced the same registration a moment before).
        for _ in 0..DISPLACE_TRIES {
            if !matches!(claim, Claim::Full) || !self.shared.budgets.displace(from.ip(), now.ms) {
                break;
            }
            if let Some(gone) = reg.displace(now.ms) {
                debug!(name = %gone.name, addr = %gone.addr, "displaced");
                Counters::add(&self.counters.displaced, 1);
                self.gone(&gone, now, out);
                claim = reg.claim(&r.name, from, proof, now.ms, reg.max_peers());
            }
        }
        let session = match claim {
            Claim::Joined(s) | Claim::Replaced(s) | Claim::Refreshed(s) | Claim::Moved(s) => s,
            Claim::InUse => return Err(Reason::NameInUse),
            Claim::Full => return Err(Reason::RegistryFull),
            Claim::AddressFull => return Err(Reason::AddressFull),
        };
        // Authenticated: a refresh that showed the token sent here, or a verified signature over
        // a cookie sent here. A move is not: the new address has not shown the new token yet.
        req.authed = matches!(proof, Proof::Key(..))
            || (matches!(claim, Claim::Refreshed(_)) && token == Some(session));
        debug!(%from, name = %r.name, ?claim, explicit, "claim");
        match claim {
            Claim::Joined(_) | Claim::Replaced(_) => Counters::add(&self.counters.registrations, 1),
            Claim::Moved(_) => Counters::add(&self.counters.moves, 1),
            _ => {}
        }
        if req.authed && matches!(claim, Claim::Refreshed(_)) && !proven_before {
            self.proven(&r.name, req, out);
        }
        // A move carries the channels only once proven where it arrived (a signature proves it
        // at once; a session token only when the new address shows the new one): frames must
        // never follow a forged move to an address that did not ask for them.
        match claim.event(&r.name, from) {
            Some(Event::Moved(..)) if !req.authed => {}
            Some(ev) => events::react(&self.shared, ev, now, out),
            None => {}
        }
        let start = out.buf.len();
        if explicit {
            reply::register_ack(&mut out.buf, from, now.unix, &r.name, &session.to_hex());
            // What the old peers read of it (their public address) is never withheld.
            self.answer(req, out, start, |buf| reply::register_ack_short(buf, from));
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
            Claim::Joined(_) | Claim::Replaced(_) => true,
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
    pub(super) fn signed(
        &mut self,
        r: &control::Register,
        key: &str,
        d: &[u8],
        req: &Req,
        out: &mut Out,
    ) -> Result<Option<(auth::Key, u64)>, Reason> {
        let (from, now) = (req.from, req.now);
        let secs = now.unix as u64;
        let refused = |e| match e {
            AuthError::Malformed => Reason::BadRequest,
            AuthError::BadCookie | AuthError::BadSignature => Reason::BadSignature,
        };
        let k = auth::key(key).map_err(refused)?;
        match (&r.cookie, &r.sig) {
            (None, _) => {
                let cookie = self.shared.cookies.issue(secs, from, &r.name, &k);
                let start = out.buf.len();
                reply::challenge(&mut out.buf, &cookie);
                // Never larger than the request (and paid by it, as any reply is).
                if out.buf.len() - start <= d.len() {
                    out.reply(from, start, Kind::Reply, false);
                } else {
                    out.buf.truncate(start);
                }
                Ok(None)
            }
            (Some(c), Some(sig)) => {
                // The cookie (a hash) first: a forger, who never sees the cookies sent to the
                // address it forges, is refused before it costs that network a signature check.
                let issued = self.shared.cookies.check(c, secs, from, &r.name, &k);
                let issued = issued.map_err(refused)?;
                if !self.shared.budgets.check_signature(from.ip(), now.ms) {
                    return Err(Reason::SignatureLimited);
                }
                auth::verify(&k, &r.name, c, sig).map_err(refused)?;
                Ok(Some((k, issued)))
            }
            (Some(_), None) => Err(Reason::BadRequest),
        }
    }
}
