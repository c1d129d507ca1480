//! A worker as the backends run it: its socket and what decides, the one receive path (source,
//! the kernel's drop counts, a coalesced receive split into its datagrams), sends decided by
//! other threads, and the choice of backend.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use crate::control::{Source, gro_segment, queue_drops};
use crate::counters::Counters;
use crate::sends::{Destinations, Sends};
use crate::socket::udp_segment_supported;
use crate::{mmsg, uring};

/// What decides, as a backend sees it: one datagram in, its sends appended to a batch. The
/// backends know nothing else of it (not what a datagram means, nor who pays for a send), and
/// it nothing of them.
pub trait Decide: Send + 'static {
    /// The batch its sends go in.
    type Out: Sends;
    /// Once a loop turn, busy or idle (at least every [`POLL_MS`](crate::POLL_MS)), before the turn's
    /// datagrams: the time to decide them at is read here, and the worker known alive.
    fn turn(&mut self);
    /// Decides datagram `d` from `from`; it may rewrite `d` in place and send from it.
    fn datagram(&mut self, d: &mut [u8], from: SocketAddr, out: &mut Self::Out);
    /// A datagram from `from` of which only `len` bytes fit the receive buffer.
    fn truncated(&mut self, len: usize, from: SocketAddr, out: &mut Self::Out);
    /// A datagram of `len` bytes with a source nothing may be sent to (see [`Source::Mapped`]).
    fn mapped_source(&mut self, len: usize);
    /// The destinations its sends may go to, checked again as each send is built.
    fn destinations(&self) -> Box<dyn Destinations>;
}

/// Everything a worker needs: its socket, what decides, the stop flag and its counters.
pub struct Worker<D: Decide> {
    /// Index of the worker (0-based).
    pub index: usize,
    /// The worker's own socket on the relay address.
    pub socket: UdpSocket,
    /// What decides.
    pub decide: D,
    /// Set when the relay is shutting down; workers check it at least every [`POLL_MS`](crate::POLL_MS).
    pub stop: Arc<AtomicBool>,
    /// The worker's socket counters.
    pub counters: Arc<Counters>,
    /// Largest datagram accepted.
    pub max_datagram: usize,
    /// Sends decided by other threads, for backends that take them on the worker.
    pub inbox: Option<Inbox<D::Out>>,
    /// The CPU to pin the worker's thread to.
    pub cpu: Option<usize>,
    /// Whether sends may be segmented (`UDP_SEGMENT`).
    pub gso: bool,
    /// Whether the socket may coalesce receives (`UDP_GRO` is on): receive buffers then hold
    /// the largest coalesced receive, whatever `max_datagram` is.
    pub gro: bool,
}

/// Bytes a receive buffer must hold: the largest datagram accepted and one more (to tell a
/// datagram of exactly the limit from a longer one), or with GRO the largest coalesced receive.
pub fn receive_len(max_datagram: usize, gro: bool) -> usize {
    if gro { 65_536 } else { max_datagram + 1 }
}

/// What the kernel said of one receive.
pub struct Received<'a> {
    /// Where its bytes are in the buffer.
    pub payload: Range<usize>,
    /// Where it came from, if the address was readable.
    pub source: Option<Source>,
    /// Its control messages.
    pub control: &'a [u8],
    /// Whether the kernel cut it to fit the buffer.
    pub truncated: bool,
}

