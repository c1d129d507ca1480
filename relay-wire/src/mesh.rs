//! The relay-to-relay datagram of a cluster: a `relay` message or a channel frame for a peer
//! homed at another relay, sent there in one hop. Its bytes only: the MAC under the mesh key and
//! the replay window are the core's (this crate knows no crypto and no state).
//!
//! ```text
//! 0      0xD2, the mesh's first byte (no JSON, STUN or channel frame starts so)
//! 1      the format (1)
//! 2      kind: 1 a JSON relay (deliver as `relayed_packet`), 2 a channel frame, 3 a channel
//!        bound across relays, 4 a channel end closed, 5 a `connect`, 6 an introduction, 7 a
//!        ping (the link is alive: what every relay sends every other, so that a cut mesh link
//!        is noticed)
//! 3      the sending node's id: its length (1..=64), then its bytes
//! .      the sequence number of the sending node (u64, big-endian; never repeats for a key
//!        and stream), then its stream (u16, big-endian: which of its threads sealed it)
//! .      the target name: its length (1..=255), then its bytes
//! .      kind 1: the source name (its length, then its bytes);
//!        kind 2: the channel number the target knows (u32, big-endian);
//!        kind 3: the binder's name (its length, then its bytes);
//!        kind 4: the number of the closed end (u32, big-endian);
//!        kinds 5 and 6: the asker's or the introduced peer's name (its length, its bytes);
//!        kind 7: nothing (the target is the receiving node's id)
//! .      the payload's length (u32, big-endian), then the payload: as the peer sent it (kinds 1
//!        and 2), the binder's number and the target's (kind 3, [`BIND_LEN`] bytes) then the
//!        binder's host as text, none
//!        (kind 4), or the asker's or introduced peer's address as text (kinds 5 and 6)
//! last   the MAC: 16 bytes over everything before it
//! ```
//!
//! A channel bound across relays has one end at each relay. The binder's relay chooses both
//! numbers and sends them (kind 3); the target's relay takes its end under the second number,
//! or closes it at once. A frame (kind 2) carries the number its target sends under; a closed
//! end (kind 4) names its owner (the target) and its number, so that the other relay closes
//! the end that pointed at it.
//!
//! The payload is carried as the bytes the first relay received (the `payload` value of a
//! `relay`, or the frame's payload): the header is written apart from it, so that a sender may
//! send the payload from its receive buffer, uncopied.

use std::io::Write;
use std::net::IpAddr;
use std::ops::Range;

/// The mesh datagram's first byte.
pub const MAGIC: u8 = 0xD2;
/// The format this crate writes and reads.
pub const FORMAT: u8 = 1;
/// Bytes of the MAC at the end of every mesh datagram.
pub const MAC_LEN: usize = 16;
/// The longest node id.
pub const MAX_NODE: usize = 64;

/// Whether `node` may be a node id: 1 to [`MAX_NODE`] of `A-Z a-z 0-9 . _ -` (no space, so that
/// a cluster's directory reads its records back unambiguously).
pub fn valid_node(node: &str) -> bool {
    (1..=MAX_NODE).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The numbers at the start of a bind's payload (kind 3): the binder's, then the target's.
pub const BIND_LEN: usize = 8;

/// What a mesh datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON `relay`: the target gets a `relayed_packet` from `source` with the payload.
    Relay,
    /// A channel frame: the target gets the frame of its channel `number` with the payload.
    Frame,
    /// A channel bound across relays.
    Bind,
    /// A channel end closed.
    Closed,
    /// A `connect` from a peer of the sending relay.
    Connect,
    /// An introduction: the peer of the sending relay the target asked for, and its address.
    Introduce,
    /// The sending relay's mesh link is alive.
    Ping,
}

