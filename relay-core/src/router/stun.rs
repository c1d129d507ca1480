//! STUN Binding (Part 3): every standard client learns its public address from the relay. The
//! answer is a reply to an unauthenticated request, paid from the reply budgets as any other.

use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::refusal::Reason;
use crate::wire::stun::{self, StunError};

use super::{Req, Router};

impl Router {
    pub(super) fn stun(&mut self, d: &[u8], req: &Req, out: &mut Out) {
        let r = match stun::parse(d) {
            Ok(r) => r,
            Err(StunError::Malformed) => return self.refuse(Reason::StunMalformed, req),
            Err(StunError::BadFingerprint) => return self.refuse(Reason::StunFingerprint, req),
            Err(StunError::NotBindingRequest) => return self.refuse(Reason::StunNotRequest, req),
        };
        tracing::debug!(from = %req.from, unknown = r.unknown.len(), "stun binding");
        let start = out.buf.len();
        stun::answer(&mut out.buf, &r, req.from);
        out.reply(req.from, start, Kind::Reply, false);
        let c = if r.unknown.is_empty() {
            &self.counters.stun_answered
        } else {
            &self.counters.stun_unknown
        };
        Counters::add(c, 1);
    }
}
