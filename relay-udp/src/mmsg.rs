//! The portable backend: blocking recvmmsg/sendmmsg batches, for any Linux host.

use std::io;
use std::mem::zeroed;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use std::net::UdpSocket;
use std::sync::Arc;

use crate::control::{CONTROL_LEN, source};
use crate::counters::Counters;
use crate::sender::Sender;
use crate::sends::Sends;
use crate::worker::{Decide, Egress, Received, Worker, receive_len};

/// Datagrams received (and decided) per system call at most.
pub const BATCH: usize = 64;

/// Other threads' sends go out on a clone of worker 0's socket.
pub(crate) fn egress<D: Decide>(workers: &mut [Worker<D>]) -> io::Result<Box<dyn Egress<D::Out>>> {
    let first = workers
        .first()
        .ok_or_else(|| io::Error::other("no workers"))?;
    let socket = first.socket.try_clone()?;
    Ok(Box::new(SocketEgress {
        sender: Sender::new(&socket, first.gso, first.decide.destinations())?,
        socket,
        counters: first.counters.clone(),
    }))
}

/// Runs worker `w` until its stop flag is set: recvmmsg/sendmmsg batches on a blocking socket.
pub(crate) fn run<D: Decide>(mut w: Worker<D>) -> io::Result<()> {
    let stride = receive_len(w.max_datagram, w.gro);
    let mut bufs = vec![0u8; stride * BATCH];
    // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { zeroed() }; BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
    let mut controls = vec![[0u8; CONTROL_LEN]; BATCH];
    let mut out = D::Out::default();
    // Per decided datagram: its slot and range there (several per slot when coalesced).
    let mut inputs: Vec<(usize, Range<usize>)> = Vec::new();
    let mut sender = Sender::new(&w.socket, w.gso, w.decide.destinations())?;
    let fd = w.socket.as_raw_fd();
    while !w.stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i * stride..].as_mut_ptr() as *mut _,
                iov_len: stride,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut _ as *mut _;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = controls[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL_LEN;
            h.msg_flags = 0;
        }
        // SAFETY: the headers point at buffers that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        w.decide.turn();
        if n < 0 {
            // Nothing yet, a signal, or an ICMP error from an earlier send surfacing here on
            // some kernels: it concerns a peer, not this socket.
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                tracing::debug!(error = %e, "recvmmsg");
            }
            continue;
        }
        for i in 0..n as usize {
            let len = (hdrs[i].msg_len as usize).min(stride);
            let control = &controls[i][..hdrs[i].msg_hdr.msg_controllen.min(CONTROL_LEN)];
            let rx = Received {
                payload: 0..len,
                source: source(&names[i], control),
                control,
                truncated: hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            };
            let slot = &mut bufs[i * stride..(i + 1) * stride];
            w.receive(slot, rx, i, &mut out, &mut inputs);
        }
        let bufs = &bufs;
        let inputs_ref = &inputs;
        sender.send(
            &w.socket,
            &out,
            |k| {
                let (slot, r) = &inputs_ref[k];
                &bufs[slot * stride..][r.clone()]
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