/// What a mesh datagram is about, by kind: who it is from, or which channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    /// A relay from this peer.
    Source(&'a str),
    /// A frame on the channel the target knows by this number.
    Channel(u32),
    /// A channel this peer (at the sending relay) bound to the target.
    Bind(&'a str),
    /// The sending relay's end of this number, owned by the target named, is closed.
    Closed(u32),
    /// This peer (at the sending relay) asks to be introduced to the target; the payload is
    /// its address.
    Connect(&'a str),
    /// This peer (at the sending relay) and the target asked for each other; the payload is
    /// its address.
    Introduce(&'a str),
    /// The link is alive (the target is the receiving node).
    Ping,
}

/// Appends the payload of a bind: `binder`'s number, the target's, and the binder's host (whose
/// budgets pay for telling the target).
pub fn write_bind(buf: &mut Vec<u8>, binder: u32, target: u32, host: IpAddr) {
    buf.extend_from_slice(&binder.to_be_bytes());
    buf.extend_from_slice(&target.to_be_bytes());
    let _ = write!(buf, "{host}");
}

/// The binder's number, the target's and the binder's host, from a bind's payload.
pub fn read_bind(payload: &[u8]) -> Option<(u32, u32, IpAddr)> {
    let numbers = payload.get(..BIND_LEN)?;
    let n =
        |i: usize| u32::from_be_bytes([numbers[i], numbers[i + 1], numbers[i + 2], numbers[i + 3]]);
    let host = std::str::from_utf8(&payload[BIND_LEN..])
        .ok()?
        .parse()
        .ok()?;
    Some((n(0), n(4), host))
}

/// The head of a mesh datagram: everything before the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    /// The sending node.
    pub node: &'a str,
    /// Its sequence number, in the stream it is sent in.
    pub seq: u64,
    /// Which of the sending node's threads sealed it: each seals and sends in order, so that
    /// its numbers arrive in order but for the network's reordering, which the receiver's
    /// window per stream absorbs.
    pub stream: u16,
    /// The target peer's name.
    pub target: &'a str,
    /// The source or the channel.
    pub via: Via<'a>,
}

impl Head<'_> {
    /// What it carries.
    pub fn kind(&self) -> Kind {
        match self.via {
            Via::Source(_) => Kind::Relay,
            Via::Channel(_) => Kind::Frame,
            Via::Bind(_) => Kind::Bind,
            Via::Closed(_) => Kind::Closed,
            Via::Connect(_) => Kind::Connect,
            Via::Introduce(_) => Kind::Introduce,
            Via::Ping => Kind::Ping,
        }
    }

    /// The peer name it carries, if its kind carries one.
    pub fn name(&self) -> Option<&str> {
        match self.via {
            Via::Source(s) | Via::Bind(s) | Via::Connect(s) | Via::Introduce(s) => Some(s),
            Via::Channel(_) | Via::Closed(_) | Via::Ping => None,
        }
    }
}

/// Why a datagram is no mesh datagram this relay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshError {
    /// Not the mesh's first byte, or another format.
    NotMesh,
    /// Shorter than its fields say, or longer.
    Length,
    /// An unknown kind.
    Kind,
    /// A node id or name empty, too long or not UTF-8.
    Name,
}

