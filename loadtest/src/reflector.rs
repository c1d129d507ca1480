//! The cost floor: returns every datagram to its sender with recvmmsg/sendmmsg, reading nothing.
//! A relay's figures divided by the reflector's say how close the relay is to the machine's limit.
//!
//! With segmentation (`--gso`) it is the floor of a relay that segments its sends: consecutive
//! datagrams of a batch to one sender of one size (the last may be shorter) go back as one
//! `UDP_SEGMENT` send, which the kernel splits, as the relay's mmsg backend does.

use std::io;
use std::mem::zeroed;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::net::BATCH;

/// Largest datagram the reflector returns whole.
const SLOT: usize = 65_536;
/// `UDP_SEGMENT` (linux/udp.h): the segment size of a send the kernel splits into datagrams.
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes one segmented send carries: a UDP datagram's largest payload.
pub const MAX_SEGMENTED_BYTES: usize = 65_507;
/// Largest datagram segmented: one that fits a 1,500-byte MTU over IPv6 (the relay's limit too;
/// the kernel refuses segments above the path's MTU).
pub const MAX_SEGMENT_SIZE: usize = 1452;

/// What a reflector did until it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reflected {
    /// Datagrams received and sent back (or tried).
    pub datagrams: u64,
    /// Sends that carried several datagrams as `UDP_SEGMENT` segments.
    pub segmented_sends: u64,
    /// Whether the kernel refused segmentation, so that the rest went one by one.
    pub gso_refused: bool,
}

/// Binds the reflector's socket on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
    // The relay's workers ask for the same, so neither side wins by buffering more.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
    Ok(s)
}

/// Groups a batch into sends: consecutive datagrams to one sender (`same(i, j)`) of one size,
/// the last of a run possibly shorter, within [`MAX_SEGMENTS`], [`MAX_SEGMENTED_BYTES`] and a
/// segment size of at most `max_segment`. Writes each send's first datagram and count to `runs`.
pub fn group(
    lens: &[usize],
    same: impl Fn(usize, usize) -> bool,
    max_segment: usize,
    runs: &mut Vec<(usize, usize)>,
) {
    runs.clear();
    // The open run's bytes so far, and whether a shorter datagram already ended it.
    let (mut bytes, mut ended) = (0, true);
    for (i, &len) in lens.iter().enumerate() {
        let joins = !ended
            && runs.last().is_some_and(|&(first, count)| {
                let size = lens[first];
                len > 0
                    && len <= size
                    && size <= max_segment
                    && count < MAX_SEGMENTS
                    && bytes + len <= MAX_SEGMENTED_BYTES
                    && same(first, i)
            });
        if joins {
            let run = runs.last_mut().expect("an open run");
            run.1 += 1;
            bytes += len;
            ended = len < lens[run.0];
        } else {
            runs.push((i, 1));
            bytes = len;
            // An empty datagram has no segment size: it never starts a run.
            ended = len == 0;
        }
    }
}

/// Room for one control message holding a `u16`, aligned as a `cmsghdr` must be.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 32]);

/// Whether this kernel takes `UDP_SEGMENT` (Linux 4.18 and later), asked of a throwaway socket
/// (set on the reflector's own, it would segment every send).
pub fn udp_segment_supported() -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let size: libc::c_int = 1200;
    // SAFETY: a plain setsockopt with a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Reflects until `stop` is set, segmenting returns if `gso` (see the module's doc).
