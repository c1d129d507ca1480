//! The portable backend: blocking recvmmsg/sendmmsg batches, for any Linux host.

use std::io;
use std::net::UdpSocket;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::counters::Counters;
use crate::recv::RecvBatch;
use crate::sender::Sender;
use crate::sends::Sends;
use crate::worker::{Decide, Egress, Worker, receive_len};

/// Other threads' sends go out on a clone of worker 0's socket.
pub(crate) fn egress<D: Decide>(
    workers: &mut [Worker<D>],
    counters: Arc<Counters>,
) -> io::Result<Box<dyn Egress<D::Out>>> {
    let first = workers
        .first()
        .ok_or_else(|| io::Error::other("no workers"))?;
    let socket = first.socket.try_clone()?;
    Ok(Box::new(SocketEgress {
        sender: Sender::new(&socket, first.gso, first.decide.destinations())?,
        socket,
        counters,
    }))
}

/// Runs worker `w` until its stop flag is set: recvmmsg/sendmmsg batches on a blocking socket.
pub(crate) fn run<D: Decide>(mut w: Worker<D>) -> io::Result<()> {
    let mut rx = RecvBatch::new(receive_len(w.max_datagram, w.gro));
    let mut out = D::Out::default();
    // Per decided datagram: its slot and range there (several per slot when coalesced).
    let mut inputs: Vec<(usize, Range<usize>)> = Vec::new();
    let mut sender = Sender::new(&w.socket, w.gso, w.decide.destinations())?;
    while !w.stop.load(Ordering::Relaxed) {
        let n = rx.recv_wait(&w.socket);
        w.decide.turn();
        let n = match n {
            Ok(n) => n,
            // An ICMP error from an earlier send surfacing here on some kernels: it concerns a
            // peer, not this socket.
            Err(e) => {
                tracing::debug!(error = %e, "recvmmsg");
                continue;
            }
        };
        for i in 0..n {
            let (slot, received) = rx.received(i);
            w.receive(slot, received, i, &mut out, &mut inputs);
        }
        let (rx, inputs_ref) = (&rx, &inputs);
        sender.send(
            &w.socket,
            &out,
            |k| {
                let (slot, r) = &inputs_ref[k];
                &rx.slot(*slot)[r.clone()]
            },
            &w.counters,
        );
        out.clear();
        inputs.clear();
    }
    Ok(())
}

/// The reaper sends with sendmmsg on a clone of worker 0's socket: from the relay's port, and
/// without involving the worker (a blocking socket may be shared between threads).
struct SocketEgress {
    socket: UdpSocket,
    sender: Sender,
    counters: Arc<Counters>,
}

impl<O: Sends> Egress<O> for SocketEgress {
    fn send(&mut self, out: &mut O) {
        self.sender.send(&self.socket, out, |_| &[], &self.counters);
        out.clear();
    }
}