/// Appends the head of a mesh datagram whose payload is `payload_len` bytes; the payload and
/// then the MAC ([`MAC_LEN`] bytes) follow it on the wire. False (nothing written) if a field
/// cannot be written: a node id or a name empty or too long, or a payload over `u32::MAX`.
pub fn write_head(buf: &mut Vec<u8>, head: &Head<'_>, payload_len: usize) -> bool {
    let names_fit = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
    let via_fits = match head.via {
        Via::Source(s) | Via::Bind(s) | Via::Connect(s) | Via::Introduce(s) => names_fit(s, 255),
        Via::Channel(_) | Via::Closed(_) | Via::Ping => true,
    };
    if !names_fit(head.node, MAX_NODE)
        || !names_fit(head.target, 255)
        || !via_fits
        || u32::try_from(payload_len).is_err()
    {
        return false;
    }
    let kind = match head.kind() {
        Kind::Relay => 1,
        Kind::Frame => 2,
        Kind::Bind => 3,
        Kind::Closed => 4,
        Kind::Connect => 5,
        Kind::Introduce => 6,
        Kind::Ping => 7,
    };
    buf.extend_from_slice(&[MAGIC, FORMAT, kind, head.node.len() as u8]);
    buf.extend_from_slice(head.node.as_bytes());
    buf.extend_from_slice(&head.seq.to_be_bytes());
    buf.extend_from_slice(&head.stream.to_be_bytes());
    buf.push(head.target.len() as u8);
    buf.extend_from_slice(head.target.as_bytes());
    match head.via {
        Via::Source(s) | Via::Bind(s) | Via::Connect(s) | Via::Introduce(s) => {
            buf.push(s.len() as u8);
            buf.extend_from_slice(s.as_bytes());
        }
        Via::Channel(n) | Via::Closed(n) => buf.extend_from_slice(&n.to_be_bytes()),
        Via::Ping => {}
    }
    buf.extend_from_slice(&(payload_len as u32).to_be_bytes());
    true
}

/// A mesh datagram as read: its head, where its payload is, and what its MAC covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh<'a> {
    /// The head.
    pub head: Head<'a>,
    /// The payload's place in the datagram.
    pub payload: Range<usize>,
    /// The bytes the MAC covers: everything before it.
    pub covered: &'a [u8],
    /// The MAC.
    pub mac: &'a [u8; MAC_LEN],
}

/// A cursor over a mesh datagram.
struct Cursor<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MeshError> {
        let b = self
            .d
            .get(self.at..self.at.checked_add(n).ok_or(MeshError::Length)?)
            .ok_or(MeshError::Length)?;
        self.at += n;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, MeshError> {
        Ok(self.take(1)?[0])
    }

    fn name(&mut self, max: usize) -> Result<&'a str, MeshError> {
        let n = usize::from(self.byte()?);
        if n == 0 || n > max {
            return Err(MeshError::Name);
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| MeshError::Name)
    }

    fn u32(&mut self) -> Result<u32, MeshError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

