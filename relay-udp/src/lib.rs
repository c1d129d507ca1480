//! Batched UDP on Linux: worker sockets on one port (`SO_REUSEPORT`), receives and sends in
//! batches (recvmmsg/sendmmsg, or io_uring with provided buffers), runs to one destination sent
//! as one segmented send (`UDP_SEGMENT`), coalesced receives (`UDP_GRO`) split into their
//! datagrams, and the control messages that come with them.
//!
//! It knows datagrams, not messages: what a datagram means and who pays for an answer belong to
//! whoever implements [`Decide`] (the relay's core, through the binary; the load generator's
//! reflector). A backend receives a batch, hands each datagram to [`Decide::datagram`], and sends
//! the [`Sends`] decided, whose segments may point into the receive buffers, uncopied.

mod control;
mod counters;
mod headers;
mod mmsg;
mod recv;
mod sender;
mod sends;
mod socket;
mod uring;
mod worker;

pub use control::{CONTROL_LEN, Source, canonical, queue_drops, source, to_sockaddr};
pub use counters::Counters;
pub use headers::{Gso, Headers};
pub use recv::{BATCH, RecvBatch};
pub use sender::{Sender, send_batch};
pub use sends::{Datagrams, Destinations, Sends};
pub use socket::{
    POLL_MS, SOCKET_BUFFER, bind_group, bind_worker_socket, capped_buffers, install_wake,
    peer_socket, pin_to_cpu, set_gro, udp_segment_supported, wake,
};
pub use uring::probe as uring_available;
pub use worker::{Backend, Choice, Decide, Egress, Inbox, Received, Worker, receive_len, select};

#[cfg(test)]
mod tests;