pub fn serve(sock: &UdpSocket, stop: &AtomicBool, gso: bool) -> io::Result<Reflected> {
    let mut bufs = vec![0u8; SLOT * BATCH];
    // SAFETY: all-zero is valid for these C structures.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { zeroed() }; BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
    let mut seg = Segmenter::new(gso);
    let fd = sock.as_raw_fd();
    let mut total = Reflected::default();
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
        if seg.on {
            total.segmented_sends += seg.send(fd, &hdrs[..n], &iovs[..n]);
        } else {
            let mut done = 0;
            while done < n {
                // SAFETY: as above; names hold the senders' addresses.
                let r =
                    unsafe { libc::sendmmsg(fd, hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
                if r <= 0 {
                    done += 1;
                } else {
                    done += r as usize;
                }
            }
        }
        total.datagrams += n as u64;
    }
    total.gso_refused = seg.refused;
    Ok(total)
}

/// The segmenting sender: headers of its own over the received datagrams' buffers and names.
struct Segmenter {
    on: bool,
    refused: bool,
    max_segment: usize,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    controls: Vec<Control>,
    runs: Vec<(usize, usize)>,
    lens: Vec<usize>,
}

impl Segmenter {
    fn new(on: bool) -> Segmenter {
        let refused = on && !udp_segment_supported();
        if refused {
            eprintln!("reflector: the kernel does not take UDP_SEGMENT; returning one by one");
        }
        Segmenter {
            on: on && !refused,
            refused,
            max_segment: MAX_SEGMENT_SIZE,
            hdrs: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            controls: Vec::with_capacity(BATCH),
            runs: Vec::with_capacity(BATCH),
            lens: Vec::with_capacity(BATCH),
        }
    }

    /// Builds the send headers for received datagrams `from..`, segmenting runs if `segment`.
    fn build(&mut self, rx: &[libc::mmsghdr], iovs: &[libc::iovec], from: usize, segment: bool) {
        self.lens.clear();
        self.lens.extend(iovs[from..].iter().map(|v| v.iov_len));
        let name = |i: usize| {
            let h = &rx[from + i].msg_hdr;
            // SAFETY: the kernel wrote `msg_namelen` bytes of the sender's address there.
            unsafe { std::slice::from_raw_parts(h.msg_name as *const u8, h.msg_namelen as usize) }
        };
        if segment && self.on {
            let same = |a, b| name(a) == name(b);
            group(&self.lens, same, self.max_segment, &mut self.runs);
        } else {
            self.runs.clear();
            self.runs.extend((0..self.lens.len()).map(|i| (i, 1)));
        }
        self.hdrs.clear();
        self.iovs.clear();
        self.controls.clear();
        for run in &mut self.runs {
            run.0 += from;
        }
        // The iovecs first, so that the headers point into a vector that no longer grows.
        for &(first, count) in &self.runs {
            self.iovs.extend_from_slice(&iovs[first..first + count]);
            self.controls.push(Control([0; 32]));
        }
        let mut at = 0;
        for (k, &(first, count)) in self.runs.iter().enumerate() {
            // SAFETY: all-zero is a valid mmsghdr.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = rx[first].msg_hdr.msg_name;
            h.msg_hdr.msg_namelen = rx[first].msg_hdr.msg_namelen;
            h.msg_hdr.msg_iov = self.iovs[at..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = count;
            at += count;
            if count > 1 {
                let c = &mut self.controls[k];
                h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 (24) fits the 32-byte buffer, which is aligned
                // for a cmsghdr; the macros compute offsets within the header pointed at it.
                unsafe {
                    h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*cm).cmsg_level = libc::IPPROTO_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(cm).cast::<u16>(),
                        iovs[first].iov_len as u16,
                    );
                }
            }
            self.hdrs.push(h);
        }
    }

    /// Returns received datagrams `rx` (their lengths in `iovs`); returns the segmented sends.
    fn send(&mut self, fd: libc::c_int, rx: &[libc::mmsghdr], iovs: &[libc::iovec]) -> u64 {
        self.build(rx, iovs, 0, true);
        let mut segmented = 0;
        let mut done = 0;
        while done < self.hdrs.len() {
            let rest = &mut self.hdrs[done..];
            // SAFETY: every header points at live buffers: the received datagrams, their
            // senders' names, and this sender's iovecs and controls, unchanged until `build`.
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            if r > 0 {
                let r = r as usize;
                segmented += self.runs[done..done + r]
                    .iter()
                    .filter(|run| run.1 > 1)
                    .count() as u64;
                done += r;
                continue;
            }
            let e = io::Error::last_os_error();
            let (first, count) = self.runs[done];
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if count == 1 {
                // One datagram failed (its sender gone, say): skip it only.
                done += 1;
                continue;
            }
            // A segmented send is never dropped whole: it and the rest of the batch go again,
            // one by one. A kernel that refuses segmentation turns it off for good; segments
            // too large for the path lower the limit below their size.
            match e.raw_os_error() {
                Some(libc::EIO | libc::EINVAL) => {
                    eprintln!("reflector: UDP segmentation refused ({e}); returning one by one");
                    self.on = false;
                    self.refused = true;
                }
                Some(libc::EMSGSIZE) => {
                    self.max_segment = self.max_segment.min(iovs[first].iov_len - 1);
                }
                _ => {}
            }
            self.build(rx, iovs, first, false);
            done = 0;
        }
        segmented
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(lens: &[usize], same: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize)> {
        let mut r = Vec::new();
        group(lens, same, MAX_SEGMENT_SIZE, &mut r);
        r
    }

    #[test]
    fn runs_group_one_sender_one_size_the_last_shorter() {
        let from = [0, 0, 0, 1, 1, 0, 0, 0];
        let lens = [100, 100, 60, 100, 100, 100, 100, 100];
        let same = |a: usize, b: usize| from[a] == from[b];
        // The shorter third ends its run; another sender starts one.
        assert_eq!(runs(&lens, same), vec![(0, 3), (3, 2), (5, 3)]);
        // A longer datagram never joins; empty ones neither start nor join a run.
        assert_eq!(
            runs(&[100, 200, 0, 0, 50], |_, _| true),
            vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]
        );
        // Above the segment size limit, one by one.
        assert_eq!(runs(&[1500, 1500], |_, _| true).len(), 2);
        assert_eq!(runs(&[1452, 1452], |_, _| true), vec![(0, 2)]);
    }

    #[test]
    fn runs_stop_at_64_segments_and_65507_bytes() {
        let lens = vec![10; 130];
        assert_eq!(runs(&lens, |_, _| true), vec![(0, 64), (64, 64), (128, 2)]);
        // 1,400-byte segments: 46 fit in 65,507 bytes (64,400), 47 would not.
        let lens = vec![1400; 50];
        assert_eq!(runs(&lens, |_, _| true), vec![(0, 46), (46, 4)]);
    }
}