/// Reads a mesh datagram (its MAC unchecked: that is the caller's, with the key).
pub fn read(d: &[u8]) -> Result<Mesh<'_>, MeshError> {
    if d.len() < 2 || d[0] != MAGIC || d[1] != FORMAT {
        return Err(MeshError::NotMesh);
    }
    if d.len() < 2 + MAC_LEN {
        return Err(MeshError::Length);
    }
    let (body, mac) = d.split_at(d.len() - MAC_LEN);
    let mut c = Cursor { d: body, at: 2 };
    let kind = c.byte()?;
    let node = c.name(MAX_NODE)?;
    let seq = u64::from_be_bytes(c.take(8)?.try_into().expect("8 bytes"));
    let stream = u16::from_be_bytes(c.take(2)?.try_into().expect("2 bytes"));
    let target = c.name(255)?;
    let via = match kind {
        1 => Via::Source(c.name(255)?),
        2 => Via::Channel(c.u32()?),
        3 => Via::Bind(c.name(255)?),
        4 => Via::Closed(c.u32()?),
        5 => Via::Connect(c.name(255)?),
        6 => Via::Introduce(c.name(255)?),
        7 => Via::Ping,
        _ => return Err(MeshError::Kind),
    };
    let len = c.u32()? as usize;
    let start = c.at;
    c.take(len)?;
    if c.at != body.len() {
        return Err(MeshError::Length);
    }
    Ok(Mesh {
        head: Head {
            node,
            seq,
            stream,
            target,
            via,
        },
        payload: start..start + len,
        covered: body,
        mac: mac.try_into().expect("MAC_LEN bytes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(head: &Head<'_>, payload: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        assert!(write_head(&mut d, head, payload.len()));
        d.extend_from_slice(payload);
        d.extend_from_slice(&[0xAB; MAC_LEN]);
        d
    }

    #[test]
    fn a_head_and_its_payload_read_back() {
        for via in [
            Via::Source("alice"),
            Via::Channel(0x0102_0304),
            Via::Bind("alice"),
            Via::Closed(7),
            Via::Connect("alice"),
            Via::Introduce("alice"),
            Via::Ping,
        ] {
            let head = Head {
                node: "relay-b",
                seq: u64::MAX - 1,
                stream: 0xFFFE,
                target: "bob",
                via,
            };
            let payload = br#""ciphertext \"quoted\"""#;
            let d = datagram(&head, payload);
            let m = read(&d).unwrap();
            assert_eq!(m.head, head);
            assert_eq!(&d[m.payload.clone()], payload);
            assert_eq!(m.covered, &d[..d.len() - MAC_LEN]);
            assert_eq!(m.mac, &[0xAB; MAC_LEN]);
        }
        // An empty payload is a payload.
        let head = Head {
            node: "n",
            seq: 0,
            stream: 0,
            target: "t",
            via: Via::Channel(1),
        };
        assert!(read(&datagram(&head, b"")).unwrap().payload.is_empty());
    }

    #[test]
    fn a_binds_numbers_read_back_and_nothing_else_does() {
        for host in ["192.0.2.7", "2001:db8::1"] {
            let mut b = Vec::new();
            write_bind(&mut b, 0xDEAD_BEEF, 1, host.parse().unwrap());
            assert_eq!(read_bind(&b), Some((0xDEAD_BEEF, 1, host.parse().unwrap())));
            assert_eq!(read_bind(&b[..7]), None);
            assert_eq!(read_bind(&b[..BIND_LEN]), None, "no host");
        }
        assert_eq!(read_bind(&[0; 9]), None);
    }

    #[test]
    fn what_cannot_be_written_is_not() {
        let mut buf = Vec::new();
        let long = "x".repeat(256);
        for head in [
            Head {
                node: "",
                seq: 0,
                stream: 0,
                target: "t",
                via: Via::Channel(1),
            },
            Head {
                node: &long[..MAX_NODE + 1],
                seq: 0,
                stream: 0,
                target: "t",
                via: Via::Channel(1),
            },
            Head {
                node: "n",
                seq: 0,
                stream: 0,
                target: &long,
                via: Via::Channel(1),
            },
            Head {
                node: "n",
                seq: 0,
                stream: 0,
                target: "t",
                via: Via::Source(""),
            },
            Head {
                node: "n",
                seq: 0,
                stream: 0,
                target: "t",
                via: Via::Bind(&long),
            },
        ] {
            assert!(!write_head(&mut buf, &head, 0), "{head:?}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn every_truncation_and_byte_flip_is_refused_or_read_within_bounds() {
        let head = Head {
            node: "relay-a",
            seq: 7,
            stream: 0,
            target: "bob",
            via: Via::Source("alice"),
        };
        let d = datagram(&head, b"{\"x\":1}");
        for cut in 0..d.len() {
            // A shorter datagram reads only if its MAC moved into what it says is payload,
            // which the MAC check then refuses; never out of bounds.
            if let Ok(m) = read(&d[..cut]) {
                assert!(m.payload.end <= cut - MAC_LEN);
            }
        }
        for i in 0..d.len() {
            for bit in 0..8 {
                let mut e = d.clone();
                e[i] ^= 1 << bit;
                if let Ok(m) = read(&e) {
                    assert!(m.payload.end + MAC_LEN == e.len());
                }
            }
        }
        assert_eq!(read(b"{\"type\":\"relay\"}"), Err(MeshError::NotMesh));
        assert_eq!(read(&[MAGIC, 2, 1]), Err(MeshError::NotMesh));
        let mut longer = d.clone();
        longer.insert(d.len() - MAC_LEN, 0);
        assert_eq!(read(&longer), Err(MeshError::Length));
    }
}
