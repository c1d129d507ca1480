//! What a backend sends: the datagrams decided for a batch, each as up to three byte segments
//! that may point into the received datagram it answers, so that a forwarded payload leaves
//! from the receive buffer uncopied.
//!
//! [`Sends`] is the interface the header builder reads; the relay's core implements it over its
//! own decisions (which also carry who pays for each send, a thing this crate does not know), and
//! [`Datagrams`] is a plain implementation for everyone else (the load generator, the tests).

use std::net::SocketAddr;
use std::ops::Range;

/// A batch of datagrams to send, in order.
pub trait Sends: Default + Send + 'static {
    /// How many datagrams.
    fn count(&self) -> usize;
    /// Datagram `i`'s destination.
    fn to(&self, i: usize) -> SocketAddr;
    /// The received datagram (its index in the batch) that datagram `i`'s segments may point
    /// into.
    fn input(&self, i: usize) -> usize;
    /// Datagram `i`'s segments, concatenated on the wire, given its received datagram.
    fn segments<'a>(&'a self, i: usize, input: &'a [u8]) -> [&'a [u8]; 3];
    /// Datagram `i`'s length on the wire.
    fn wire_len(&self, i: usize) -> usize;
    /// Sets the received datagram being decided: what is added next refers to it.
    fn set_input(&mut self, i: usize);
    /// Forgets every datagram, keeping the capacity.
    fn clear(&mut self);
}

/// One datagram of [`Datagrams`]: a range of its buffer, then a range of a received datagram.
#[derive(Debug, Clone)]
struct Datagram {
    to: SocketAddr,
    input: usize,
    own: Range<usize>,
    echo: Range<usize>,
}

/// A plain batch: datagrams of bytes of its own, or echoing a range of a received datagram.
#[derive(Debug, Default)]
pub struct Datagrams {
    buf: Vec<u8>,
    list: Vec<Datagram>,
    input: usize,
}

impl Datagrams {
    /// Sends `bytes` (copied) to `to`.
    pub fn push(&mut self, to: SocketAddr, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.push_range(to, start..self.buf.len());
    }

    /// Sends bytes already pushed (`range` of what [`Datagrams::push`] wrote) again, to `to`.
    pub fn push_range(&mut self, to: SocketAddr, range: Range<usize>) {
        self.list.push(Datagram {
            to,
            input: self.input,
            own: range,
            echo: 0..0,
        });
    }

    /// Sends `span` of the received datagram being decided to `to`, from the receive buffer
    /// (a span beyond that datagram is a bug of the caller's, and panics where it is sent, as
    /// slicing does).
    pub fn echo(&mut self, to: SocketAddr, span: Range<usize>) {
        self.list.push(Datagram {
            to,
            input: self.input,
            own: 0..0,
            echo: span,
        });
    }
}

impl Sends for Datagrams {
    fn count(&self) -> usize {
        self.list.len()
    }

    fn to(&self, i: usize) -> SocketAddr {
        self.list[i].to
    }

    fn input(&self, i: usize) -> usize {
        self.list[i].input
    }

    fn segments<'a>(&'a self, i: usize, input: &'a [u8]) -> [&'a [u8]; 3] {
        let d = &self.list[i];
        [&self.buf[d.own.clone()], &input[d.echo.clone()], &[]]
    }

    fn wire_len(&self, i: usize) -> usize {
        let d = &self.list[i];
        d.own.len() + d.echo.len()
    }

    fn set_input(&mut self, i: usize) {
        self.input = i;
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.list.clear();
        self.input = 0;
    }
}

/// Which destinations a sender sends to: any other send is dropped and counted
/// (`bad_destination`), whatever decided it.
pub trait Destinations: Send {
    /// Whether `to` may be sent to.
    fn serves(&mut self, to: SocketAddr) -> bool;
}

/// A closure is a filter of destinations.
impl<F: FnMut(SocketAddr) -> bool + Send> Destinations for F {
    fn serves(&mut self, to: SocketAddr) -> bool {
        self(to)
    }
}