impl<D: Decide> Worker<D> {
    /// Decides one receive, whose bytes are `buf[rx.payload]`: records the kernel's queue drops
    /// it reports, splits a coalesced (GRO) receive at its segment size, and decides each
    /// datagram as if it had arrived alone. Each decided datagram's range of `buf` is pushed on
    /// `inputs` beside `id`, so that [`Sends::input`] indexes `inputs`.
    pub fn receive<B: Copy>(
        &mut self,
        buf: &mut [u8],
        rx: Received,
        id: B,
        out: &mut D::Out,
        inputs: &mut Vec<(B, Range<usize>)>,
    ) {
        let payload = rx.payload;
        if let Some(n) = queue_drops(rx.control) {
            self.counters
                .queue_drops
                .store(u64::from(n), std::sync::atomic::Ordering::Relaxed);
        }
        // The kernel coalesces at most 64 datagrams (UDP_GRO_CNT_MAX) into one receive, so the
        // datagrams of a batch, and `inputs`, stay bounded.
        let size = gro_segment(rx.control).unwrap_or(payload.len()).max(1);
        if size < payload.len() {
            Counters::add(&self.counters.coalesced_receives, 1);
        }
        let from = match rx.source {
            Some(Source::Peer(a)) => a,
            Some(Source::Mapped) => {
                for start in payload.clone().step_by(size) {
                    self.decide.mapped_source((payload.end - start).min(size));
                }
                if payload.is_empty() {
                    self.decide.mapped_source(0);
                }
                return;
            }
            None => return,
        };
        if rx.truncated {
            // Only a datagram longer than the buffer is cut: a coalesced receive is never
            // larger than the 64 KiB buffers GRO runs with.
            out.set_input(inputs.len());
            inputs.push((id, payload.clone()));
            self.decide.truncated(payload.len(), from, out);
            return;
        }
        let mut start = payload.start;
        while start < payload.end || (start == payload.start && payload.is_empty()) {
            let end = (start + size).min(payload.end);
            out.set_input(inputs.len());
            inputs.push((id, start..end));
            if end - start > self.max_datagram {
                self.decide.truncated(end - start, from, out);
            } else {
                self.decide.datagram(&mut buf[start..end], from, out);
            }
            if end == start {
                break;
            }
            start = end;
        }
    }
}

/// Sends decided elsewhere, handed to a worker: batches on a channel, and an eventfd the
/// worker's event loop watches so that it looks at the channel only when something is there.
pub struct Inbox<O> {
    /// The batches.
    pub batches: mpsc::Receiver<O>,
    /// Readable when batches are waiting (an eventfd).
    pub wake: Arc<std::os::fd::OwnedFd>,
    /// The counters of their sends.
    pub counters: Arc<Counters>,
}

/// Sends what threads other than the workers decide (the relay's reaper: `peer_left`,
/// `server_keepalive`), from the workers' own port.
pub trait Egress<O>: Send {
    /// Sends every datagram of `out` (which points into no received datagram) and leaves `out`
    /// empty.
    fn send(&mut self, out: &mut O);
}

/// Which backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The measured faster one (see [`select`]).
    Auto,
    /// io_uring, or fail.
    Uring,
    /// recvmmsg/sendmmsg batches.
    Mmsg,
}

/// An I/O backend: runs a worker until its stop flag is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// recvmmsg/sendmmsg batches on a blocking socket.
    Mmsg,
    /// io_uring with multishot receive into provided buffers.
    Uring,
}

impl Backend {
    /// The backend's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Mmsg => "mmsg",
            Backend::Uring => "uring",
        }
    }

    /// Runs the worker's loop on the calling thread.
    pub fn run<D: Decide>(self, worker: Worker<D>) -> io::Result<()> {
        match self {
            Backend::Mmsg => mmsg::run(worker),
            Backend::Uring => uring::run(worker),
        }
    }

    /// Where other threads' sends go, set up before the workers start (it may give a worker an
    /// [`Inbox`]); their sends are counted in `counters`.
    pub fn egress<D: Decide>(
        self,
        workers: &mut [Worker<D>],
        counters: Arc<Counters>,
    ) -> io::Result<Box<dyn Egress<D::Out>>> {
        match self {
            Backend::Mmsg => mmsg::egress(workers, counters),
            Backend::Uring => uring::egress(workers, counters),
        }
    }
}

/// The backend `choice` asks for, and why when `auto` chose. `auto` is the mmsg backend: both
/// segment their sends (`gso`) and take coalesced receives, and mmsg measured faster than
/// io_uring in CPU per datagram on every shape of the README's performance section (by 4–12%:
/// io_uring's per-request issue path costs more than sendmmsg's loop over a batch). `uring`
/// fails if the kernel refuses io_uring here.
pub fn select(choice: Choice, gso: bool) -> io::Result<(Backend, Option<String>)> {
    match choice {
        Choice::Mmsg => Ok((Backend::Mmsg, None)),
        Choice::Uring => match uring::probe() {
            Ok(()) => Ok((Backend::Uring, None)),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("--io uring: io_uring is not available here: {e}"),
            )),
        },
        Choice::Auto => {
            let segmentation = if !gso {
                "off (--gso off)"
            } else if udp_segment_supported() {
                "on"
            } else {
                "refused by this kernel"
            };
            Ok((
                Backend::Mmsg,
                Some(format!(
                    "recvmmsg/sendmmsg measured faster than io_uring on every load shape \
                     (README, Performance); send segmentation {segmentation}"
                )),
            ))
        }
    }
}
