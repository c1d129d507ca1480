//! A UDP relay for peer-to-peer encrypted chat: registration, discovery, NAT traversal help and
//! fallback relaying, speaking the chat peers' JSON protocol (see `docs/protocol.md`).
//!
//! The protocol logic ([`router`], [`presence`], [`reaper`]) is sans-IO; the I/O shells of
//! `relay-udp` feed it datagrams and send what it decides. `ARCHITECTURE.md` maps the modules.

pub mod addr;
pub mod auth;
pub mod budget;
pub mod channels;
pub mod clock;
pub mod config;
pub mod destination;
pub mod events;
pub mod exposition;
pub mod http;
pub mod introductions;
pub mod keyed;
pub mod metrics;
pub mod notify;
pub mod out;
pub mod presence;
pub mod process;
pub mod ratelimit;
pub mod reaper;
pub mod refusal;
pub mod registry;
pub mod reservations;
pub mod router;
pub mod sample;
pub mod server;
pub mod settings;
pub mod shards;
pub mod shared;
pub mod shell;
pub mod snapshot;
pub mod state;
pub mod takeover;
pub mod testing;
pub mod wire;
