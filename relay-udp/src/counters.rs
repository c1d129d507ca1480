//! What a worker's sockets did, as counters any thread may read: datagrams and bytes sent,
//! segmented sends, refusals by the kernel, coalesced receives, the kernel's queue drops.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's (or the egress's) socket counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Bytes sent.
    pub sent_bytes: AtomicU64,
    /// Sends the kernel refused.
    pub send_errors: AtomicU64,
    /// Sends that carried several datagrams as `UDP_SEGMENT` segments.
    pub segmented_sends: AtomicU64,
    /// Times the kernel refused segmentation (which is then off for that sender).
    pub gso_refused: AtomicU64,
    /// Sends dropped because their destination is one nothing is sent to.
    pub bad_destination: AtomicU64,
    /// Receives that held several datagrams coalesced by the kernel (`UDP_GRO`).
    pub coalesced_receives: AtomicU64,
    /// Datagrams the kernel dropped at this worker's socket for a full receive queue, as the
    /// socket last reported (SO_RXQ_OVFL counts from the socket's creation).
    pub queue_drops: AtomicU64,
    /// Times the io_uring receive found no free buffer (`ENOBUFS`) and had to be re-armed.
    pub recv_no_buffers: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Counts a send the kernel took: `datagrams` datagrams (more than one if segmented),
    /// `bytes`.
    pub fn sent_run(&self, datagrams: usize, bytes: usize) {
        Counters::add(&self.sent, datagrams as u64);
        Counters::add(&self.sent_bytes, bytes as u64);
        if datagrams > 1 {
            Counters::add(&self.segmented_sends, 1);
        }
    }
}
