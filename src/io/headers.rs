//! The one builder of message headers, for both backends: a batch's decided sends as `msghdr`s,
//! with their destinations, iovecs and, for runs sent as one `UDP_SEGMENT` send, the control
//! message; and the one policy for what a refused segmented send means.
//!
//! The headers live in `mmsghdr`s so that the mmsg backend hands the array to `sendmmsg` and the
//! io_uring backend points one `SendMsg` at each `msg_hdr`. Their pointers are fixed by
//! [`Headers::fix`] once every vector has stopped growing, and stay valid until the next
//! [`Headers::clear`]: the caller keeps the headers, the `Out` and the inputs alive until the
//! kernel has taken every send.

use std::collections::HashMap;
use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;

use super::to_sockaddr;
use crate::metrics::Counters;
use crate::out::Out;

/// `UDP_SEGMENT` (linux/udp.h): the segment size of a send the kernel splits into datagrams.
pub const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS` is 64).
const MAX_SEGMENTS: usize = 64;
/// Most bytes one segmented send carries: a UDP datagram's largest payload.
const MAX_SEGMENTED_BYTES: usize = 65_507;
/// Largest datagram a run is segmented for: one that fits a 1,500-byte MTU over IPv6. The
/// kernel refuses (`EMSGSIZE`) segments larger than the path's MTU, where unsegmented datagrams
/// would be fragmented instead; a sender that meets the refusal lowers its limit below that
/// size for that destination only, and sends the run again one datagram at a time.
const MAX_SEGMENT_SIZE: usize = 1452;
/// Destinations with a lowered segment limit a sender remembers at most; when full it forgets
/// them all (each then costs one more refused send to learn again), so the map stays bounded
/// whatever paths peers have or claim (a forged ICMP "fragmentation needed" lowers a path).
const MAX_SMALL_PATHS: usize = 1024;

/// Room for one control message holding a `u16`, aligned as a `cmsghdr` must be.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 32]);

/// Whether, and up to what size per destination, a sender segments its runs; changed only by
/// [`Gso::refused`].
#[derive(Debug, Clone)]
pub struct Gso {
    on: bool,
    /// Destinations whose path refused segments of some size: the largest size to try there.
    small_paths: HashMap<SocketAddr, usize>,
}

impl Gso {
    /// Segmentation allowed (`on`) or not.
    pub fn new(on: bool) -> Gso {
        Gso {
            on,
            small_paths: HashMap::new(),
        }
    }

    /// Whether runs are segmented at all.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Largest datagram a run to `to` is segmented for.
    pub fn max_segment(&self, to: SocketAddr) -> usize {
        if self.small_paths.is_empty() {
            return MAX_SEGMENT_SIZE;
        }
        self.small_paths
            .get(&to)
            .copied()
            .unwrap_or(MAX_SEGMENT_SIZE)
    }

    /// Learns from `e`, the refusal of a segmented send of `size`-byte segments to `to`: a
    /// kernel or device without segmentation turns it off for good (logged and counted); a path
    /// whose MTU the segment size exceeds lowers that destination's limit below it. The caller
    /// sends the run again one datagram at a time, whatever the error, so that no run is ever
    /// lost whole.
    pub fn refused(&mut self, e: &io::Error, to: SocketAddr, size: usize, counters: &Counters) {
        match e.raw_os_error() {
            Some(libc::EIO | libc::EINVAL) if self.on => {
                tracing::warn!(error = %e, "UDP segmentation refused; sending datagrams one by one from now on");
                Counters::add(&counters.gso_refused, 1);
                self.on = false;
            }
            Some(libc::EMSGSIZE) => {
                tracing::debug!(%to, size, "segments too large for the path");
                if self.small_paths.len() >= MAX_SMALL_PATHS {
                    self.small_paths.clear();
                }
                let limit = self.max_segment(to).min(size.saturating_sub(1));
                self.small_paths.insert(to, limit);
            }
            _ => {}
        }
    }
}

/// The headers of one batch of sends, in vectors that keep their capacity between batches.
pub struct Headers {
    v6_socket: bool,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    /// Per header: the first send of its `Out` it carries, and how many.
    runs: Vec<(usize, usize)>,
    /// Per header: where its iovecs end in `iovs`, until [`Headers::fix`].
    iov_ends: Vec<usize>,
}

// SAFETY: the raw pointers in the header arrays point only into this value's own vectors and the
// buffers of the batch being sent, on the thread sending it; they are rewritten before every use.
unsafe impl Send for Headers {}

impl Headers {
    /// Headers for a socket of the given family (it decides how IPv4 destinations are written).
    pub fn new(v6_socket: bool) -> Headers {
        Headers {
            v6_socket,
            hdrs: Vec::new(),
            iovs: Vec::new(),
            names: Vec::new(),
            controls: Vec::new(),
            runs: Vec::new(),
            iov_ends: Vec::new(),
        }
    }

    /// Forgets every header, keeping the capacity.
    pub fn clear(&mut self) {
        self.hdrs.clear();
        self.iovs.clear();
        self.names.clear();
        self.controls.clear();
        self.runs.clear();
        self.iov_ends.clear();
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.hdrs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hdrs.is_empty()
    }

    /// Header `i`'s first send in its `Out`, and how many sends it carries.
    pub fn run(&self, i: usize) -> (usize, usize) {
        self.runs[i]
    }

    /// Adds headers for `out.sends[which]`, whose `Seg::Input` ranges refer to `input(i)`.
    /// Consecutive sends to one destination of one size (the last may be shorter) share one
    /// segmented header while `gso` allows (none: each alone).
    pub fn add<'a>(
        &mut self,
        out: &'a Out,
        which: std::ops::Range<usize>,
        input: &impl Fn(usize) -> &'a [u8],
        gso: Option<&Gso>,
    ) {
        let gso = gso.filter(|g| g.on);
        // The open run: its destination, segment size, bytes so far, whether a shorter datagram
        // already ended it, and whether its size may be segmented on its path.
        let mut open: Option<(SocketAddr, usize, usize, bool, bool)> = None;
        let first = which.start;
        for (i, s) in out.sends[which].iter().enumerate() {
            let len = s.wire_len();
            let joins = len > 0
                && open.is_some_and(|(to, size, bytes, ended, fits)| {
                    fits && to == s.to
                        && !ended
                        && len <= size
                        && bytes + len <= MAX_SEGMENTED_BYTES
                        && self.runs.last().is_some_and(|r| r.1 < MAX_SEGMENTS)
                });
            if joins {
                let run = self.runs.last_mut().expect("an open run");
                run.1 += 1;
                if let Some((_, size, bytes, ended, _)) = &mut open {
                    *bytes += len;
                    *ended = len < *size;
                }
            } else {
                // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
                self.names.push(unsafe { zeroed() });
                let namelen = to_sockaddr(s.to, self.v6_socket, self.names.last_mut().unwrap());
                // SAFETY: see above.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_namelen = namelen;
                // The run's segment size (its first datagram's length) until `fix`.
                h.msg_len = len as u32;
                self.hdrs.push(h);
                self.runs.push((first + i, 1));
                self.controls.push(Control([0; 32]));
                self.iov_ends.push(0);
                let fits = gso.is_some_and(|g| len <= g.max_segment(s.to));
                open = Some((s.to, len, len, len == 0, fits));
            }
            for seg in out.segments(s, input(s.input)) {
                if !seg.is_empty() {
                    self.iovs.push(libc::iovec {
                        iov_base: seg.as_ptr() as *mut _,
                        iov_len: seg.len(),
                    });
                }
            }
            *self.iov_ends.last_mut().expect("a header") = self.iovs.len();
        }
    }

    /// Points every header at its name, iovecs and control, now that no vector will grow.
    /// Until the next `clear` the headers may be given to the kernel.
    pub fn fix(&mut self) {
        let mut iov_start = 0;
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            let iov_end = self.iov_ends[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = self.iovs[iov_start..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = iov_end - iov_start;
            iov_start = iov_end;
            let size = std::mem::take(&mut h.msg_len);
            if self.runs[i].1 > 1 {
                let c = &mut self.controls[i];
                h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 (24) fits the 32-byte buffer, which is aligned for
                // a cmsghdr; the macros compute offsets within the header we point them at.
                unsafe {
                    h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*cm).cmsg_level = libc::IPPROTO_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), size as u16);
                }
            }
        }
    }

    /// The headers from `i` on, for `sendmmsg` (which writes each one's `msg_len`).
    pub fn mmsg_from(&mut self, i: usize) -> &mut [libc::mmsghdr] {
        &mut self.hdrs[i..]
    }

    /// Header `i`, for a `sendmsg`.
    pub fn msghdr(&self, i: usize) -> *const libc::msghdr {
        &self.hdrs[i].msg_hdr
    }
}
