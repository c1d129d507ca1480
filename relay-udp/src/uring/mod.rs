//! The io_uring backend: per worker one ring, a multishot `recvmsg` into a ring of provided
//! buffers, and sends straight out of those buffers.
//!
//! A batch is what one wait for completions brings: every datagram in it is decided where the
//! kernel wrote it; the decided sends become `sendmsg`s through the shared [`Headers`] builder
//! (a run to one destination as one `UDP_SEGMENT` send), whose iovecs point at the batch's own bytes (the
//! header), the receive buffer (the payload span) and static bytes. The next `io_uring_enter`
//! submits them and reaps their completions together with the next receives, which are decided
//! into a second batch meanwhile; a batch's buffers go back to the ring once all its sends have
//! completed. Nothing is copied in user space and nothing is allocated per datagram.

use std::io;
use std::mem::{ManuallyDrop, size_of, zeroed};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use io_uring::types::{Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

mod bufring;

use bufring::{BufRing, Lease};

use crate::control::{CONTROL_LEN, Source, source};
use crate::counters::Counters;
use crate::headers::{Gso, Headers};
use crate::sends::{Destinations, Sends};
use crate::socket::POLL_MS;
use crate::worker::{Decide, Egress, Inbox, Received, Worker, receive_len};

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
/// `user_data` of the cancellation of the multishot receive, when the worker stops.
const CANCEL: u64 = u64::MAX - 2;
/// How long a stopping worker may take to decide and send what its receive already took.
const DRAIN_MS: u64 = 1000;

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
    // The buffers outlive the ring they are registered with.
    let mut bufs = BufRing::new(8, 64).map_err(|e| step("buffer ring memory", e))?;
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
    bufs.register(&ring)
        .map_err(|e| step("buffer ring registration", e))?;
    Ok(())
}

/// One batch of sends: what was decided for the datagrams it received (or a batch of the
/// reaper's), its headers, and the buffers those point into, kept together until the kernel has
/// completed every send of it.
struct Batch<O> {
    out: O,
    headers: Headers,
    /// The receive buffers the batch's datagrams are in.
    leases: Vec<Lease>,
    /// Per decided datagram: its lease (an index of `leases`) and its range there.
    inputs: Vec<(usize, Range<usize>)>,
    /// Sends of `out` not yet submitted, a round of at most [`ROUND`] at a time.
    pending: Range<usize>,
    /// Segmented runs of the round in flight that the kernel refused, to send again one
    /// datagram at a time.
    retry: Vec<(usize, usize)>,
    /// Submitted sends not yet completed.
    outstanding: usize,
    /// Whether it holds a batch (until [`Batch::advance`] releases it).
    busy: bool,
}

impl<O: Sends> Batch<O> {
    fn new(v6: bool, destinations: Box<dyn Destinations>) -> Batch<O> {
        Batch {
            out: O::default(),
            headers: Headers::new(v6, destinations),
            leases: Vec::new(),
            inputs: Vec::new(),
            pending: 0..0,
            retry: Vec::new(),
            outstanding: 0,
            busy: false,
        }
    }

    /// Builds the headers of the next round, once the last has completed: the refused runs one
    /// datagram at a time, else up to `most` pending sends, segmented as `gso` allows (sends to
    /// a destination the relay never sends to dropped and counted). False if none.
    fn build(&mut self, bufs: &BufRing, gso: &Gso, most: usize, counters: &Counters) -> bool {
        debug_assert_eq!(self.outstanding, 0);
        self.headers.clear();
        let (leases, inputs) = (&self.leases, &self.inputs);
        // The reaper's batches refer to no input: their sends hold no `Seg::Input`.
        let input = |k: usize| -> &[u8] {
            inputs
                .get(k)
                .map_or(&[], |(l, r)| &bufs.get(&leases[*l], r.end)[r.clone()])
        };
        if self.retry.is_empty() {
            let end = self.pending.end.min(self.pending.start + most.min(ROUND));
            let dropped = self
                .headers
                .add(&self.out, self.pending.start..end, &input, Some(gso));
            Counters::add(&counters.bad_destination, dropped as u64);
            self.pending.start = end;
        } else {
            // A refused run's destination was served when it was built: nothing to count.
            for (first, n) in self.retry.drain(..) {
                self.headers.add(&self.out, first..first + n, &input, None);
            }
        }
        self.headers.fix();
        !self.headers.is_empty()
    }

