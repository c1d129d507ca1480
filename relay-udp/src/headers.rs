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

use crate::control::{UDP_SEGMENT, to_sockaddr};
use crate::counters::Counters;
use crate::sends::{Destinations, Sends};

/// Most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS` is 64).
const MAX_SEGMENTS: usize = 64;
/// Most bytes one segmented send carries: a UDP datagram's largest payload.
const MAX_SEGMENTED_BYTES: usize = 65_507;
/// Largest datagram a run is segmented for: one that fits a 1,500-byte MTU over IPv6. The
/// kernel refuses (`EMSGSIZE`) segments larger than the path's MTU, where unsegmented datagrams
/// would be fragmented instead; a sender that meets the refusal lowers its limit below that
/// size for that destination only, and sends the run again one datagram at a time.
const MAX_SEGMENT_SIZE: usize = 1452;
/// Destinations with a lowered segment limit (or whose refused runs are not yet judged) a
/// sender remembers at most; when full it forgets them all (each then costs one more refused
/// send to learn again), so the maps stay bounded whatever paths peers have or claim (a forged
/// ICMP "fragmentation needed" lowers a path).
const MAX_SMALL_PATHS: usize = 1024;

/// Room for one control message holding a `u16`, aligned as a `cmsghdr` must be.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 32]);

/// Whether, and up to what size per destination, a sender segments its runs; changed only by
/// what the kernel says of a refused segmented run ([`Gso::refused`]) and of its datagrams sent
/// again alone ([`Gso::resent`]).
#[derive(Debug, Clone)]
pub struct Gso {
    on: bool,
    /// Destinations whose sends failed at some segment size: the largest size to try there (0:
    /// none, the destination fails unsegmented too).
    small_paths: HashMap<SocketAddr, usize>,
    /// Destinations whose segmented run the kernel refused, until a datagram sent there alone
    /// tells whose fault it was: the error and the run's segment size.
    suspects: HashMap<SocketAddr, (i32, usize)>,
}

