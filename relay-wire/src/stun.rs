//! STUN Binding (PROTOCOL.md Part 3, RFC 8489): parse a Binding request and write its answer.
//!
//! Only what a public-address server needs: a Binding request is answered with
//! `XOR-MAPPED-ADDRESS` (and `FINGERPRINT` when the request carried one); a request with a
//! comprehension-required attribute this server does not know gets a 420 listing them; anything
//! malformed, and every other class or method, is refused with its reason.

use std::net::SocketAddr;

/// The magic cookie, in network order at bytes 4..8.
pub const COOKIE: u32 = 0x2112_A442;
/// The header's length.
pub const HEADER: usize = 20;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
const ATTR_PASSWORD_ALGORITHM: u16 = 0x001D;
const ATTR_USERHASH: u16 = 0x001E;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_FINGERPRINT: u16 = 0x8028;

/// Comprehension-required attributes (types below 0x8000) this server understands: those of
/// RFC 8489 itself. It authenticates nobody, so their values are not checked (a Binding
/// response reveals only what the client's own packets show).
const KNOWN: &[u16] = &[
    ATTR_MAPPED_ADDRESS,
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_ERROR_CODE,
    ATTR_UNKNOWN_ATTRIBUTES,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_MESSAGE_INTEGRITY_SHA256,
    ATTR_PASSWORD_ALGORITHM,
    ATTR_USERHASH,
    ATTR_XOR_MAPPED_ADDRESS,
];

/// The most unknown attributes a 420 lists (RFC 8489 sets no bound; this keeps the answer small).
pub const MAX_UNKNOWN: usize = 8;

/// `FINGERPRINT` is the CRC-32 of the message before it, XORed with this.
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Why a STUN message is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    /// The length field is not a multiple of four or disagrees with the datagram, an attribute
    /// overruns the message, or `FINGERPRINT` is not last.
    Malformed,
    /// `FINGERPRINT` does not match the message.
    BadFingerprint,
    /// An indication, a response, or a method other than Binding.
    NotBindingRequest,
}

/// A Binding request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The transaction id, echoed in the answer.
    pub transaction: [u8; 12],
    /// Whether the request carried `FINGERPRINT` (the answer then carries one too).
    pub fingerprint: bool,
    /// Unknown comprehension-required attributes (at most [`MAX_UNKNOWN`]): a 420 if any.
    pub unknown: Vec<u16>,
}

/// Parses `d`, which [`crate::classify`] found to be STUN (first two bits zero, the magic
/// cookie in place, at least a header long).
pub fn parse(d: &[u8]) -> Result<Request, StunError> {
    if d.len() < HEADER || d[4..8] != COOKIE.to_be_bytes() {
        return Err(StunError::Malformed);
    }
    let ty = u16::from_be_bytes([d[0], d[1]]);
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    if ty & 0xC000 != 0 || len % 4 != 0 || HEADER + len != d.len() {
        return Err(StunError::Malformed);
    }
    if ty != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let mut req = Request {
        transaction: d[8..HEADER].try_into().expect("12 bytes"),
        fingerprint: false,
        unknown: Vec::new(),
    };
    let mut at = HEADER;
    while at < d.len() {
        if req.fingerprint {
            return Err(StunError::Malformed);
        }
        let head = d.get(at..at + 4).ok_or(StunError::Malformed)?;
        let (aty, alen) = (
            u16::from_be_bytes([head[0], head[1]]),
            usize::from(u16::from_be_bytes([head[2], head[3]])),
        );
        let end = at + 4 + alen;
        let padded = end.next_multiple_of(4);
        if padded > d.len() {
            return Err(StunError::Malformed);
        }
        if aty == ATTR_FINGERPRINT {
            let value = d[at + 4..end]
                .try_into()
                .map_err(|_| StunError::Malformed)?;
            if u32::from_be_bytes(value) != fingerprint(&d[..at]) {
                return Err(StunError::BadFingerprint);
            }
            req.fingerprint = true;
        } else if aty < 0x8000 && !KNOWN.contains(&aty) && req.unknown.len() < MAX_UNKNOWN {
            req.unknown.push(aty);
        }
        at = padded;
    }
    Ok(req)
}

/// The `FINGERPRINT` value of a message whose bytes before the attribute are `before` (its
/// header's length already counting the attribute).
fn fingerprint(before: &[u8]) -> u32 {
    crc32fast::hash(before) ^ FINGERPRINT_XOR
}

