//! Channels (Part 4): `bind` and `unbind`, the frames they route, and what registry events do to
//! them. A frame is forwarded as the received buffer itself, its 4-byte channel field rewritten
//! in place: one segment, no copy, no allocation.

use crate::channels::{Full, Miss};
use crate::events;
use crate::metrics::Counters;
use crate::out::{Kind, Out};
use crate::refusal::Reason;
use crate::registry::Name;
use crate::seal::{Payload, seal};
use crate::wire::frame::{self, FrameError};
use crate::wire::mesh::{Via, write_bind};
use crate::wire::{control, reply, valid_name};

use super::{Req, Router};

impl Router {
    /// The frame hot path: routed by number, from its channel's owner only.
    pub(super) fn frame(&mut self, d: &mut [u8], req: &Req, out: &mut Out) {
        let number = match frame::channel(d) {
            Ok(n) => n,
            Err(FrameError::Short) => return self.refuse(Reason::FrameShort, req),
            Err(FrameError::Flags) => return self.refuse(Reason::FrameFlags, req),
        };
        let route = match self.shared.channels.route(number, req.from, req.now.ms) {
            Ok(r) => r,
            Err(Miss::Gone) => return self.refuse(Reason::ChannelGone, req),
            Err(Miss::WrongSource) => return self.refuse(Reason::ChannelWrongSource, req),
        };
        // About once a second a frame keeps its sender live, as a `relay` does; a sender no
        // longer registered there has lost its channels with its name.
        if let Some(name) = route.touch {
            let reg = &self.shared.registry;
            if !reg.touch_sender(&name, req.from, req.now.ms) {
                return self.refuse(Reason::ChannelGone, req);
            }
        }
        if let Some((node, peer)) = route.remote {
            // The other end lives at another relay: the payload goes there, under its number.
            if !self.frame_remote(d, &node, &peer, route.number, req.now, out) {
                return self.refuse(Reason::ChannelGone, req);
            }
            Counters::add(&self.counters.frames, 1);
            Counters::add(&self.counters.frame_bytes, d.len() as u64);
            return;
        }
        frame::set_channel(d, route.number);
        out.forward_input(route.to, 0..d.len());
        Counters::add(&self.counters.frames, 1);
        Counters::add(&self.counters.frame_bytes, d.len() as u64);
    }

    /// `bind`: both peers must have shown their sessions where they are, so that frames only
    /// ever go to an address that asked for them.
    pub(super) fn bind(&mut self, d: &[u8], req: &mut Req, out: &mut Out) -> Result<(), Reason> {
        let b = self.parse::<control::Bind>(d)?;
        let me = self.authenticate(b.name.as_deref(), b.session.as_deref(), req, out)?;
        if !valid_name(&b.target) {
            return Err(Reason::InvalidName);
        }
        let reg = &self.shared.registry;
        let Some((peer_addr, peer_trusted)) = reg.target_of(&b.target, req.now.ms) else {
            return self.bind_remote(&me, &b.target, req, out);
        };
        if !peer_trusted {
            return Err(Reason::UntrustedPeer);
        }
        if b.target == *me {
            return Err(Reason::BadRequest);
        }
        let peer = Name::from(b.target.as_str());
        let bound = self
            .shared
            .channels
            .bind(&me, req.from, &peer, peer_addr)
            .map_err(|Full::Limit| Reason::ChannelLimit)?;
        let start = out.buf.len();
        reply::bind_ack(&mut out.buf, &peer, bound.mine);
        out.reply(req.from, start, Kind::Reply, true);
        if bound.new {
            let start = out.buf.len();
            reply::channel_bound(&mut out.buf, &me, bound.theirs);
            out.reply(peer_addr, start, Kind::Announce, true);
        }
        Ok(())
    }

    /// `bind` to `target`, homed at another relay of the cluster: this relay's end bound and
    /// acknowledged at once, the target's relay sent both numbers (it takes its end and tells
    /// the target, or says the end closed, and the binder then hears `channel_closed`).
    fn bind_remote(
        &mut self,
        me: &Name,
        target: &str,
        req: &Req,
        out: &mut Out,
    ) -> Result<(), Reason> {
        let c = self.shared.cluster.get().ok_or(Reason::UnknownTarget)?;
        let (node, _) = c.remote.home_of(target).ok_or(Reason::UnknownTarget)?;
        if *target == **me {
            return Err(Reason::BadRequest);
        }
        let peer = Name::from(target);
        let bound = self
            .shared
            .channels
            .bind_remote(me, req.from, &peer, &node)
            .map_err(|Full::Limit| Reason::ChannelLimit)?;
        if bound.new {
            let mut numbers = Vec::new();
            write_bind(&mut numbers, bound.mine, bound.theirs, req.from.ip());
            let via = Via::Bind(me);
            if !seal(
                c,
                &node,
                target,
                via,
                Payload::Bytes(&numbers),
                req.now,
                out,
            ) {
                // The node is gone meanwhile: nothing bound.
                self.shared.channels.unbind(me, bound.mine);
                return Err(Reason::UnknownTarget);
            }
        }
        let start = out.buf.len();
        reply::bind_ack(&mut out.buf, &peer, bound.mine);
        out.reply(req.from, start, Kind::Reply, true);
        Ok(())
    }

    /// `unbind`: the sender's end is answered `channel_closed` too, as its acknowledgement.
    pub(super) fn unbind(&mut self, d: &[u8], req: &mut Req, out: &mut Out) -> Result<(), Reason> {
        let u = self.parse::<control::Unbind>(d)?;
        let me = self.authenticate(u.name.as_deref(), u.session.as_deref(), req, out)?;
        let other = self
            .shared
            .channels
            .unbind(&me, u.channel)
            .ok_or(Reason::UnknownChannel)?;
        let start = out.buf.len();
        reply::channel_closed(&mut out.buf, u.channel);
        out.reply(req.from, start, Kind::Reply, true);
        events::tell_closed(&self.shared, [other], req.now, out);
        Ok(())
    }
}
