//! Introductions across the relays of a cluster: a `connect` to a name homed at another relay
//! goes there (the asker's address with it, which its asking consents to give), and is kept at
//! both relays under the same rules as one relay's (each registration's number standing in for
//! a remote name's claim epoch). The relay that hears the second of the two asks introduces its
//! own peer and sends its peer's address back, whose relay introduces the other: an address is
//! handed out only when both asked.

use std::net::SocketAddr;

use crate::clock::Now;
use crate::cluster::Cluster;
use crate::out::{Kind, Out};
use crate::refusal::Reason;
use crate::seal::{Payload, seal};
use crate::wire::mesh::{Mesh, Via};
use crate::wire::reply;

use super::{Req, Router};

/// An address a mesh datagram carries, as text.
fn address(d: &[u8], m: &Mesh<'_>) -> Option<SocketAddr> {
    std::str::from_utf8(&d[m.payload.clone()])
        .ok()?
        .parse()
        .ok()
}

/// The two sides of a meeting across relays: the remote peer's address (carried) and claim
/// epoch (as this relay's view has it), and the target's registration here (address, trust,
/// number).
type Parties = (SocketAddr, u64, (SocketAddr, bool, u64));

impl Router {
    /// The parties of mesh datagram `m` (a connect or an introduction) about `peer`, at the
    /// sending relay, and its target homed here.
    fn parties(
        &self,
        c: &Cluster,
        d: &[u8],
        m: &Mesh<'_>,
        peer: &str,
        now: Now,
    ) -> Result<Parties, Reason> {
        let addr = address(d, m).ok_or(Reason::MeshMalformed)?;
        let (_, epoch) = c.remote.home_of(peer).ok_or(Reason::MeshUnknownTarget)?;
        let target = self
            .shared
            .registry
            .registration_of(m.head.target, now.ms)
            .ok_or(Reason::MeshUnknownTarget)?;
        Ok((addr, epoch, target))
    }

    /// `connect` of `me` (registration number `my_seq`) to `target`, homed at another relay of
    /// the cluster: the ask kept here, and sent there with `me`'s address. Nothing if `target`
    /// is homed nowhere known (an offline target, as on one relay).
    pub(super) fn connect_remote(
        &self,
        me: &str,
        my_seq: u64,
        target: &str,
        req: &Req,
        out: &mut Out,
    ) -> Result<(), Reason> {
        let remote = self.shared.cluster.get().and_then(|c| {
            let (node, epoch) = c.remote.home_of(target)?;
            Some((c, node, epoch))
        });
        let Some((c, node, epoch)) = remote else {
            return Ok(());
        };
        let now = req.now.ms;
        if !self
            .shared
            .introductions
            .ask(me, my_seq, target, epoch, now)
        {
            return Err(Reason::ConnectLimited);
        }
        let addr = req.from.to_string();
        seal(
            c,
            &node,
            target,
            Via::Connect(me),
            Payload::Bytes(addr.as_bytes()),
            req.now,
            out,
        );
        Ok(())
    }

    /// `asker`, at the sending relay, asks for the target homed here: kept; if the target asked
    /// for it first, both are introduced (the target here, and through its relay the asker);
    /// else the target is told who asks.
    pub(super) fn mesh_connect(
        &self,
        c: &Cluster,
        d: &[u8],
        m: &Mesh<'_>,
        asker: &str,
        now: Now,
        out: &mut Out,
    ) -> Result<(), Reason> {
        if self.shared.settings.no_introductions {
            return Err(Reason::Disabled);
        }
        let target = m.head.target;
        let (asker_addr, asker_epoch, (t_addr, t_trusted, t_seq)) =
            self.parties(c, d, m, asker, now)?;
        let pending = &self.shared.introductions;
        if !pending.ask(asker, asker_epoch, target, t_seq, now.ms) {
            return Err(Reason::ConnectLimited);
        }
        let start = out.buf.len();
        if pending.asked(target, t_seq, asker, asker_epoch, now.ms) {
            reply::introduce(&mut out.buf, asker, asker_addr);
            out.reply(t_addr, start, Kind::Announce, t_trusted);
            let mine = t_addr.to_string();
            let via = Via::Introduce(target);
            seal(
                c,
                m.head.node,
                asker,
                via,
                Payload::Bytes(mine.as_bytes()),
                now,
                out,
            );
        } else {
            reply::connect_request(&mut out.buf, asker);
            out.reply(t_addr, start, Kind::Announce, t_trusted);
        }
        Ok(())
    }

    /// `peer`, at the sending relay, and the target homed here asked for each other: the
    /// target is introduced to it, if it did ask (no address is handed out otherwise).
    pub(super) fn mesh_introduce(
        &self,
        c: &Cluster,
        d: &[u8],
        m: &Mesh<'_>,
        peer: &str,
        now: Now,
        out: &mut Out,
    ) -> Result<(), Reason> {
        let target = m.head.target;
        let (peer_addr, peer_epoch, (t_addr, t_trusted, t_seq)) =
            self.parties(c, d, m, peer, now)?;
        // Both asks, as this relay recorded them: the target's, and the peer's for this very
        // registration of the target (its number changes with each holder), so that a yes
        // given to a name's former holder is handed to no later one.
        let pending = &self.shared.introductions;
        if !pending.asked(target, t_seq, peer, peer_epoch, now.ms)
            || !pending.asked(peer, peer_epoch, target, t_seq, now.ms)
        {
            return Err(Reason::MeshUnknownTarget);
        }
        let start = out.buf.len();
        reply::introduce(&mut out.buf, peer, peer_addr);
        out.reply(t_addr, start, Kind::Announce, t_trusted);
        Ok(())
    }
}
