//! A request's own bytes, which pay for its replies first, whatever anyone else spent.

use std::net::SocketAddr;

use super::ANSWER_FACTOR;

/// What one unauthenticated request's own bytes pay for: replies to its source, up to
/// [`ANSWER_FACTOR`] times its size, whatever anyone else spent from the pools.
#[derive(Clone, Copy, Debug)]
pub struct Own {
    to: SocketAddr,
    pub(super) bytes: usize,
    pub(super) left: usize,
}

impl Own {
    /// The allowance of a request of `len` bytes from `from`.
    pub fn of(from: SocketAddr, len: usize) -> Own {
        let bytes = len.saturating_mul(ANSWER_FACTOR);
        Own {
            to: from,
            bytes,
            left: bytes,
        }
    }

    /// Whether a send of `len` bytes to `to` fits what is left of it.
    pub(super) fn pays(&self, to: SocketAddr, len: usize) -> bool {
        to == self.to && len <= self.left
    }
}
