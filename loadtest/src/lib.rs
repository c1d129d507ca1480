//! The load-test harness of udp-relay: virtual peers that register and relay to each other,
//! a reflector that marks the machine's cost floor, registration storms, comparisons, and TURN
//! clients to put a TURN server (coturn) beside them.

pub mod compare;
pub mod drive;
pub mod net;
pub mod proto;
pub mod reflector;
pub mod report;
pub mod storm;
pub mod sys;
pub mod turn;
