//! The relay-to-relay datagram of a cluster: a `relay` message or a channel frame for a peer
//! homed at another relay, sent there in one hop. Its bytes only: the MAC under the mesh key and
//! the replay window are the core's (this crate knows no crypto and no state).
//!
//! ```text
//! 0      0xD2, the mesh's first byte (no JSON, STUN or channel frame starts so)
//! 1      the format (1)
//! 2      kind: 1 a JSON relay (deliver as `relayed_packet`), 2 a channel frame
//! 3      the sending node's id: its length (1..=64), then its bytes
//! .      the sequence number of the sending node (u64, big-endian; never repeats for a key)
//! .      the target name: its length (1..=255), then its bytes
//! .      the source name (kind 1; its length, then its bytes) or the channel number the target
//!        knows (kind 2; u32, big-endian)
//! .      the payload's length (u32, big-endian), then the payload, as the peer sent it
//! last   the MAC: 16 bytes over everything before it
//! ```
//!
//! The payload is carried as the bytes the first relay received (the `payload` value of a
//! `relay`, or the frame's payload): the header is written apart from it, so that a sender may
//! send the payload from its receive buffer, uncopied.

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

/// What a mesh datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON `relay`: the target gets a `relayed_packet` from `source` with the payload.
    Relay,
    /// A channel frame: the target gets the frame of its channel `number` with the payload.
    Frame,
}

/// Who a mesh datagram is from (kind 1) or on which channel (kind 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    /// The source peer's name.
    Source(&'a str),
    /// The channel number the target knows.
    Channel(u32),
}

/// The head of a mesh datagram: everything before the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    /// The sending node.
    pub node: &'a str,
    /// Its sequence number.
    pub seq: u64,
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
        Via::Source(s) => names_fit(s, 255),
        Via::Channel(_) => true,
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
    };
    buf.extend_from_slice(&[MAGIC, FORMAT, kind, head.node.len() as u8]);
    buf.extend_from_slice(head.node.as_bytes());
    buf.extend_from_slice(&head.seq.to_be_bytes());
    buf.push(head.target.len() as u8);
    buf.extend_from_slice(head.target.as_bytes());
    match head.via {
        Via::Source(s) => {
            buf.push(s.len() as u8);
            buf.extend_from_slice(s.as_bytes());
        }
        Via::Channel(n) => buf.extend_from_slice(&n.to_be_bytes()),
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
    let target = c.name(255)?;
    let via = match kind {
        1 => Via::Source(c.name(255)?),
        2 => Via::Channel(c.u32()?),
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
        for via in [Via::Source("alice"), Via::Channel(0x0102_0304)] {
            let head = Head {
                node: "relay-b",
                seq: u64::MAX - 1,
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
            target: "t",
            via: Via::Channel(1),
        };
        assert!(read(&datagram(&head, b"")).unwrap().payload.is_empty());
    }

    #[test]
    fn what_cannot_be_written_is_not() {
        let mut buf = Vec::new();
        let long = "x".repeat(256);
        for head in [
            Head {
                node: "",
                seq: 0,
                target: "t",
                via: Via::Channel(1),
            },
            Head {
                node: &long[..MAX_NODE + 1],
                seq: 0,
                target: "t",
                via: Via::Channel(1),
            },
            Head {
                node: "n",
                seq: 0,
                target: &long,
                via: Via::Channel(1),
            },
            Head {
                node: "n",
                seq: 0,
                target: "t",
                via: Via::Source(""),
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
