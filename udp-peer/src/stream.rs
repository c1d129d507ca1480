//! One session's ordered message stream: every message numbered, kept until acknowledged and
//! sent again after a timeout, and delivered in order exactly once. This is what makes a path
//! switch lose, duplicate or reorder nothing: a message sent on the old path and again on the
//! new one is taken once, in its place.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::Via;

/// Most messages sent and not yet acknowledged.
pub const IN_FLIGHT: usize = 64;
/// Most messages waiting behind those (then [`crate::SendError::Full`]).
pub const QUEUED: usize = 1024;

/// A message sent, not yet acknowledged.
#[derive(Debug)]
struct Unacked {
    seq: u64,
    text: Vec<u8>,
    /// When it was last sent; `None` until first sent.
    sent: Option<Instant>,
    /// How often it was sent.
    tries: u32,
}

/// What is due to send now.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<'a> {
    /// The message's number.
    pub seq: u64,
    /// Its bytes.
    pub text: &'a [u8],
    /// Whether it was sent before (a retransmission goes by every path).
    pub again: bool,
}

/// The stream's state, both directions.
#[derive(Debug, Default)]
pub struct Stream {
    next_seq: u64,
    unacked: VecDeque<Unacked>,
    /// The first message not yet delivered.
    recv_next: u64,
    /// Messages that arrived ahead of a gap.
    ahead: BTreeMap<u64, (Vec<u8>, Via)>,
    /// The smoothed round-trip time, for the retransmission timeout.
    srtt: Option<Duration>,
}

impl Stream {
    /// Queues `text`; `false` when the queue is full.
    pub fn push(&mut self, text: Vec<u8>) -> bool {
        if self.unacked.len() >= IN_FLIGHT + QUEUED {
            return false;
        }
        self.unacked.push_back(Unacked {
            seq: self.next_seq,
            text,
            sent: None,
            tries: 0,
        });
        self.next_seq += 1;
        true
    }

    /// How many messages are sent and unacknowledged, or waiting.
    pub fn pending(&self) -> usize {
        self.unacked.len()
    }

    /// Takes back every message not acknowledged, in order: to send on a new session.
    pub fn take_unacked(&mut self) -> Vec<Vec<u8>> {
        self.unacked.drain(..).map(|u| u.text).collect()
    }

    /// The retransmission timeout: twice the smoothed RTT, at least `min`.
    pub fn rto(&self, min: Duration) -> Duration {
        self.srtt.map_or(min * 4, |r| (r * 2).max(min))
    }

    /// Feeds a round-trip sample.
    pub fn rtt_sample(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            Some(s) => (s * 7 + rtt) / 8,
            None => rtt,
        });
    }

    /// The messages due at `now`: never sent and within the window, or unacknowledged for an
    /// RTO; marks them sent.
    pub fn due(&mut self, now: Instant, min_rto: Duration) -> Vec<Due<'_>> {
        let rto = self.rto(min_rto);
        let mut out = Vec::new();
        for u in self.unacked.iter_mut().take(IN_FLIGHT) {
            let due = u
                .sent
                .is_none_or(|t| now >= t + rto * (1 << u.tries.min(4)) / 2);
            if due {
                u.sent = Some(now);
                u.tries += 1;
                out.push(Due {
                    seq: u.seq,
                    text: &u.text,
                    again: u.tries > 1,
                });
            }
        }
        out
    }

    /// When the next retransmission is due.
    pub fn timeout(&self, min_rto: Duration) -> Option<Instant> {
        let rto = self.rto(min_rto);
        self.unacked
            .iter()
            .take(IN_FLIGHT)
            .filter_map(|u| u.sent.map(|t| t + rto * (1 << u.tries.min(4)) / 2))
            .min()
    }

    /// An acknowledgement of everything below `next`; a sample of the RTT from the newest
    /// message it covers that was sent once.
    pub fn acked(&mut self, next: u64, now: Instant) {
        while self.unacked.front().is_some_and(|u| u.seq < next) {
            let u = self.unacked.pop_front().expect("front");
            if let (Some(t), 1) = (u.sent, u.tries) {
                self.rtt_sample(now.saturating_duration_since(t));
            }
        }
    }

    /// Message `seq` arrived by `via`: returns those now deliverable, in order (none for a
    /// duplicate, or one too far ahead to keep).
    pub fn received(&mut self, seq: u64, text: &[u8], via: Via) -> Vec<(Vec<u8>, Via)> {
        if seq < self.recv_next || seq >= self.recv_next + (IN_FLIGHT as u64) {
            return Vec::new();
        }
        self.ahead
            .entry(seq)
            .or_insert_with(|| (text.to_vec(), via));
        let mut out = Vec::new();
        while let Some(m) = self.ahead.remove(&self.recv_next) {
            out.push(m);
            self.recv_next += 1;
        }
        out
    }

    /// What to acknowledge: the first message not yet delivered.
    pub fn ack(&self) -> u64 {
        self.recv_next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_once_and_retransmits_until_acked() {
        let t0 = Instant::now();
        let min = Duration::from_millis(100);
        let mut s = Stream::default();
        for m in [b"a", b"b", b"c"] {
            assert!(s.push(m.to_vec()));
        }
        let first: Vec<_> = s.due(t0, min).iter().map(|d| d.seq).collect();
        assert_eq!(first, [0, 1, 2]);
        assert!(s.due(t0, min).is_empty(), "not again before the RTO");
        s.acked(1, t0 + Duration::from_millis(10));
        let again = s.due(t0 + Duration::from_secs(1), min);
        assert_eq!(
            again.iter().map(|d| (d.seq, d.again)).collect::<Vec<_>>(),
            [(1, true), (2, true)]
        );

        let mut r = Stream::default();
        assert!(
            r.received(1, b"b", Via::Direct).is_empty(),
            "ahead of a gap"
        );
        assert!(r.received(1, b"b", Via::Relay).is_empty(), "a duplicate");
        let got = r.received(0, b"a", Via::Relay);
        assert_eq!(
            got,
            [(b"a".to_vec(), Via::Relay), (b"b".to_vec(), Via::Direct)]
        );
        assert!(
            r.received(0, b"a", Via::Direct).is_empty(),
            "delivered already"
        );
        assert_eq!(r.ack(), 2);
        assert!(
            r.received(2 + IN_FLIGHT as u64, b"z", Via::Relay)
                .is_empty()
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut s = Stream::default();
        for _ in 0..IN_FLIGHT + QUEUED {
            assert!(s.push(vec![1]));
        }
        assert!(!s.push(vec![1]));
        assert_eq!(s.take_unacked().len(), IN_FLIGHT + QUEUED);
    }
}
