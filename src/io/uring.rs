//! The io_uring backend: per worker one ring, a multishot `recvmsg` into a ring of provided
//! buffers, and sends straight out of those buffers.
//!
//! A batch is what one wait for completions brings: every datagram in it is decided where the
//! kernel wrote it; every decided send becomes a `sendmsg` whose iovecs point at `Out::buf` (the
//! header), the receive buffer (the payload span) and static bytes; one `io_uring_enter` submits
//! them all and waits for their completions; then the batch's buffers go back to the ring.
//! Nothing is copied in user space and nothing is allocated per datagram.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

use super::{
    Backend, CONTROL_LEN, Egress, Inbox, POLL_MS, Source, Worker, queue_drops, source, to_sockaddr,
};
use crate::metrics::Counters;
use crate::out::Out;

/// Receive buffers per worker (a power of two). Each holds a whole datagram, but only the pages
/// a datagram touches become resident.
const BUFFERS: u16 = 512;
/// Submission queue entries; the completion queue has four times as many.
const SQ_ENTRIES: u32 = 1024;
/// The buffer group of the receive buffers.
const GROUP: u16 = 0;
/// Room for the source address at the head of each receive buffer.
const NAME_LEN: usize = size_of::<libc::sockaddr_storage>();
/// Bytes the kernel writes before the name in a multishot `recvmsg` buffer.
const RECVMSG_OUT: usize = 16;
/// Under load, how often worker 0 sends a slice of the reaper's sends between received batches.
const EXTRA_EVERY_MS: u64 = 1;
/// Reaper sends per slice: about a tenth of a millisecond of sending.
const EXTRA_SLICE: usize = 64;
/// Reaper batches that may wait for worker 0 before the reaper blocks.
const INBOX_DEPTH: usize = 64;

/// `user_data` of the multishot receive; sends carry their index in the batch.
const RECV: u64 = u64::MAX;
/// `user_data` of the multishot poll on the inbox's eventfd.
const WAKE: u64 = u64::MAX - 1;

/// io_uring with multishot receive into provided buffers.
pub struct Uring;

fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    // One thread submits; completions are run when it asks for them, not by interrupting it.
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(SQ_ENTRIES * 4);
    b
}

/// Whether the kernel lets this process run the backend: ring set-up with the flags it uses,
/// the opcodes, and a provided-buffer ring. The error says which step was refused.
pub fn probe() -> io::Result<()> {
    let step = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let ring = builder().build(8).map_err(|e| step("io_uring_setup", e))?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| step("io_uring probe", e))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel lacks IORING_OP_{name}"),
            ));
        }
    }
    let bufs = BufRing::new(8, 64).map_err(|e| step("buffer ring memory", e))?;
    bufs.register(&ring)
        .map_err(|e| step("buffer ring registration", e))?;
    Ok(())
}

/// A provided-buffer ring: the ring of descriptors the kernel takes buffers from, and the
/// buffers, both in anonymous mappings that outlive their registration.
struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    bufs: *mut u8,
    bufs_bytes: usize,
    entries: u16,
    buf_len: usize,
    tail: u16,
}

fn map(bytes: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl BufRing {
    fn new(entries: u16, buf_len: usize) -> io::Result<BufRing> {
        debug_assert!(entries.is_power_of_two());
        let ring_bytes = usize::from(entries) * size_of::<BufRingEntry>();
        let bufs_bytes = usize::from(entries) * buf_len;
        let ring: *mut BufRingEntry = map(ring_bytes)?.cast();
        let bufs = match map(bufs_bytes) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `ring` was mapped just above with this size.
                unsafe { libc::munmap(ring.cast(), ring_bytes) };
                return Err(e);
            }
        };
        Ok(BufRing {
            ring,
            ring_bytes,
            bufs,
            bufs_bytes,
            entries,
            buf_len,
            tail: 0,
        })
    }

    fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the mapping stays valid until after the ring is dropped (see `Worker` loop:
        // the ring is declared after this, so it is dropped first).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(self.ring as u64, self.entries, GROUP, 0)
        }
    }

    /// Queues buffer `bid` for the kernel (visible after [`BufRing::publish`]).
    fn provide(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` < entries, inside the ring mapping; `bid` < entries, inside the buffers.
        unsafe {
            let e = &mut *self.ring.add(slot);
            e.set_addr(self.bufs.add(usize::from(bid) * self.buf_len) as u64);
            e.set_len(self.buf_len as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the provided buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail lives in the ring mapping and is only written by this thread; the
        // release store orders the descriptor writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`.
    /// The first `len` bytes of buffer `bid`, for writing in place (a channel frame's field).
    fn get_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let bid = usize::from(bid % self.entries);
        // SAFETY: as in `get`; `&mut self` makes this the only view of the buffers meanwhile.
        unsafe {
            std::slice::from_raw_parts_mut(self.bufs.add(bid * self.buf_len), len.min(self.buf_len))
        }
    }

    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid % self.entries);
        // SAFETY: within the buffers mapping; the kernel wrote `len` bytes there and will not
        // touch the buffer again until it is provided anew.
        unsafe {
            std::slice::from_raw_parts(self.bufs.add(bid * self.buf_len), len.min(self.buf_len))
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both were mapped with these sizes in `new`.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
            libc::munmap(self.bufs.cast(), self.bufs_bytes);
        }
    }
}