impl Gso {
    /// Segmentation allowed (`on`) or not.
    pub fn new(on: bool) -> Gso {
        Gso {
            on,
            small_paths: HashMap::new(),
            suspects: HashMap::new(),
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

    /// Notes `e`, the refusal of a segmented send of `size`-byte segments to `to`, for
    /// [`Gso::resent`] to judge. The caller sends the run again one datagram at a time,
    /// whatever the error, so that no run is ever lost whole.
    pub fn refused(&mut self, e: &io::Error, to: SocketAddr, size: usize) {
        if let Some(errno @ (libc::EIO | libc::EINVAL | libc::EMSGSIZE)) = e.raw_os_error() {
            bounded_insert(&mut self.suspects, to, (errno, size));
        }
    }

    /// Learns from a datagram sent alone to `to` (`ok`: the kernel took it) whose segmented run
    /// was refused. If it failed too, the fault is the destination's (a port 0, an address the
    /// kernel cannot route): runs to it leave unsegmented from now on, and segmentation stays on
    /// for everyone else. If it went, the refusal was of segmentation: a path whose MTU the
    /// segments exceeded (`EMSGSIZE`) lowers that destination's limit below their size; a
    /// kernel or device that cannot segment (`EIO`, `EINVAL`) turns it off for this sender
    /// (logged and counted once).
    pub fn resent(&mut self, to: SocketAddr, ok: bool, counters: &Counters) {
        if self.suspects.is_empty() {
            return;
        }
        let Some((errno, size)) = self.suspects.remove(&to) else {
            return;
        };
        if !ok {
            tracing::debug!(%to, "sends there fail segmented or not; not segmented there");
            bounded_insert(&mut self.small_paths, to, 0);
        } else if errno == libc::EMSGSIZE {
            tracing::debug!(%to, size, "segments too large for the path");
            let limit = self.max_segment(to).min(size.saturating_sub(1));
            bounded_insert(&mut self.small_paths, to, limit);
        } else if self.on {
            let e = io::Error::from_raw_os_error(errno);
            tracing::warn!(error = %e, "UDP segmentation refused; sending datagrams one by one from now on");
            Counters::add(&counters.gso_refused, 1);
            self.on = false;
        }
    }
}

/// Inserts into a map of at most [`MAX_SMALL_PATHS`] destinations, forgetting them all when full.
fn bounded_insert<V>(map: &mut HashMap<SocketAddr, V>, to: SocketAddr, v: V) {
    if map.len() >= MAX_SMALL_PATHS && !map.contains_key(&to) {
        map.clear();
    }
    map.insert(to, v);
}

/// The headers of one batch of sends, in vectors that keep their capacity between batches.
pub struct Headers {
    v6_socket: bool,
    /// The destinations served: no header is built for any other.
    peers: Box<dyn Destinations>,
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
    /// Headers for a socket of the given family (it decides how IPv4 destinations are written),
    /// to the destinations `peers` serves.
    pub fn new(v6_socket: bool, peers: Box<dyn Destinations>) -> Headers {
        Headers {
            v6_socket,
            peers,
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

    /// Header `i`'s first datagram in its batch, and how many it carries.
    pub fn run(&self, i: usize) -> (usize, usize) {
        self.runs[i]
    }

    /// Adds headers for datagrams `which` of `out`, whose segments may point into `input(i)`.
    /// Consecutive sends to one destination of one size (the last may be shorter) share one
    /// segmented header while `gso` allows (none: each alone). A send to an address the relay
    /// never sends to gets no header: how many were dropped so.
    pub fn add<'a>(
        &mut self,
        out: &'a impl Sends,
        which: std::ops::Range<usize>,
        input: &impl Fn(usize) -> &'a [u8],
        gso: Option<&Gso>,
    ) -> usize {
        let gso = gso.filter(|g| g.on);
        // The open run: its destination, segment size, bytes so far, whether a shorter datagram
        // already ended it, and whether its size may be segmented on its path.
        let mut open: Option<(SocketAddr, usize, usize, bool, bool)> = None;
        let mut dropped = 0;
        for k in which {
            let to = out.to(k);
            // Defence in depth: ingress refuses such peers, but a state handed over or restored
            // may hold one, and a send to `0.0.0.0` or `::` would reach the relay's own host.
            // A run's destination was checked at its first send.
            if open.is_none_or(|o| o.0 != to) && !self.peers.serves(to) {
                dropped += 1;
                open = None;
                continue;
            }
            // The length of what is sent, not what the batch says it is: a run's segment size is
            // its first datagram's, which must be exact.
            let segs = out.segments(k, input(out.input(k)));
            let len: usize = segs.iter().map(|s| s.len()).sum();
            let joins = len > 0
                && open.is_some_and(|(run_to, size, bytes, ended, fits)| {
                    fits && run_to == to
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
                let namelen = to_sockaddr(to, self.v6_socket, self.names.last_mut().unwrap());
                // SAFETY: see above.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_namelen = namelen;
                // The run's segment size (its first datagram's length) until `fix`.
                h.msg_len = len as u32;
                self.hdrs.push(h);
                self.runs.push((k, 1));
                self.controls.push(Control([0; 32]));
                self.iov_ends.push(0);
                let fits = gso.is_some_and(|g| len <= g.max_segment(to));
                open = Some((to, len, len, len == 0, fits));
            }
            for seg in segs {
                if !seg.is_empty() {
                    self.iovs.push(libc::iovec {
                        iov_base: seg.as_ptr() as *mut _,
                        iov_len: seg.len(),
                    });
                }
            }
            *self.iov_ends.last_mut().expect("a header") = self.iovs.len();
        }
        dropped
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sends::Datagrams;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn a_destination_that_fails_alone_too_is_its_own_fault() {
        let c = Counters::default();
        let (bad, good) = (sa("203.0.113.7:9"), sa("198.51.100.1:9"));
        let mut g = Gso::new(true);
        g.refused(&err(libc::EINVAL), bad, 100);
        g.resent(bad, false, &c);
        assert!(g.on(), "segmentation stays on");
        assert_eq!(g.max_segment(bad), 0, "not segmented there");
        assert_eq!(g.max_segment(good), MAX_SEGMENT_SIZE);
        assert_eq!(c.gso_refused.load(Relaxed), 0);
        // A single send that was no retry judges nothing.
        g.resent(good, true, &c);
        assert!(g.on());
    }

    #[test]
    fn a_refusal_where_single_sends_go_is_the_kernels() {
        let c = Counters::default();
        let to = sa("203.0.113.7:9");
        let mut g = Gso::new(true);
        g.refused(&err(libc::EMSGSIZE), to, 1452);
        g.resent(to, true, &c);
        assert!(g.on());
        assert_eq!(g.max_segment(to), 1451, "the path's limit lowered");
        for errno in [libc::EIO, libc::EINVAL] {
            g.refused(&err(errno), to, 100);
            g.resent(to, true, &c);
            assert!(!g.on(), "{errno}");
        }
        assert_eq!(c.gso_refused.load(Relaxed), 1, "counted once");
        // Another error is no verdict on segmentation.
        let mut g = Gso::new(true);
        g.refused(&err(libc::ENETUNREACH), to, 100);
        g.resent(to, true, &c);
        assert!(g.on());
        assert_eq!(g.max_segment(to), MAX_SEGMENT_SIZE);
    }

    #[test]
    fn the_destinations_remembered_stay_bounded() {
        let c = Counters::default();
        let mut g = Gso::new(true);
        for port in 1..=(MAX_SMALL_PATHS as u16 + 1) {
            let to = SocketAddr::from(([203, 0, 113, 7], port));
            g.refused(&err(libc::EINVAL), to, 100);
            g.resent(to, false, &c);
            assert!(g.small_paths.len() <= MAX_SMALL_PATHS);
        }
        for port in 1..=(MAX_SMALL_PATHS as u16 + 1) {
            g.refused(
                &err(libc::EINVAL),
                SocketAddr::from(([203, 0, 113, 8], port)),
                100,
            );
            assert!(g.suspects.len() <= MAX_SMALL_PATHS);
        }
        assert!(g.on());
    }

    #[test]
    fn no_header_is_built_for_a_destination_not_served() {
        let allowed = Arc::new(AtomicBool::new(false));
        let lan = sa("10.0.0.1:9");
        let served = {
            let allowed = allowed.clone();
            move |to: SocketAddr| to.port() != 0 && (to != lan || allowed.load(Relaxed))
        };
        let mut h = Headers::new(false, Box::new(served));
        let mut out = Datagrams::default();
        let good = sa("127.0.0.1:9");
        let never = ["127.0.0.1:0", "10.0.0.1:9", "127.0.0.2:0"];
        for to in std::iter::once(good)
            .chain(never.iter().map(|s| sa(s)))
            .chain([good, good])
        {
            out.push(to, b"x");
        }
        let gso = Gso::new(true);
        let dropped = h.add(&out, 0..out.count(), &|_| &[], Some(&gso));
        assert_eq!(dropped, never.len());
        assert_eq!(h.len(), 2, "the good one, then a run of two");
        assert_eq!(h.run(0), (0, 1));
        assert_eq!(h.run(1), (1 + never.len(), 2));
        // What the filter serves is asked anew for each run.
        allowed.store(true, Relaxed);
        h.clear();
        let dropped = h.add(&out, 0..out.count(), &|_| &[], Some(&gso));
        assert_eq!(dropped, never.len() - 1);
    }
}
