//! Batched, non-blocking UDP for the virtual peers: sendmmsg and recvmmsg on connected sockets.

use std::io;
use std::mem::zeroed;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per system call at most.
pub const BATCH: usize = 64;

/// A connected, non-blocking UDP socket talking only to `remote`.
pub fn peer_socket(remote: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(remote),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&local.into())?;
    s.connect(&remote.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Receive buffers for one recvmmsg call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    slot: usize,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Lengths of the datagrams received by the last call.
    pub lens: [usize; BATCH],
}

// SAFETY: the raw pointers are rewritten before each call and only used during it.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for datagrams of up to `slot` bytes.
    pub fn new(slot: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![0; slot * BATCH],
            slot,
            // SAFETY: all-zero is valid for both.
            iovs: vec![unsafe { zeroed() }; BATCH],
            hdrs: vec![unsafe { zeroed() }; BATCH],
            lens: [0; BATCH],
        }
    }

    /// Receives what is waiting on `sock` (up to [`BATCH`]); `Ok(0)` if nothing is.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.slot..].as_mut_ptr() as *mut _,
                iov_len: self.slot,
            };
            self.hdrs[i].msg_hdr.msg_iov = &mut self.iovs[i];
            self.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: headers point at our buffers for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
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
        for i in 0..n as usize {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last call.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.slot..i * self.slot + self.lens[i]]
    }
}

/// Sends `datagrams` (concatenated in `buf`, each `len` bytes) on `sock`; returns how many went.
pub fn send_batch(sock: &UdpSocket, buf: &[u8], len: usize) -> io::Result<usize> {
    let n = buf.len() / len;
    let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    let n = n.min(BATCH);
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: buf[i * len..].as_ptr() as *mut _,
            iov_len: len,
        };
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: headers point at `buf`, alive for the call.
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