    /// Takes one send's completion: header `i`, result `res`. A refused segmented run is sent
    /// again one datagram at a time in the next round, so its datagrams may arrive after later
    /// ones of this round to the same destination: once per destination whose path refuses
    /// its segment size, and once per worker if the kernel refuses segmentation altogether.
    /// (Linking the round's sends would keep the order, but linked sends are issued one by one
    /// from task work, and two batches' chains then interleave: it costs more than it keeps.)
    fn completed(&mut self, i: usize, res: i32, gso: &mut Gso, counters: &Counters) {
        self.outstanding -= 1;
        let (first, n) = self.headers.run(i);
        let to = self.out.to(first);
        if res >= 0 {
            counters.sent_run(n, res as usize);
            if n == 1 {
                gso.resent(to, true, counters);
            }
            return;
        }
        let e = io::Error::from_raw_os_error(-res);
        if n > 1 {
            // Never dropped whole: its datagrams go again one by one.
            gso.refused(&e, to, self.out.wire_len(first));
            self.retry.push((first, n));
        } else {
            tracing::debug!(error = %e, %to, "send failed");
            Counters::add(&counters.send_errors, 1);
            gso.resent(to, false, counters);
        }
    }

    /// Forgets everything, returning the buffers to `bufs`.
    fn release(&mut self, bufs: &mut BufRing) {
        for l in self.leases.drain(..) {
            bufs.provide(l);
        }
        self.inputs.clear();
        self.out.clear();
        self.headers.clear();
        self.pending = 0..0;
        self.retry.clear();
        self.busy = false;
    }

    /// Once its last round has completed: sends the rest of a failed round again, or (but for
    /// the reaper's, which are paced) the next round, or, with nothing left to send, releases
    /// it. True if it released the batch.
    fn advance(
        &mut self,
        ring: &mut IoUring,
        sock: Fd,
        slot: usize,
        gso: &Gso,
        bufs: &mut BufRing,
        counters: &Counters,
    ) -> io::Result<bool> {
        if !self.busy || self.outstanding > 0 {
            return Ok(false);
        }
        let more = !self.retry.is_empty() || (slot != REAPER && !self.pending.is_empty());
        if more && self.build(bufs, gso, ROUND, counters) {
            submit(ring, sock, self, slot)?;
            return Ok(false);
        }
        if self.pending.is_empty() && self.retry.is_empty() {
            self.release(bufs);
            return Ok(true);
        }
        Ok(false)
    }
}

/// Batches of received datagrams in flight at once: one being decided while the other's sends
/// complete, so that a worker never waits for its sends before taking the next receives.
const SLOTS: usize = 2;
/// The reaper's batch, in `user_data`.
const REAPER: usize = SLOTS;
/// Sends per round of a batch at most: the rounds of both batches and a reaper slice fit the
/// submission queue, and the completions in flight fit the completion queue, whatever a batch
/// decided (a batch of control messages may fan out to thousands of sends).
const ROUND: usize = 256;

/// `user_data` of send `i` of batch `slot`.
fn send_data(slot: usize, i: usize) -> u64 {
    ((slot as u64) << 32) | i as u64
}

/// Everything the kernel may read or write while a request is in flight, owned together with
/// the ring so that the ring is torn down first: until it is, the kernel may still write into
/// the receive buffers and read the headers and the bytes they point at, even after an error.
struct Rig<O> {
    ring: ManuallyDrop<IoUring>,
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    batches: [Batch<O>; SLOTS],
    /// The reaper's batch being sent, a slice at a time between batches of received datagrams.
    reaper: Batch<O>,
}

