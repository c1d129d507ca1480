//! The JSON relay hot path: a `relay` is forwarded as its payload span, untouched, behind a
//! header naming the sender.

use std::net::SocketAddr;
use std::ops::Range;

use crate::metrics::Counters;
use crate::out::Out;
use crate::refusal::Reason;
use crate::settings::{Auth, MAX_UDP_PAYLOAD};
use crate::wire::reply::{self, RELAYED_SUFFIX};
use crate::wire::scan::{self, Header};
use crate::wire::{MAX_NAME, valid_name};

use super::{Req, Router};

impl Router {
    /// The hot path: forwards the payload span, untouched, behind a header naming the sender.
    pub(super) fn relay(&mut self, d: &[u8], h: &Header, req: &Req, out: &mut Out) {
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
        let Some(target) = scan::text(d, target, &mut tbuf) else {
            return self.fail(out, Reason::UnknownTarget, req);
        };
        let Some((to, trusted)) = reg.target_of(target, req.now.ms) else {
            // A name no registration can have is sent nowhere, nor asked of the directory.
            if !valid_name(target) {
                return self.fail(out, Reason::UnknownTarget, req);
            }
            // Homed at another relay of the cluster: one hop there.
            if self.relay_remote(d, source, target, payload.start..payload.end, req.now, out) {
                return;
            }
            // Not known here: the directory is asked, off this thread, for the next datagram;
            // each question costs the sender a miss, as a `lookup` would.
            if let Some(c) = self.shared.cluster.get() {
                let (ip, ms) = (req.from.ip(), req.now.ms);
                if self.shared.misses.reserve(ip, req.authed, 1, ms) {
                    c.lookup(target);
                }
            }
            return self.fail(out, Reason::UnknownTarget, req);
        };
        // Where registration is signed, every registration echoed a cookie where it lives: one
        // that did not can only be a name forged for someone else.
        if self.shared.settings.auth == Auth::Signed && !trusted {
            return self.refuse(Reason::UnauthenticatedTarget, req);
        }
        if !relayed(out, to, source, payload.start..payload.end) {
            return self.fail(out, Reason::TooLarge, req);
        }
        Counters::add(&self.counters.forwarded, 1);
    }
}

/// Sends `to` the `relayed_packet` from `source` whose payload is `payload` of the received
/// datagram (sent from the receive buffer, behind a header written in `out.buf`); false (nothing
/// sent) if it would not fit a datagram.
pub(super) fn relayed(out: &mut Out, to: SocketAddr, source: &str, payload: Range<usize>) -> bool {
    let start = out.buf.len();
    reply::relayed_prefix(&mut out.buf, source);
    let end = out.buf.len();
    if end - start + payload.len() + RELAYED_SUFFIX.len() > MAX_UDP_PAYLOAD {
        out.buf.truncate(start);
        return false;
    }
    out.forward(to, start..end, payload, RELAYED_SUFFIX);
    true
}
