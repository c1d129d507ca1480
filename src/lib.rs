//! A UDP relay for peer-to-peer encrypted chat: registration, discovery, NAT traversal help and
//! fallback relaying, speaking the chat peers' JSON protocol (see `docs/protocol.md`).
//!
//! The binary's library: configuration (file, environment, flags → the core's settings),
//! start-up and the threads ([`server`], joining `relay-core` and `relay-udp` in `shell`),
//! the ops endpoint and its metrics, and the handover (state image, takeover, snapshot).
//! `ARCHITECTURE.md` maps the crates.

pub mod clock;
pub mod cluster;
pub mod config;
mod exposition;
pub mod http;
mod notify;
mod process;
pub mod server;
mod shell;
pub mod snapshot;
pub mod state;
pub mod takeover;
