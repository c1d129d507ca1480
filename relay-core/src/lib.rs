//! The relay's protocol logic, sans-IO: a datagram, its source and the time in; the sends it
//! decides out. The registry, channels, budgets, rate limits, presence and the reaper's sweep are
//! plain code over bytes, shared state and a given [`clock::Now`]; no socket, thread or wall
//! clock is read here (the binary's shells do that and hand the results in).
//!
//! The entry points: [`shared::Shared`] (the state all workers share, made from
//! [`settings::Settings`]), [`router::Router`] (one worker's decisions into an [`out::Out`]) and
//! [`reaper::sweep`]. `ARCHITECTURE.md` maps the modules.

mod addr;
pub mod auth;
pub mod budget;
pub mod channels;
pub mod clock;
pub mod cluster;
pub mod destination;
pub mod elsewhere;
mod events;
mod introductions;
mod keyed;
pub mod mesh;
pub mod metrics;
pub mod out;
pub mod parallel;
mod presence;
pub mod ratelimit;
pub mod reaper;
pub mod refusal;
pub mod registry;
pub mod remote;
mod reservations;
pub mod router;
mod sample;
pub mod seal;
pub mod settings;
mod shards;
pub mod shared;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;

pub use clock::Now;
pub use out::Out;
pub use router::Router;
pub use settings::Settings;
pub use shared::Shared;
