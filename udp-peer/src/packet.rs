//! What peers send each other, over the direct path or inside the relay's channel frames: the
//! Noise handshake's three messages and sealed transport packets, and the frames inside those.
//! Nothing here is secret or checked; `noise` seals and opens, `conn` acts.
//!
//! The first byte sets them apart from the relay's families (`{`, STUN's 0x00/0x01, 0xD1).

use std::net::{IpAddr, SocketAddr};

/// A handshake message: `E0 step sender receiver noise…` (ids u32, big-endian).
pub const HANDSHAKE: u8 = 0xE0;
/// A transport packet: `E1 receiver nonce noise…` (id u32, nonce u64, big-endian).
pub const TRANSPORT: u8 = 0xE1;
/// Bytes before a transport packet's ciphertext.
pub const TRANSPORT_HEADER: usize = 1 + 4 + 8;
/// Bytes before a handshake message's Noise bytes.
pub const HANDSHAKE_HEADER: usize = 1 + 1 + 4 + 4;

/// A peer packet, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Handshake message `step` (1–3) from the session `sender` to `receiver` (0 before known).
    Handshake {
        /// Which of XX's three messages.
        step: u8,
        /// The sender's session id.
        sender: u32,
        /// The receiver's session id, 0 in the first message.
        receiver: u32,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// A sealed packet for session `receiver`, sealed under `nonce`.
    Transport {
        /// The receiver's session id.
        receiver: u32,
        /// The explicit nonce.
        nonce: u64,
        /// Ciphertext and tag.
        sealed: &'a [u8],
    },
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// Reads peer packet `d`; `None` for anything else.
pub fn read(d: &[u8]) -> Option<Packet<'_>> {
    match *d.first()? {
        HANDSHAKE => Some(Packet::Handshake {
            step: *d.get(1)?,
            sender: u32_at(d, 2)?,
            receiver: u32_at(d, 6)?,
            noise: d.get(HANDSHAKE_HEADER..)?,
        }),
        TRANSPORT => Some(Packet::Transport {
            receiver: u32_at(d, 1)?,
            nonce: u64_at(d, 5)?,
            sealed: d.get(TRANSPORT_HEADER..)?,
        }),
        _ => None,
    }
}

/// Appends a handshake message's header; the Noise bytes follow.
pub fn handshake(buf: &mut Vec<u8>, step: u8, sender: u32, receiver: u32) {
    buf.extend_from_slice(&[HANDSHAKE, step]);
    buf.extend_from_slice(&sender.to_be_bytes());
    buf.extend_from_slice(&receiver.to_be_bytes());
}

/// Appends a transport packet's header; the ciphertext follows.
pub fn transport(buf: &mut Vec<u8>, receiver: u32, nonce: u64) {
    buf.push(TRANSPORT);
    buf.extend_from_slice(&receiver.to_be_bytes());
    buf.extend_from_slice(&nonce.to_be_bytes());
}

/// What a transport packet carries, once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Message `seq` of the ordered stream.
    Data {
        /// Its place in the stream.
        seq: u64,
        /// The application's bytes.
        text: &'a [u8],
    },
    /// Every message below `next` arrived.
    Ack {
        /// The first message not yet received in order.
        next: u64,
    },
    /// A path check or heartbeat, answered by a [`Frame::ProbeAck`] to where it came from.
    Probe {
        /// Matches the answer to the check.
        id: u64,
    },
    /// The answer to probe `id`, sent where the probe came from.
    ProbeAck {
        /// The probe answered.
        id: u64,
    },
    /// Addresses where the sender may be reached directly: its interfaces and what STUN said.
    Candidates(Vec<SocketAddr>),
}

const DATA: u8 = 1;
const ACK: u8 = 2;
const PROBE: u8 = 3;
const PROBE_ACK: u8 = 4;
const CANDIDATES: u8 = 5;
/// The most candidates one frame carries.
pub const MAX_CANDIDATES: usize = 8;

fn write_addr(buf: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            buf.push(4);
            buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.push(6);
            buf.extend_from_slice(&ip.octets());
        }
    }
    buf.extend_from_slice(&a.port().to_be_bytes());
}

