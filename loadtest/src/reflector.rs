//! The cost floor: returns every datagram to its sender through the relay's own I/O path
//! (`relay-udp`'s recvmmsg/sendmmsg backend), deciding nothing. A relay's figures divided by the
//! reflector's say how close the relay is to the machine's limit.
//!
//! With segmentation (`--gso`) it is the floor of a relay that segments its sends: consecutive
//! returns of a batch to one sender of one size (the last may be shorter) leave as one
//! `UDP_SEGMENT` send, through the same header builder as the relay's.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use relay_udp::{Backend, Counters, Datagrams, Decide, Destinations, Worker};

/// What a reflector did until it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reflected {
    /// Datagrams sent back, or tried (failed, or to a source nothing is sent to).
    pub datagrams: u64,
    /// Sends that carried several datagrams as `UDP_SEGMENT` segments.
    pub segmented_sends: u64,
    /// Whether the kernel refused segmentation, so that the rest went one by one.
    pub gso_refused: bool,
}

/// Binds the reflector's socket on `addr`, as the relay binds a worker's (the same buffers, so
/// that neither side wins by buffering more), where no other socket listens.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    relay_udp::bind_group(addr, 1)
        .map(|mut s| s.remove(0))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Every datagram back to its source, whole.
struct Reflect;

impl Decide for Reflect {
    type Out = Datagrams;

    fn turn(&mut self) {}

    fn datagram(&mut self, d: &mut [u8], from: SocketAddr, out: &mut Datagrams) {
        out.echo(from, 0..d.len());
    }

    fn truncated(&mut self, _: usize, _: SocketAddr, _: &mut Datagrams) {}

    fn mapped_source(&mut self, _: usize) {}

    fn destinations(&self) -> Box<dyn Destinations> {
        Box::new(|to: SocketAddr| to.port() != 0 && !to.ip().is_unspecified())
    }
}

/// Reflects on `socket` until `stop` is set, segmenting returns if `gso` (see the module's doc).
pub fn serve(socket: UdpSocket, stop: Arc<AtomicBool>, gso: bool) -> io::Result<Reflected> {
    let counters = Arc::new(Counters::default());
    Backend::Mmsg.run(Worker {
        index: 0,
        socket,
        decide: Reflect,
        stop,
        counters: counters.clone(),
        // Any UDP payload, IPv6's included (a few bytes more than IPv4's).
        max_datagram: u16::MAX as usize,
        inbox: None,
        cpu: None,
        gso,
        gro: false,
    })?;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    Ok(Reflected {
        datagrams: load(&counters.sent)
            + load(&counters.send_errors)
            + load(&counters.bad_destination),
        segmented_sends: load(&counters.segmented_sends),
        gso_refused: load(&counters.gso_refused) > 0,
    })
}
