//! Receive buffers for one `recvmmsg`: [`BATCH`] slots, each with room for its datagram, its
//! source and its control messages. The mmsg backend receives into one, and so does any peer
//! (the load generator's virtual peers).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use crate::control::{CONTROL_LEN, source};
use crate::worker::Received;

/// Datagrams received per system call at most.
pub const BATCH: usize = 64;

/// Receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    stride: usize,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    controls: Vec<[u8; CONTROL_LEN]>,
}

// SAFETY: the raw pointers in the headers point into this value's own vectors; they are
// rewritten before each call and used only during it.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for datagrams of up to `stride` bytes (a longer one is cut, and says so).
    pub fn new(stride: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![0; stride * BATCH],
            stride,
            // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
            names: vec![unsafe { zeroed() }; BATCH],
            iovs: vec![unsafe { zeroed() }; BATCH],
            hdrs: vec![unsafe { zeroed() }; BATCH],
            controls: vec![[0; CONTROL_LEN]; BATCH],
        }
    }

    /// Receives what is waiting on `sock`, up to [`BATCH`] datagrams; `Ok(0)` if nothing is.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.call(sock, libc::MSG_DONTWAIT)
    }

    /// Waits for a datagram on `sock` (as long as its read timeout), then takes what else is
    /// waiting, up to [`BATCH`]; `Ok(0)` if none came.
    pub fn recv_wait(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.call(sock, libc::MSG_WAITFORONE)
    }

    fn call(&mut self, sock: &UdpSocket, flags: libc::c_int) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.stride..].as_mut_ptr().cast(),
                iov_len: self.stride,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL_LEN;
            h.msg_flags = 0;
        }
        // SAFETY: the headers point at buffers of this value, alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// The length of datagram `i` of the last call (what fit, if it was cut).
    fn len(&self, i: usize) -> usize {
        (self.hdrs[i].msg_len as usize).min(self.stride)
    }

    /// Datagram `i` of the last call.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.stride..][..self.len(i)]
    }

    /// Datagram `i` of the last call as a backend decides it: its slot (to rewrite in place)
    /// and what the kernel said of it.
    pub fn received(&mut self, i: usize) -> (&mut [u8], Received<'_>) {
        let len = self.len(i);
        let h = &self.hdrs[i].msg_hdr;
        let control = &self.controls[i][..h.msg_controllen.min(CONTROL_LEN)];
        let rx = Received {
            payload: 0..len,
            source: source(&self.names[i], control),
            control,
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
        };
        let slot = &mut self.bufs[i * self.stride..(i + 1) * self.stride];
        (slot, rx)
    }

    /// Slot `i`'s bytes, as the sends decided from it point into them.
    pub fn slot(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.stride..(i + 1) * self.stride]
    }
}
