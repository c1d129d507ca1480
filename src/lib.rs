//! A UDP relay for peer-to-peer encrypted chat: registration, discovery, NAT traversal help and
//! fallback relaying, speaking the chat peers' JSON protocol (see `docs/protocol.md`).
//!
//! The binary's library: configuration (file, environment, flags → the core's settings),
//! start-up and the threads ([`server`], joining `relay-core` and `relay-udp` in [`shell`]),
//! the ops endpoint and its metrics, and the handover (state image, takeover, snapshot).
//! `ARCHITECTURE.md` maps the crates.

pub mod clock;
pub mod config;
pub mod exposition;
pub mod http;
pub mod notify;
pub mod process;
pub mod server;
pub mod shell;
pub mod snapshot;
pub mod state;
pub mod takeover;
