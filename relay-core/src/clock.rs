//! Time as the protocol logic sees it: handed in by the I/O shells, never read by the logic.

/// A moment: monotonic milliseconds for liveness, and wall-clock seconds for `server_time`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Now {
    /// Milliseconds since the relay's clock started.
    pub ms: u64,
    /// Seconds since the Unix epoch.
    pub unix: f64,
}