/// A received datagram held for the batch: its buffer, and where the payload is in it.
#[derive(Clone, Copy)]
struct Input {
    bid: u16,
    start: usize,
    len: usize,
}

/// The `sendmsg` headers of a batch, rebuilt each batch in vectors that keep their capacity.
#[derive(Default)]
struct Sends {
    hdrs: Vec<libc::msghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    /// Where each header's iovecs end in `iovs`, until the pointers are fixed.
    iov_ends: Vec<usize>,
}

// SAFETY: the raw pointers are only meaningful within one batch on the worker's thread.
unsafe impl Send for Sends {}

impl Sends {
    fn clear(&mut self) {
        self.hdrs.clear();
        self.iovs.clear();
        self.names.clear();
        self.iov_ends.clear();
    }

    /// Adds datagrams `which` of `out`, whose `Seg::Input` ranges refer to `input(i)`.
    fn add<'a>(
        &mut self,
        out: &'a Out,
        which: std::ops::Range<usize>,
        v6: bool,
        input: impl Fn(usize) -> &'a [u8],
    ) {
        for s in &out.sends[which] {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut name: libc::sockaddr_storage = unsafe { zeroed() };
            let len = to_sockaddr(s.to, v6, &mut name);
            self.names.push(name);
            for seg in out.segments(s, input(s.input)) {
                if !seg.is_empty() {
                    self.iovs.push(libc::iovec {
                        iov_base: seg.as_ptr() as *mut _,
                        iov_len: seg.len(),
                    });
                }
            }
            self.iov_ends.push(self.iovs.len());
            // SAFETY: all-zero is a valid msghdr.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_namelen = len;
            self.hdrs.push(h);
        }
    }

    /// Points every header at its name and iovecs, now that no vector will grow.
    fn fix(&mut self) {
        let mut start = 0;
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            let end = self.iov_ends[i];
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = self.iovs[start..].as_mut_ptr();
            h.msg_iovlen = end - start;
            start = end;
        }
    }
}

/// Pushes `e`, submitting what is queued first if the submission queue is full.
fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every entry points at memory that outlives its completion: the batch's
        // headers, names, iovecs, `Out` buffers and receive buffers are kept until all sends
        // of the batch completed; the receive header and the eventfd live as long as the ring.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