impl<O> Drop for Rig<O> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, before the fields the kernel may still use.
        unsafe { ManuallyDrop::drop(&mut self.ring) }
    }
}

/// Pushes `e`, submitting what is queued first if the submission queue is full.
fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every entry points at memory the `Rig` owns, which outlives the ring: the
        // receive header and buffers, and a batch's headers, sends and leased buffers, kept
        // until every send of the batch has completed.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

/// Submits the headers `batch` just built, as sends tagged with `slot`; the kernel issues them
/// in order, inline, at the next enter.
fn submit<O>(ring: &mut IoUring, sock: Fd, batch: &mut Batch<O>, slot: usize) -> io::Result<()> {
    for i in 0..batch.headers.len() {
        let e = opcode::SendMsg::new(sock, batch.headers.msghdr(i))
            .build()
            .user_data(send_data(slot, i));
        push(ring, &e)?;
    }
    batch.outstanding = batch.headers.len();
    Ok(())
}

/// Errors of a wait that only mean "nothing yet".
fn benign(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

/// Other threads' sends go to worker 0's ring through its inbox.
pub(crate) fn egress<D: Decide>(
    workers: &mut [Worker<D>],
    counters: Arc<Counters>,
) -> io::Result<Box<dyn Egress<D::Out>>> {
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
        counters,
    });
    Ok(Box::new(RingEgress { tx, wake }))
}

