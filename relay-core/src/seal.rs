//! Mesh datagrams as this relay writes them: the head (this node, its next sequence number for
//! the receiving node), the payload, and the MAC under the mesh key for that node, appended to
//! an [`Out`] for that node's mesh address. A payload taken from the received datagram is sent
//! from the receive buffer; one the relay wrote (a bind's numbers) from `Out::buf`.

use std::ops::Range;

use crate::clock::Now;
use crate::cluster::Cluster;
use crate::out::{Kind, Out};
use crate::settings::MAX_UDP_PAYLOAD;
use crate::wire::mesh::{Head, MAC_LEN, Via, write_head};

/// `now` in microseconds since the Unix epoch: the clock of mesh sequence numbers.
pub fn unix_us(now: Now) -> u64 {
    (now.unix * 1e6) as u64
}

/// Where a mesh datagram's payload comes from.
pub enum Payload<'a> {
    /// This span of the received datagram `d`.
    Input(&'a [u8], Range<usize>),
    /// These bytes.
    Bytes(&'a [u8]),
}

impl Payload<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Input(d, span) => &d[span.clone()],
            Payload::Bytes(b) => b,
        }
    }
}

/// Appends a mesh datagram about `target` (`via`) carrying `payload` to node `node` of cluster
/// `c`: false (nothing appended) if the node is not listed, a field cannot be written, or the
/// datagram would not fit one.
pub fn seal(
    c: &Cluster,
    node: &str,
    target: &str,
    via: Via<'_>,
    payload: Payload<'_>,
    now: Now,
    out: &mut Out,
) -> bool {
    let Some((seq, mesh)) = c.nodes.next_seq(node, out.stream, unix_us(now)) else {
        return false;
    };
    let head = Head {
        node: &c.node,
        seq,
        stream: out.stream,
        target,
        via,
    };
    let body = payload.bytes();
    let start = out.buf.len();
    if !write_head(&mut out.buf, &head, body.len()) {
        return false;
    }
    let end = out.buf.len();
    if end - start + body.len() + MAC_LEN > MAX_UDP_PAYLOAD {
        out.buf.truncate(start);
        return false;
    }
    let mac = c.keys.mac(node, &[&out.buf[start..end], body]);
    match payload {
        Payload::Input(_, span) => {
            out.buf.extend_from_slice(&mac);
            out.forward_between(mesh, start..end, span, end..out.buf.len());
        }
        Payload::Bytes(b) => {
            out.buf.extend_from_slice(b);
            out.buf.extend_from_slice(&mac);
            // Between relays, paid by nobody's budget (what caused it was paid where it
            // entered), as a forward is.
            out.send_range(mesh, start..out.buf.len(), Kind::Forward, false);
        }
    }
    true
}
