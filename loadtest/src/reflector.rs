//! The cost floor: returns every datagram to its sender with recvmmsg/sendmmsg, reading nothing.
//! A relay's figures divided by the reflector's say how close the relay is to the machine's limit.

use std::io;
use std::mem::zeroed;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::net::BATCH;

/// Largest datagram the reflector returns whole.
const SLOT: usize = 65_536;

/// Binds the reflector's socket on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
    // The relay's workers ask for the same, so neither side wins by buffering more.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
    Ok(s)
}

/// Reflects until `stop` is set; returns datagrams reflected.
pub fn serve(sock: &UdpSocket, stop: &Arc<AtomicBool>) -> io::Result<u64> {
    let mut bufs = vec![0u8; SLOT * BATCH];
    // SAFETY: all-zero is valid for these C structures.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { zeroed() }; BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
    let fd = sock.as_raw_fd();
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i * SLOT..].as_mut_ptr() as *mut _,
                iov_len: SLOT,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut _ as *mut _;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: headers point at our buffers for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        // Send each back to where it came from: same name, iovec trimmed to its length.
        for i in 0..n {
            iovs[i].iov_len = hdrs[i].msg_len as usize;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: as above; names hold the senders' addresses.
            let r = unsafe { libc::sendmmsg(fd, hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if r <= 0 {
                done += 1;
            } else {
                done += r as usize;
            }
        }
        total += n as u64;
    }
    Ok(total)
}
