//! The sendmmsg sender: a batch's datagrams through the one header builder, a run to one
//! destination as one segmented send, a refused run sent again datagram by datagram.

use std::io;
use std::mem::zeroed;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use crate::counters::Counters;
use crate::headers::{Gso, Headers};
use crate::recv::BATCH;
use crate::sends::Destinations;
use crate::sends::Sends;

/// Sends a batch's datagrams with `sendmmsg`, through the [`Headers`] builder: a run to one
/// destination leaves as one `UDP_SEGMENT` send, which the kernel splits, one trip down the stack
/// instead of one per datagram. A refused segmented send is sent again one datagram at a time.
pub struct Sender {
    headers: Headers,
    pub(crate) gso: Gso,
}

impl Sender {
    /// A sender for `sock`, whose family decides how IPv4 destinations are written; `gso`
    /// allows segmented sends; nothing is sent but to `destinations`.
    pub fn new(
        sock: &UdpSocket,
        gso: bool,
        destinations: Box<dyn Destinations>,
    ) -> io::Result<Sender> {
        Ok(Sender {
            headers: Headers::new(sock.local_addr()?.is_ipv6(), destinations),
            gso: Gso::new(gso),
        })
    }

    /// Builds the headers for `out.sends[from..]`, segmenting runs if `segment`; how many
    /// sends were dropped for their destination.
    fn build<'a>(
        &mut self,
        out: &'a impl Sends,
        from: usize,
        input: &impl Fn(usize) -> &'a [u8],
        segment: bool,
    ) -> usize {
        self.headers.clear();
        let dropped = self
            .headers
            .add(out, from..out.count(), input, segment.then_some(&self.gso));
        self.headers.fix();
        dropped
    }

    /// Sends every datagram of `out` on `sock`; `input(i)` is received datagram `i` of the batch.
    pub fn send<'a>(
        &mut self,
        sock: &UdpSocket,
        out: &'a impl Sends,
        input: impl Fn(usize) -> &'a [u8],
        counters: &Counters,
    ) {
        if out.count() == 0 {
            return;
        }
        // Counted once: sending the rest again (below) drops the same ones again.
        let dropped = self.build(out, 0, &input, true);
        Counters::add(&counters.bad_destination, dropped as u64);
        let fd = sock.as_raw_fd();
        let mut done = 0;
        while done < self.headers.len() {
            let rest = self.headers.mmsg_from(done);
            // SAFETY: every header points into live buffers (`out`, inputs, the headers' own).
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                let (first, n) = self.headers.run(done);
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    // A segmented send is never dropped whole: its datagrams go again one by
                    // one (with the rest of the batch), each failing or not on its own.
                    _ if n > 1 => {
                        self.gso.refused(&e, out.to(first), out.wire_len(first));
                        self.build(out, first, &input, false);
                        done = 0;
                    }
                    _ => {
                        // The first datagram failed (unreachable, too large…): skip it only.
                        let to = out.to(first);
                        tracing::debug!(error = %e, %to, "send failed");
                        Counters::add(&counters.send_errors, n as u64);
                        self.gso.resent(to, false, counters);
                        done += 1;
                    }
                }
            } else {
                let sent = r as usize;
                for i in done..done + sent {
                    let bytes = self.headers.mmsg_from(i)[0].msg_len;
                    let (first, n) = self.headers.run(i);
                    counters.sent_run(n, bytes as usize);
                    if n == 1 {
                        self.gso.resent(out.to(first), true, counters);
                    }
                }
                done += sent;
            }
        }
    }
}

/// Sends `datagrams` (up to [`BATCH`] of them) on the connected, non-blocking `sock` with one
/// `sendmmsg`; how many the kernel took (0 if its buffer is full).
pub fn send_batch<'a>(
    sock: &UdpSocket,
    datagrams: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid iovec and mmsghdr.
    let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    let mut n = 0;
    for d in datagrams.into_iter().take(BATCH) {
        iovs[n] = libc::iovec {
            iov_base: d.as_ptr() as *mut _,
            iov_len: d.len(),
        };
        n += 1;
    }
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()).take(n) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at the datagrams, alive for the call.
    let r = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    }
    Ok(r as usize)
}
