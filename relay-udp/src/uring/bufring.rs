//! The provided-buffer ring of a worker's multishot receive: buffers the kernel fills and
//! gives over one at a time, held as leases until provided again.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

use super::GROUP;

/// A provided-buffer ring: the ring of descriptors the kernel takes buffers from, and the
/// buffers, both in anonymous mappings. A buffer the kernel filled is held as a [`Lease`] until
/// it is provided again, so that no buffer is given back twice or read after it was.
pub(super) struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    bufs: *mut u8,
    bufs_bytes: usize,
    entries: u16,
    buf_len: usize,
    tail: u16,
}

/// A receive buffer the kernel filled and gave to us; only [`BufRing::provide`] ends it.
#[must_use]
pub(super) struct Lease(u16);

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
    pub(super) fn new(entries: u16, buf_len: usize) -> io::Result<BufRing> {
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

    /// Registers the ring with `ring` and gives the kernel every buffer.
    pub(super) fn register(&mut self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the mappings live as long as `self`, which the owner of both drops after the
        // ring (see `Rig`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring as u64,
                self.entries,
                GROUP,
                0,
            )?;
        }
        for bid in 0..self.entries {
            self.provide(Lease(bid));
        }
        self.publish();
        Ok(())
    }

    /// The buffer the kernel names in a completion, now ours; `None` for a number it cannot
    /// have given.
    pub(super) fn lease(&self, bid: u16) -> Option<Lease> {
        (bid < self.entries).then_some(Lease(bid))
    }

    /// Gives `lease`'s buffer back to the kernel (visible after [`BufRing::publish`]).
    pub(super) fn provide(&mut self, lease: Lease) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` < entries, inside the ring mapping; the lease's number < entries (see
        // `lease`), inside the buffers.
        unsafe {
            let e = &mut *self.ring.add(slot);
            e.set_addr(self.bufs.add(usize::from(lease.0) * self.buf_len) as u64);
            e.set_len(self.buf_len as u32);
            e.set_bid(lease.0);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the provided buffers visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail lives in the ring mapping and is only written by this thread; the
        // release store orders the descriptor writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of a leased buffer, for writing in place (a channel frame's field).
    pub(super) fn get_mut(&mut self, lease: &Lease, len: usize) -> &mut [u8] {
        // SAFETY: within the buffers mapping; the kernel wrote the buffer and will not touch it
        // until the lease is provided; `&mut self` makes this the only view meanwhile.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.bufs.add(usize::from(lease.0) * self.buf_len),
                len.min(self.buf_len),
            )
        }
    }

    /// The first `len` bytes of a leased buffer.
    pub(super) fn get(&self, lease: &Lease, len: usize) -> &[u8] {
        // SAFETY: as in `get_mut`, read only.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.add(usize::from(lease.0) * self.buf_len),
                len.min(self.buf_len),
            )
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