/// Runs worker `w` until its stop flag is set, on a ring of its own.
pub(crate) fn run<D: Decide>(mut w: Worker<D>) -> io::Result<()> {
    let buf_len = RECVMSG_OUT + NAME_LEN + CONTROL_LEN + receive_len(w.max_datagram, w.gro);
    let v6 = w.socket.local_addr()?.is_ipv6();
    // SAFETY: all-zero is a valid msghdr; the kernel reads only the name and control sizes.
    let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
    recv_hdr.msg_namelen = NAME_LEN as u32;
    recv_hdr.msg_controllen = CONTROL_LEN;
    let mut rig = Rig {
        ring: ManuallyDrop::new(builder().build(SQ_ENTRIES)?),
        bufs: BufRing::new(BUFFERS, buf_len)?,
        recv_hdr,
        batches: [
            Batch::new(v6, w.decide.destinations()),
            Batch::new(v6, w.decide.destinations()),
        ],
        reaper: Batch::new(v6, w.decide.destinations()),
    };
    let Rig {
        ring,
        bufs,
        recv_hdr,
        batches,
        reaper,
    } = &mut rig;
    bufs.register(ring)?;

    let sock = Fd(w.socket.as_raw_fd());
    let recv = opcode::RecvMsgMulti::new(sock, &**recv_hdr, GROUP)
        .build()
        .user_data(RECV);
    push(ring, &recv)?;
    let inbox = w.inbox.take();
    // The reaper's sends are counted as the egress's, not as this worker's.
    let egress_counters = inbox
        .as_ref()
        .map_or_else(|| w.counters.clone(), |i| i.counters.clone());
    let wake = inbox.as_ref().map(|i| {
        opcode::PollAdd::new(Fd(i.wake.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE)
    });
    if let Some(e) = &wake {
        push(ring, e)?;
    }

    let timeout = Timespec::new().nsec(POLL_MS as u32 * 1_000_000);
    let no_wait = Timespec::new();
    let mut gso = Gso::new(w.gso);
    // The batch receives are decided into; the other may have sends in flight.
    let mut filling = 0;
    let mut extra_at = 0;
    let (mut recv_stopped, mut wake_stopped) = (false, false);
    let mut ready: Vec<(u64, i32, u32)> = Vec::new();
    let mut control = [0u8; CONTROL_LEN];
    let mut draining: Option<u64> = None;
    // This loop's own clock, for its pacing and its drain's deadline.
    let epoch = std::time::Instant::now();
    let ms = || epoch.elapsed().as_millis() as u64;
    loop {
        // A stopping worker cancels its receive, then decides and sends what it took
        // before it ends: the datagrams still queued in the socket wait there for whoever
        // reads it next (a relay taking over), none are lost in between.
        if draining.is_none() && w.stop.load(Ordering::Relaxed) {
            let cancel = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
            push(ring, &cancel)?;
            draining = Some(ms() + DRAIN_MS);
        }
        if !reaper.busy {
            if let Some(o) = inbox.as_ref().and_then(|i| i.batches.try_recv().ok()) {
                reaper.pending = 0..o.count();
                reaper.out = o;
                reaper.busy = true;
            }
        }
        if let Some(deadline) = draining {
            // The reaper's batches too, every one in the inbox: the `peer_left` of peers
            // it removed are sent by no relay after this one.
            let idle =
                recv_stopped && ready.is_empty() && batches.iter().all(|b| !b.busy) && !reaper.busy;
            if idle || ms() >= deadline {
                break;
            }
        }
        // One enter submits last turn's sends and reaps their completions (UDP sends
        // complete inline) with the receives that came meanwhile: a worker never waits for
        // its sends before taking the next receives.
        let wait = if reaper.busy && reaper.outstanding == 0 {
            &no_wait
        } else {
            &timeout
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
        w.decide.turn();
        let now_ms = ms();
        // Sends' completions first, so that a batch whose sends are done is free again.
        ready.retain(|&(data, res, _)| {
            if data == CANCEL {
                return false;
            }
            if data >= WAKE {
                return true;
            }
            let (slot, i) = ((data >> 32) as usize, (data & 0xffff_ffff) as usize);
            let (b, counters) = if slot == REAPER {
                (&mut *reaper, &egress_counters)
            } else {
                (&mut batches[slot], &w.counters)
            };
            b.completed(i, res, &mut gso, counters);
            false
        });
        let mut provided = false;
        for (slot, b) in batches.iter_mut().enumerate() {
            provided |= b.advance(ring, sock, slot, &gso, bufs, &w.counters)?;
        }
        reaper.advance(ring, sock, REAPER, &gso, bufs, &egress_counters)?;
        // Receives, while the batch they go to is free; else they wait in `ready`.
        let mut decided = 0;
        let b = &mut batches[filling];
        ready.retain(|&(data, res, flags)| {
            if data == WAKE {
                wake_stopped |= !cqueue::more(flags);
                if let Some(i) = &inbox {
                    let mut n = 0u64;
                    // SAFETY: reads 8 bytes into `n` from our own eventfd.
                    unsafe { libc::read(i.wake.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
                }
                return false;
            }
            if b.busy {
                return true;
            }
            recv_stopped |= !cqueue::more(flags);
            if res < 0 {
                if -res == libc::ENOBUFS {
                    Counters::add(&w.counters.recv_no_buffers, 1);
                } else {
                    let e = io::Error::from_raw_os_error(-res);
                    tracing::debug!(error = %e, "recvmsg");
                }
                return false;
            }
            let Some(lease) = cqueue::buffer_select(flags).and_then(|b| bufs.lease(b)) else {
                return false;
            };
            let raw = bufs.get(&lease, res as usize);
            let parsed = RecvMsgOut::parse(raw, recv_hdr).ok().map(|m| {
                let c = m.control_data();
                let n = c.len().min(CONTROL_LEN);
                control[..n].copy_from_slice(&c[..n]);
                let payload = m.payload_data();
                let start = payload.as_ptr() as usize - raw.as_ptr() as usize;
                let source = name_of(m.name_data(), &control[..n]);
                (
                    source,
                    n,
                    start..start + payload.len(),
                    m.is_payload_truncated(),
                )
            });
            let index = b.leases.len();
            b.leases.push(lease);
            decided += 1;
            if let Some((source, n, payload, truncated)) = parsed {
                let raw = bufs.get_mut(&b.leases[index], payload.end);
                let rx = Received {
                    payload,
                    source,
                    control: &control[..n],
                    truncated,
                };
                w.receive(raw, rx, index, &mut b.out, &mut b.inputs);
            }
            false
        });
        // The decided batch goes out, and the next receives go to the other.
        if decided > 0 {
            b.busy = true;
            b.pending = 0..b.out.count();
            if b.build(bufs, &gso, ROUND, &w.counters) {
                submit(ring, sock, b, filling)?;
            } else {
                b.release(bufs);
                provided = true;
            }
            filling = (filling + 1) % SLOTS;
        }
        // A slice of the reaper's batch, when no datagram came or every EXTRA_EVERY_MS
        // under load: forwarding first.
        if reaper.busy
            && reaper.outstanding == 0
            && reaper.retry.is_empty()
            && (decided == 0 || now_ms >= extra_at + EXTRA_EVERY_MS)
        {
            extra_at = now_ms;
            if reaper.build(bufs, &gso, EXTRA_SLICE, &egress_counters) {
                submit(ring, sock, reaper, REAPER)?;
            } else {
                reaper.advance(ring, sock, REAPER, &gso, bufs, &egress_counters)?;
            }
        }
        bufs.publish();
        // Re-armed only once buffers are back, or it would stop again at once.
        if recv_stopped && draining.is_none() && (provided || batches.iter().all(|b| !b.busy)) {
            push(ring, &recv)?;
            recv_stopped = false;
        }
        if let (true, Some(e)) = (wake_stopped, &wake) {
            push(ring, e)?;
            wake_stopped = false;
        }
    }
    Ok(())
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

/// The reaper's sends, handed to worker 0's ring through its inbox.
struct RingEgress<O> {
    tx: mpsc::SyncSender<O>,
    wake: Arc<OwnedFd>,
}

impl<O: Sends> Egress<O> for RingEgress<O> {
    fn send(&mut self, out: &mut O) {
        if out.count() == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sends::Datagrams;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::AtomicBool;

    struct Nothing;

    impl Decide for Nothing {
        type Out = Datagrams;
        fn turn(&mut self) {}
        fn datagram(&mut self, _: &mut [u8], _: SocketAddr, _: &mut Datagrams) {}
        fn truncated(&mut self, _: usize, _: SocketAddr, _: &mut Datagrams) {}
        fn mapped_source(&mut self, _: usize) {}
        fn destinations(&self) -> Box<dyn Destinations> {
            Box::new(|_| true)
        }
    }

    /// A stopping worker sends every reaper send it was handed before it ends (keepalives
    /// and `peer_left` of peers already removed, which no relay sends again): it ended once
    /// the reaper's batch in hand was sent, dropping those still in its inbox.
    #[test]
    fn a_stopping_worker_sends_every_batch_the_reaper_handed_it() {
        if probe().is_err() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let to = sink.local_addr().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(POLL_MS)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = [Worker {
            index: 0,
            socket,
            decide: Nothing,
            stop: stop.clone(),
            counters: Arc::new(Counters::default()),
            max_datagram: 1500,
            inbox: None,
            cpu: None,
            gso: false,
            gro: false,
        }];
        let counted = Arc::new(Counters::default());
        let mut egress = egress(&mut workers, counted.clone()).unwrap();
        let [w] = workers;
        // Two batches, fewer in all than the sink's receive buffer holds.
        let n = 200;
        for _ in 0..2 {
            let mut out = Datagrams::default();
            out.push(to, b"{\"type\":\"server_keepalive\"}");
            for _ in 1..n / 2 {
                out.push_range(to, 0..27);
            }
            egress.send(&mut out);
        }
        stop.store(true, Ordering::Relaxed);
        run(w).unwrap();
        let mut got = 0;
        let mut buf = [0u8; 64];
        while sink.recv(&mut buf).is_ok() {
            got += 1;
        }
        assert_eq!(got, n, "sends dropped by a stopping worker");
        let sent = counted.sent.load(Ordering::Relaxed);
        assert_eq!(sent, n as u64, "counted as the egress's sends");
    }
}