/// Reads an address written by `write_addr` at `*at`, moving past it.
fn read_addr(d: &[u8], at: &mut usize) -> Option<SocketAddr> {
    let len = match *d.get(*at)? {
        4 => 4,
        6 => 16,
        _ => return None,
    };
    let ip = d.get(*at + 1..*at + 1 + len)?;
    let ip: IpAddr = if len == 4 {
        <[u8; 4]>::try_from(ip).ok()?.into()
    } else {
        <[u8; 16]>::try_from(ip).ok()?.into()
    };
    let p = d.get(*at + 1 + len..*at + 3 + len)?;
    *at += 3 + len;
    Some(SocketAddr::new(ip, u16::from_be_bytes([p[0], p[1]])))
}

impl Frame<'_> {
    /// Appends the frame, as sealed.
    pub fn write(&self, buf: &mut Vec<u8>) {
        match self {
            Frame::Data { seq, text } => {
                buf.push(DATA);
                buf.extend_from_slice(&seq.to_be_bytes());
                buf.extend_from_slice(text);
            }
            Frame::Ack { next } => {
                buf.push(ACK);
                buf.extend_from_slice(&next.to_be_bytes());
            }
            Frame::Probe { id } => {
                buf.push(PROBE);
                buf.extend_from_slice(&id.to_be_bytes());
            }
            Frame::ProbeAck { id } => {
                buf.push(PROBE_ACK);
                buf.extend_from_slice(&id.to_be_bytes());
            }
            Frame::Candidates(list) => {
                buf.push(CANDIDATES);
                for a in list.iter().take(MAX_CANDIDATES) {
                    write_addr(buf, *a);
                }
            }
        }
    }

    /// Reads an opened frame; `None` if malformed.
    pub fn read(d: &[u8]) -> Option<Frame<'_>> {
        Some(match *d.first()? {
            DATA => Frame::Data {
                seq: u64_at(d, 1)?,
                text: d.get(9..)?,
            },
            ACK => Frame::Ack {
                next: u64_at(d, 1)?,
            },
            PROBE => Frame::Probe { id: u64_at(d, 1)? },
            PROBE_ACK => Frame::ProbeAck { id: u64_at(d, 1)? },
            CANDIDATES => {
                let mut at = 1;
                let mut list = Vec::new();
                while at < d.len() && list.len() < MAX_CANDIDATES {
                    list.push(read_addr(d, &mut at)?);
                }
                Frame::Candidates(list)
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let v4: SocketAddr = "192.0.2.1:7".parse().unwrap();
        for f in [
            Frame::Data {
                seq: 7,
                text: b"hi",
            },
            Frame::Ack { next: 9 },
            Frame::Probe { id: 3 },
            Frame::ProbeAck { id: 3 },
            Frame::Candidates(vec![v4, v6]),
        ] {
            let mut b = Vec::new();
            f.write(&mut b);
            assert_eq!(Frame::read(&b), Some(f.clone()));
            for cut in 1..b.len() {
                // A cut frame is malformed or a shorter one of its kind, never a panic.
                let _ = Frame::read(&b[..cut]);
            }
        }
        assert_eq!(Frame::read(&[9]), None);
    }

    #[test]
    fn packets_round_trip_and_leave_the_relays_families_alone() {
        let mut b = Vec::new();
        handshake(&mut b, 2, 5, 6);
        b.extend_from_slice(b"nz");
        assert_eq!(
            read(&b),
            Some(Packet::Handshake {
                step: 2,
                sender: 5,
                receiver: 6,
                noise: b"nz"
            })
        );
        b.clear();
        transport(&mut b, 5, 1 << 40);
        b.extend_from_slice(b"ct");
        assert_eq!(
            read(&b),
            Some(Packet::Transport {
                receiver: 5,
                nonce: 1 << 40,
                sealed: b"ct"
            })
        );
        assert_eq!(relay_wire::classify(&b), relay_wire::Family::Unknown);
        assert_eq!(read(&b[..5]), None);
        assert_eq!(read(b"{}"), None);
    }
}
