//! What the protocol logic asks an I/O shell to send: datagrams as up to three byte segments.
//!
//! A reply lives in the reusable `buf`; a forward is a header from `buf`, the payload span of the
//! received datagram (never copied) and a static suffix. Ranges, not pointers, are stored so that
//! `buf` may grow while a batch is decided.

use std::net::SocketAddr;
use std::ops::Range;

/// One segment of an outgoing datagram.
#[derive(Debug, Clone)]
pub enum Seg {
    /// A range of [`Out::buf`].
    Buf(Range<usize>),
    /// A range of the received datagram the send was decided for.
    Input(Range<usize>),
    /// Constant bytes.
    Static(&'static [u8]),
}

/// What a send is, which decides who pays for it (see [`crate::budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An answer to a request, sent to its source.
    Reply,
    /// An answer the peer can do without (a `keepalive_ack`): never drawn from the reserve that
    /// keeps a later `register_ack` possible.
    Courtesy,
    /// `peer_joined`, `peer_left`, `peer_list` or `introduce` to someone other than the source.
    Announce,
    /// A relay-originated `server_keepalive` (or the coalesced `peer_list` that takes its place).
    Keepalive,
    /// `relayed_packet` or a channel frame: paid by its sender's admission limits.
    Forward,
}

/// One datagram to send.
#[derive(Debug, Clone)]
pub struct Send {
    /// Where to.
    pub to: SocketAddr,
    /// What it is.
    pub kind: Kind,
    /// Whether the recipient has shown, from `to`, the session the relay sent there (for a
    /// reply: whether the request was authenticated, or the reply was paid while it was
    /// decided). Untrusted recipients pay from budgets.
    pub trusted: bool,
    /// Which received datagram of the batch `Seg::Input` refers to.
    pub input: usize,
    /// The segments, concatenated on the wire.
    pub segs: [Seg; 3],
    /// How many of `segs` are used.
    pub nsegs: usize,
}

/// The sends decided for a batch of datagrams.
#[derive(Debug, Default)]
pub struct Out {
    /// Bytes of replies and forward headers.
    pub buf: Vec<u8>,
    /// The datagrams to send, in order.
    pub sends: Vec<Send>,
    /// Index of the received datagram being decided (set by the I/O shell).
    pub input: usize,
    /// The mesh stream of the thread that sends this batch (see `mesh::STREAMS`): each thread
    /// seals its mesh datagrams in the order it sends them.
    pub stream: u16,
}

const NONE: Seg = Seg::Static(b"");

impl Send {
    /// The datagram's length on the wire.
    pub fn wire_len(&self) -> usize {
        self.segs[..self.nsegs]
            .iter()
            .map(|g| match g {
                Seg::Buf(r) | Seg::Input(r) => r.len(),
                Seg::Static(b) => b.len(),
            })
            .sum()
    }
}

impl Out {
    /// Sends `buf[start..]` (the message just written) to `to`.
    pub fn reply(&mut self, to: SocketAddr, start: usize, kind: Kind, trusted: bool) {
        let end = self.buf.len();
        self.send_range(to, start..end, kind, trusted);
    }

    /// Sends `buf[range]` to `to` (one written message sent to several peers).
    pub fn send_range(&mut self, to: SocketAddr, range: Range<usize>, kind: Kind, trusted: bool) {
        self.sends.push(Send {
            to,
            kind,
            trusted,
            input: self.input,
            segs: [Seg::Buf(range), NONE, NONE],
            nsegs: 1,
        });
    }

    /// Sends `buf[head]`, the received datagram's `span`, and `tail`, as one datagram.
    pub fn forward(
        &mut self,
        to: SocketAddr,
        head: Range<usize>,
        span: Range<usize>,
        tail: &'static [u8],
    ) {
        self.sends.push(Send {
            to,
            kind: Kind::Forward,
            trusted: false,
            input: self.input,
            segs: [Seg::Buf(head), Seg::Input(span), Seg::Static(tail)],
            nsegs: 3,
        });
    }

    /// Sends `buf[head]`, the received datagram's `span`, and `buf[tail]`, as one datagram (a
    /// mesh datagram: its MAC follows the payload).
    pub fn forward_between(
        &mut self,
        to: SocketAddr,
        head: Range<usize>,
        span: Range<usize>,
        tail: Range<usize>,
    ) {
        self.sends.push(Send {
            to,
            kind: Kind::Forward,
            trusted: false,
            input: self.input,
            segs: [Seg::Buf(head), Seg::Input(span), Seg::Buf(tail)],
            nsegs: 3,
        });
    }

    /// Sends `span` of the received datagram, as it now is, to `to`: one segment straight from
    /// the receive buffer (a channel frame rewritten in place).
    pub fn forward_input(&mut self, to: SocketAddr, span: Range<usize>) {
        self.sends.push(Send {
            to,
            kind: Kind::Forward,
            trusted: false,
            input: self.input,
            segs: [Seg::Input(span), NONE, NONE],
            nsegs: 1,
        });
    }

    /// The bytes of `send`'s segments, given the received datagram it refers to.
    pub fn segments<'a>(&'a self, send: &'a Send, input: &'a [u8]) -> [&'a [u8]; 3] {
        let seg = |s: &'a Seg| -> &'a [u8] {
            match s {
                Seg::Buf(r) => &self.buf[r.clone()],
                Seg::Input(r) => &input[r.clone()],
                Seg::Static(b) => b,
            }
        };
        [seg(&send.segs[0]), seg(&send.segs[1]), seg(&send.segs[2])]
    }

    /// Copies into `buf` the spans the sends take from received datagrams (`input(i)` is
    /// datagram `i`), so that the sends point into no received datagram: for a sender that
    /// outlives the receive buffers (the egress that delivers mesh datagrams).
    pub fn own_inputs<'a>(&mut self, input: impl Fn(usize) -> &'a [u8]) {
        for send in &mut self.sends {
            for seg in &mut send.segs[..send.nsegs] {
                if let Seg::Input(r) = seg {
                    let start = self.buf.len();
                    self.buf.extend_from_slice(&input(send.input)[r.clone()]);
                    *seg = Seg::Buf(start..self.buf.len());
                }
            }
        }
    }

    /// Forgets everything decided, keeping the capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.sends.clear();
        self.input = 0;
    }
}