/// Appends the answer to `req` from `from`: a Binding success with `XOR-MAPPED-ADDRESS`, or a
/// 420 listing the unknown attributes; with `FINGERPRINT` if the request had it.
pub fn answer(buf: &mut Vec<u8>, req: &Request, from: SocketAddr) {
    let start = buf.len();
    let ty = if req.unknown.is_empty() {
        BINDING_SUCCESS
    } else {
        BINDING_ERROR
    };
    buf.extend_from_slice(&ty.to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&COOKIE.to_be_bytes());
    buf.extend_from_slice(&req.transaction);
    if req.unknown.is_empty() {
        xor_mapped_address(buf, from, &req.transaction);
    } else {
        // No reason phrase (RFC 8489 leaves it to the server): the code says it all, and an
        // answer to a forged request stays small (36 bytes for one unknown attribute).
        attribute(buf, ATTR_ERROR_CODE, 4, |b| {
            b.extend_from_slice(&[0, 0, 4, 20])
        });
        attribute(buf, ATTR_UNKNOWN_ATTRIBUTES, 2 * req.unknown.len(), |b| {
            for t in &req.unknown {
                b.extend_from_slice(&t.to_be_bytes());
            }
        });
    }
    if req.fingerprint {
        set_length(buf, start, 8);
        let value = fingerprint(&buf[start..]);
        attribute(buf, ATTR_FINGERPRINT, 4, |b| {
            b.extend_from_slice(&value.to_be_bytes())
        });
    }
    set_length(buf, start, 0);
}

/// Writes the message length (attributes so far, plus `more`) into the header at `start`.
fn set_length(buf: &mut [u8], start: usize, more: usize) {
    let len = (buf.len() - start - HEADER + more) as u16;
    buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends an attribute of `len` value bytes written by `value`, padded to four.
fn attribute(buf: &mut Vec<u8>, ty: u16, len: usize, value: impl FnOnce(&mut Vec<u8>)) {
    buf.extend_from_slice(&ty.to_be_bytes());
    buf.extend_from_slice(&(len as u16).to_be_bytes());
    value(buf);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn xor_mapped_address(buf: &mut Vec<u8>, from: SocketAddr, transaction: &[u8; 12]) {
    let port = from.port() ^ (COOKIE >> 16) as u16;
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&COOKIE.to_be_bytes());
    key[4..].copy_from_slice(transaction);
    match from {
        SocketAddr::V4(a) => attribute(buf, ATTR_XOR_MAPPED_ADDRESS, 8, |b| {
            b.extend_from_slice(&[0, 0x01]);
            b.extend_from_slice(&port.to_be_bytes());
            let ip = a.ip().octets();
            b.extend((0..4).map(|i| ip[i] ^ key[i]));
        }),
        SocketAddr::V6(a) => attribute(buf, ATTR_XOR_MAPPED_ADDRESS, 20, |b| {
            b.extend_from_slice(&[0, 0x02]);
            b.extend_from_slice(&port.to_be_bytes());
            let ip = a.ip().octets();
            b.extend((0..16).map(|i| ip[i] ^ key[i]));
        }),
    }
}

/// Appends a Binding request with `transaction` (what a client sends), with `FINGERPRINT` if
/// asked.
pub fn request(buf: &mut Vec<u8>, transaction: &[u8; 12], with_fingerprint: bool) {
    let start = buf.len();
    buf.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&COOKIE.to_be_bytes());
    buf.extend_from_slice(transaction);
    if with_fingerprint {
        set_length(buf, start, 8);
        let value = fingerprint(&buf[start..]);
        attribute(buf, ATTR_FINGERPRINT, 4, |b| {
            b.extend_from_slice(&value.to_be_bytes())
        });
    }
    set_length(buf, start, 0);
}