/// Errors of a wait that only mean "nothing yet".
fn benign(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

impl Backend for Uring {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn egress(&self, workers: &mut [Worker]) -> io::Result<Box<dyn Egress>> {
        // SAFETY: eventfd has no memory preconditions; the fd is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (tx, rx) = mpsc::sync_channel(INBOX_DEPTH);
        let first = workers
            .first_mut()
            .ok_or_else(|| io::Error::other("no workers"))?;
        first.inbox = Some(Inbox {
            batches: rx,
            wake: wake.clone(),
        });
        Ok(Box::new(RingEgress { tx, wake }))
    }

    fn run(&self, mut w: Worker) -> io::Result<()> {
        let buf_len = RECVMSG_OUT + NAME_LEN + CONTROL_LEN + w.max_datagram + 1;
        // Everything a request in flight points at is declared before the ring, so dropped after
        // it (the kernel may read or write them until the ring is gone, even on an error return):
        // the receive buffers and header, and the batch's outputs and send headers.
        let mut bufs = BufRing::new(BUFFERS, buf_len)?;
        // SAFETY: all-zero is a valid msghdr; the kernel reads only the name and control sizes.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as u32;
        recv_hdr.msg_controllen = CONTROL_LEN;
        let mut out = Out::default();
        // The reaper's batch being sent, a slice per turn of the loop between batches of
        // received datagrams, so that a million keepalives never hold up forwarding for long;
        // the next is taken from the channel only when it is done, so the reaper waits.
        let mut current: Option<Out> = None;
        let mut sends = Sends::default();
        let mut ring = builder().build(SQ_ENTRIES)?;
        bufs.register(&ring)?;
        for bid in 0..BUFFERS {
            bufs.provide(bid);
        }
        bufs.publish();

        let sock = Fd(w.socket.as_raw_fd());
        let v6 = w.socket.local_addr()?.is_ipv6();
        let recv = opcode::RecvMsgMulti::new(sock, &*recv_hdr, GROUP)
            .build()
            .user_data(RECV);
        push(&mut ring, &recv)?;
        let inbox = w.inbox.take();
        let wake = inbox.as_ref().map(|i| {
            opcode::PollAdd::new(Fd(i.wake.as_raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(WAKE)
        });
        if let Some(e) = &wake {
            push(&mut ring, e)?;
        }

        let timeout = Timespec::new().nsec(POLL_MS as u32 * 1_000_000);
        let no_wait = Timespec::new();
        let mut inputs: Vec<Input> = Vec::new();
        let (mut extra_at, mut extra_done) = (0, 0);
        let mut ready: Vec<(u64, i32, u32)> = Vec::new();
        while !w.stop.load(Ordering::Relaxed) {
            if ready.is_empty() {
                if current.is_none() {
                    current = inbox.as_ref().and_then(|i| i.batches.try_recv().ok());
                }
                let wait = if current.is_none() {
                    &timeout
                } else {
                    &no_wait
                };
                let args = SubmitArgs::new().timespec(wait);
                match ring.submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e) if benign(&e) => {}
                    Err(e) => return Err(e),
                }
                ready.extend(
                    ring.completion()
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
            }
            let now = w.clock.now();
            let (mut rearm_recv, mut rearm_wake) = (false, false);
            for (data, res, flags) in ready.drain(..) {
                match data {
                    RECV => {
                        rearm_recv |= !cqueue::more(flags);
                        if res < 0 {
                            if -res == libc::ENOBUFS {
                                Counters::add(&w.counters.recv_no_buffers, 1);
                            } else {
                                let e = io::Error::from_raw_os_error(-res);
                                tracing::debug!(error = %e, "recvmsg");
                            }
                            continue;
                        }
                        let Some(bid) = cqueue::buffer_select(flags) else {
                            continue;
                        };
                        let buf = bufs.get(bid, res as usize);
                        let index = inputs.len();
                        out.input = index;
                        let Ok(m) = RecvMsgOut::parse(buf, &recv_hdr) else {
                            inputs.push(Input {
                                bid,
                                start: 0,
                                len: 0,
                            });
                            continue;
                        };
                        let payload = m.payload_data();
                        let start = payload.as_ptr() as usize - buf.as_ptr() as usize;
                        inputs.push(Input {
                            bid,
                            start,
                            len: payload.len(),
                        });
                        if let Some(n) = queue_drops(m.control_data()) {
                            w.counters
                                .queue_drops
                                .store(u64::from(n), Ordering::Relaxed);
                        }
                        let from = match name_of(m.name_data(), m.control_data()) {
                            Some(Source::Peer(a)) => a,
                            Some(Source::Mapped) => {
                                w.router.mapped_source(payload.len());
                                continue;
                            }
                            None => continue,
                        };
                        if m.is_payload_truncated() || payload.len() > w.max_datagram {
                            w.router.truncated(payload.len(), from, now, &mut out);
                        } else {
                            let len = payload.len();
                            let d = &mut bufs.get_mut(bid, start + len)[start..];
                            w.router.handle(d, from, now, &mut out);
                        }
                    }
                    WAKE => {
                        rearm_wake |= !cqueue::more(flags);
                        if let Some(i) = &inbox {
                            let mut n = 0u64;
                            // SAFETY: reads 8 bytes into `n` from our own eventfd.
                            unsafe {
                                libc::read(i.wake.as_raw_fd(), (&mut n as *mut u64).cast(), 8)
                            };
                            if current.is_none() {
                                current = i.batches.try_recv().ok();
                            }
                        }
                    }
                    // A send completion of an earlier batch cannot be left over: every batch
                    // waits for all of its own.
                    _ => {}
                }
            }

            sends.clear();
            sends.add(&out, 0..out.sends.len(), v6, |i| {
                let x = inputs[i];
                &bufs.get(x.bid, x.start + x.len)[x.start..]
            });
            // A slice of the reaper's oldest batch, when no datagram waits or every
            // EXTRA_EVERY_MS under load: forwarding first. The batch stays queued (its bytes in
            // place) until its last slice has been sent.
            let mut slice = 0..0;
            if let Some(o) = &current {
                if inputs.is_empty() || now.ms >= extra_at + EXTRA_EVERY_MS {
                    extra_at = now.ms;
                    slice = extra_done..(extra_done + EXTRA_SLICE).min(o.sends.len());
                    sends.add(o, slice.clone(), v6, |_| &[]);
                }
            }
            sends.fix();
            for (i, h) in sends.hdrs.iter().enumerate() {
                let e = opcode::SendMsg::new(sock, h).build().user_data(i as u64);
                push(&mut ring, &e)?;
            }
            let mut outstanding = sends.hdrs.len();
            while outstanding > 0 {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if benign(&e) => {}
                    Err(e) => return Err(e),
                }
                for c in ring.completion() {
                    if c.user_data() < WAKE {
                        outstanding -= 1;
                        sent(&w.counters, c.result());
                    } else {
                        ready.push((c.user_data(), c.result(), c.flags()));
                    }
                }
            }

            for x in inputs.drain(..) {
                bufs.provide(x.bid);
            }
            // Retired once every send of it has gone, including a batch with none left (the
            // budgets withheld them all): one kept would make the loop poll without waiting.
            extra_done = extra_done.max(slice.end);
            if current
                .as_ref()
                .is_some_and(|o| extra_done >= o.sends.len())
            {
                current = None;
                extra_done = 0;
            }
            bufs.publish();
            // Re-armed only now that buffers are back, or it would stop again at once.
            if rearm_recv {
                push(&mut ring, &recv)?;
            }
            if let (true, Some(e)) = (rearm_wake, &wake) {
                push(&mut ring, e)?;
            }
            out.clear();
        }
        Ok(())
    }
}

/// The source written at the head of a receive buffer, given its control data.
fn name_of(name: &[u8], control: &[u8]) -> Option<Source> {
    // SAFETY: all-zero is a valid sockaddr_storage; at most its size is copied into it.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    let n = name.len().min(NAME_LEN);
    // SAFETY: `n` bytes fit both the source slice and the storage.
    unsafe {
        ptr::copy_nonoverlapping(
            name.as_ptr(),
            (&mut s as *mut libc::sockaddr_storage).cast(),
            n,
        )
    };
    source(&s, control)
}

/// Counts one send completion.
fn sent(c: &Counters, res: i32) {
    if res >= 0 {
        Counters::add(&c.sent, 1);
        Counters::add(&c.sent_bytes, res as u64);
    } else {
        let e = io::Error::from_raw_os_error(-res);
        tracing::debug!(error = %e, "send failed");
        Counters::add(&c.send_errors, 1);
    }
}

/// The reaper's sends, handed to worker 0's ring through its inbox.
struct RingEgress {
    tx: mpsc::SyncSender<Out>,
    wake: Arc<OwnedFd>,
}

impl Egress for RingEgress {
    fn send(&mut self, out: &mut Out) {
        if out.sends.is_empty() {
            out.clear();
            return;
        }
        let batch = std::mem::take(out);
        // A closed inbox means the worker has stopped: the relay is shutting down.
        if self.tx.send(batch).is_ok() {
            let one = 1u64;
            // SAFETY: writes 8 bytes from `one` to our own eventfd.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}