/// The address a Binding success response `d` maps its client to (what a client reads).
pub fn mapped_address(d: &[u8]) -> Option<SocketAddr> {
    if d.len() < HEADER || u16::from_be_bytes([d[0], d[1]]) != BINDING_SUCCESS {
        return None;
    }
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&COOKIE.to_be_bytes());
    key[4..].copy_from_slice(&d[8..HEADER]);
    let mut at = HEADER;
    while let Some(head) = d.get(at..at + 4) {
        let ty = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let v = d.get(at + 4..at + 4 + len)?;
        if ty == ATTR_XOR_MAPPED_ADDRESS && v.len() >= 8 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ (COOKIE >> 16) as u16;
            let ip: std::net::IpAddr = match (v[1], v.len()) {
                (0x01, 8) => {
                    let o: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                    o.into()
                }
                (0x02, 20) => {
                    let o: [u8; 16] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                    o.into()
                }
                _ => return None,
            };
            return Some(SocketAddr::new(ip, port));
        }
        at += (4 + len).next_multiple_of(4);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn rfc5769_sample_response_ipv4_and_ipv6() {
        // RFC 5769 §2.2 and §2.3: the XOR-MAPPED-ADDRESS of the sample responses.
        let tx = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let req = Request {
            transaction: tx,
            fingerprint: false,
            unknown: vec![],
        };
        let mut b = Vec::new();
        answer(&mut b, &req, "192.0.2.1:32853".parse().unwrap());
        assert_eq!(
            &b[HEADER..],
            &[
                0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43
            ]
        );
        let mut b = Vec::new();
        let v6 = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        answer(&mut b, &req, v6);
        assert_eq!(
            &b[HEADER..],
            &[
                0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3,
                0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        assert_eq!(mapped_address(&b), Some(v6));
    }

    #[test]
    fn requests_round_trip_with_and_without_fingerprint() {
        for fp in [false, true] {
            let mut d = Vec::new();
            request(&mut d, &TX, fp);
            let req = parse(&d).unwrap();
            assert_eq!((req.transaction, req.fingerprint), (TX, fp));
            let mut b = Vec::new();
            let from = "198.51.100.7:4242".parse().unwrap();
            answer(&mut b, &req, from);
            assert_eq!(mapped_address(&b), Some(from));
            assert_eq!(
                usize::from(u16::from_be_bytes([b[2], b[3]])),
                b.len() - HEADER
            );
            if fp {
                let n = b.len();
                let value = u32::from_be_bytes(b[n - 4..].try_into().unwrap());
                assert_eq!(value, fingerprint(&b[..n - 8]));
            }
        }
    }

    #[test]
    fn unknown_required_attributes_get_a_420_and_malformed_messages_nothing() {
        let mut d = Vec::new();
        request(&mut d, &TX, false);
        // CHANGE-REQUEST (0x0003, RFC 5780) is comprehension-required and unknown here;
        // SOFTWARE (0x8022) is optional.
        d.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]);
        d.extend_from_slice(&[0x80, 0x22, 0x00, 0x01, b'x', 0, 0, 0]);
        set_length(&mut d, 0, 0);
        let req = parse(&d).unwrap();
        assert_eq!(req.unknown, vec![0x0003]);
        let mut b = Vec::new();
        answer(&mut b, &req, "192.0.2.1:1".parse().unwrap());
        assert_eq!(&b[..2], &[0x01, 0x11]);
        assert_eq!(&b[HEADER..HEADER + 8], &[0x00, 0x09, 0x00, 4, 0, 0, 4, 20]);
        assert_eq!(
            b.len(),
            36,
            "one unknown attribute: a 24-byte request, a 36-byte answer"
        );
        assert!(b.ends_with(&[0x00, 0x0A, 0x00, 0x02, 0x00, 0x03, 0, 0]));
        // Lengths that disagree, attributes overrunning, a wrong or misplaced FINGERPRINT.
        let mut long = d.clone();
        long.push(0);
        assert_eq!(parse(&long), Err(StunError::Malformed));
        let mut over = d.clone();
        over[HEADER + 3] = 200;
        assert_eq!(parse(&over), Err(StunError::Malformed));
        let mut fp = Vec::new();
        request(&mut fp, &TX, true);
        let n = fp.len();
        fp[n - 1] ^= 1;
        assert_eq!(parse(&fp), Err(StunError::BadFingerprint));
        fp[n - 1] ^= 1;
        fp.extend_from_slice(&[0x80, 0x22, 0, 0]);
        set_length(&mut fp, 0, 0);
        assert!(parse(&fp).is_err(), "FINGERPRINT not last");
        // A Binding success (a response) and an indication are not requests.
        let mut resp = d.clone();
        resp[..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        assert_eq!(parse(&resp), Err(StunError::NotBindingRequest));
        resp[..2].copy_from_slice(&0x0011u16.to_be_bytes());
        assert_eq!(parse(&resp), Err(StunError::NotBindingRequest));
    }
}
