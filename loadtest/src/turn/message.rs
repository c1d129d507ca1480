//! TURN messages (RFC 8656 over RFC 8489): the requests a virtual peer sends (Allocate,
//! ChannelBind, Refresh, signed with long-term credentials), the responses it reads, and
//! ChannelData.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// STUN's magic cookie.
pub(super) const COOKIE: u32 = 0x2112_A442;
/// A STUN header's length.
pub(super) const HEADER: usize = 20;

/// Methods (RFC 8656 §17) and classes (RFC 8489 §5): a message type is the method with the
/// class bits (0x0010 indication, 0x0100 success, 0x0110 error) woven in.
pub(super) const ALLOCATE: u16 = 0x0003;
pub(super) const REFRESH: u16 = 0x0004;
pub(super) const CHANNEL_BIND: u16 = 0x0009;
pub(super) const SUCCESS: u16 = 0x0100;
pub(super) const ERROR: u16 = 0x0110;

pub(super) const ATTR_USERNAME: u16 = 0x0006;
pub(super) const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub(super) const ATTR_ERROR_CODE: u16 = 0x0009;
pub(super) const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
pub(super) const ATTR_LIFETIME: u16 = 0x000D;
pub(super) const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub(super) const ATTR_REALM: u16 = 0x0014;
pub(super) const ATTR_NONCE: u16 = 0x0015;
pub(super) const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub(super) const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;

/// The channel every peer binds to its partner: numbers are per allocation, and each peer has
/// one channel, so one number serves all (0x4000 is the first of the range).
pub const CHANNEL: u16 = 0x4000;
/// A ChannelData message's header: the channel number and the payload's length.
pub const CHANNEL_HEADER: usize = 4;

/// A TURN user's long-term credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub user: String,
    /// The password.
    pub pass: String,
}

/// Parses `USER:PASS` (the password may hold colons; the username may not).
pub fn parse_credentials(s: &str) -> Result<Credentials, String> {
    match s.split_once(':') {
        Some((user, pass)) if !user.is_empty() => Ok(Credentials {
            user: user.into(),
            pass: pass.into(),
        }),
        _ => Err(format!("`{s}` is not USER:PASS")),
    }
}

/// The long-term key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2; no SASLprep, so
/// credentials are taken as given).
pub fn long_term_key(c: &Credentials, realm: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(c.user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(c.pass.as_bytes());
    h.finalize().into()
}

/// A STUN message being written.
pub(super) struct Message {
    pub(super) buf: Vec<u8>,
}

impl Message {
    fn new(ty: u16, txid: &[u8; 12]) -> Message {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&ty.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&COOKIE.to_be_bytes());
        buf.extend_from_slice(txid);
        Message { buf }
    }

    fn set_length(&mut self, extra: usize) {
        let len = (self.buf.len() - HEADER + extra) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute, zero-padded to four bytes.
    fn attr(mut self, ty: u16, value: &[u8]) -> Message {
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self.set_length(0);
        self
    }

    /// Appends an XOR-…-ADDRESS attribute (RFC 8489 §14.2).
    fn xor_addr(self, ty: u16, a: SocketAddr) -> Message {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&COOKIE.to_be_bytes());
        key[4..].copy_from_slice(&self.buf[8..HEADER]);
        let mut v = vec![0];
        let port = a.port() ^ (COOKIE >> 16) as u16;
        match a.ip() {
            IpAddr::V4(ip) => {
                v.push(1);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(key).map(|(b, k)| b ^ k));
            }
            IpAddr::V6(ip) => {
                v.push(2);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(key).map(|(b, k)| b ^ k));
            }
        }
        self.attr(ty, &v)
    }

    /// Appends USERNAME, REALM, NONCE and MESSAGE-INTEGRITY: the HMAC-SHA1 of the message so
    /// far, its length already counting the integrity attribute (RFC 8489 §14.5).
    fn sign(self, auth: &Auth) -> Vec<u8> {
        let mut m = self
            .attr(ATTR_USERNAME, auth.user.as_bytes())
            .attr(ATTR_REALM, auth.realm.as_bytes())
            .attr(ATTR_NONCE, &auth.nonce);
        m.integrity(&auth.key)
    }

    fn integrity(&mut self, key: &[u8]) -> Vec<u8> {
        self.set_length(24);
        // HMAC takes a key of any length: it cannot fail.
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.buf
            .extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&tag);
        std::mem::take(&mut self.buf)
    }
}

/// A response to one of our requests, as far as a client needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The method (ALLOCATE, REFRESH, CHANNEL_BIND…).
    pub method: u16,
    /// A success response (otherwise an error response).
    pub success: bool,
    /// The transaction it answers.
    pub txid: [u8; 12],
    /// ERROR-CODE: the code (e.g. 401) and its reason phrase.
    pub error: Option<(u16, String)>,
    /// REALM.
    pub realm: Option<String>,
    /// NONCE.
    pub nonce: Option<Vec<u8>>,
    /// XOR-RELAYED-ADDRESS.
    pub relayed: Option<SocketAddr>,
    /// LIFETIME, in seconds.
    pub lifetime: Option<u32>,
}

/// Reads a STUN success or error response; `None` for anything else (ChannelData, requests,
/// indications, malformed messages).
pub fn parse_response(d: &[u8]) -> Option<Response> {
    let head = d.get(..HEADER)?;
    let ty = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if ty & 0xC000 != 0 || head[4..8] != COOKIE.to_be_bytes() || d.len() < HEADER + len {
        return None;
    }
    let class = ty & 0x0110;
    if class != SUCCESS && class != ERROR {
        return None;
    }
    let mut r = Response {
        method: ty & !0x0110,
        success: class == SUCCESS,
        txid: head[8..HEADER].try_into().ok()?,
        ..Response::default()
    };
    let body = &d[HEADER..HEADER + len];
    let mut at = 0;
    while let Some(h) = body.get(at..at + 4) {
        let aty = u16::from_be_bytes([h[0], h[1]]);
        let alen = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let v = body.get(at + 4..at + 4 + alen)?;
        match aty {
            ATTR_ERROR_CODE if v.len() >= 4 => {
                let code = u16::from(v[2] & 7) * 100 + u16::from(v[3]);
                r.error = Some((code, String::from_utf8_lossy(&v[4..]).into_owned()));
            }
            ATTR_REALM => r.realm = Some(String::from_utf8_lossy(v).into_owned()),
            ATTR_NONCE => r.nonce = Some(v.to_vec()),
            ATTR_LIFETIME if v.len() == 4 => {
                r.lifetime = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            ATTR_XOR_RELAYED_ADDRESS => r.relayed = xor_address(v, &r.txid),
            _ => {}
        }
        at += (4 + alen).next_multiple_of(4);
    }
    Some(r)
}

pub(super) fn xor_address(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&COOKIE.to_be_bytes());
    key[4..].copy_from_slice(txid);
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (COOKIE >> 16) as u16;
    let ip: IpAddr = match (v[1], v.len()) {
        (1, 8) => <[u8; 4]>::try_from(&v[4..8])
            .ok()
            .map(|o| std::array::from_fn::<u8, 4, _>(|i| o[i] ^ key[i]))?
            .into(),
        (2, 20) => <[u8; 16]>::try_from(&v[4..20])
            .ok()
            .map(|o| std::array::from_fn::<u8, 16, _>(|i| o[i] ^ key[i]))?
            .into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Appends a ChannelData message for `channel` carrying `payload` (over UDP, unpadded).
pub fn channel_data(buf: &mut Vec<u8>, channel: u16, payload: &[u8]) {
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    buf.extend_from_slice(payload);
}

pub(super) fn allocate(id: &[u8; 12], auth: Option<&Auth>) -> Vec<u8> {
    // REQUESTED-TRANSPORT: UDP (17), then three reserved bytes.
    let m = Message::new(ALLOCATE, id).attr(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    match auth {
        Some(a) => m.sign(a),
        None => m.buf,
    }
}

pub(super) fn channel_bind(id: &[u8; 12], auth: &Auth, peer: SocketAddr) -> Vec<u8> {
    let mut number = CHANNEL.to_be_bytes().to_vec();
    number.extend_from_slice(&[0, 0]);
    Message::new(CHANNEL_BIND, id)
        .attr(ATTR_CHANNEL_NUMBER, &number)
        .xor_addr(ATTR_XOR_PEER_ADDRESS, peer)
        .sign(auth)
}

pub(super) fn refresh(id: &[u8; 12], auth: &Auth, lifetime: u32) -> Vec<u8> {
    Message::new(REFRESH, id)
        .attr(ATTR_LIFETIME, &lifetime.to_be_bytes())
        .sign(auth)
}

/// What signs a peer's requests once the server has named its realm and nonce.
#[derive(Debug, Clone)]
pub(super) struct Auth {
    pub(super) user: String,
    pub(super) realm: String,
    pub(super) nonce: Vec<u8>,
    pub(super) key: [u8; 16],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.4: a request with long-term authentication (USERNAME, NONCE, REALM,
    /// MESSAGE-INTEGRITY), username and password as SASLprep leaves them.
    const RFC_5769_LONG_TERM: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
        0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
        0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
        0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
        0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
        0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
        0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];

    #[test]
    fn message_integrity_matches_rfc_5769() {
        let creds = Credentials {
            user: "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}".into(),
            pass: "TheMatrIX".into(),
        };
        let txid: [u8; 12] = RFC_5769_LONG_TERM[8..20].try_into().unwrap();
        let key = long_term_key(&creds, "example.org");
        let mut m = Message::new(0x0001, &txid)
            .attr(ATTR_USERNAME, creds.user.as_bytes())
            .attr(ATTR_NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
            .attr(ATTR_REALM, b"example.org");
        assert_eq!(m.integrity(&key), RFC_5769_LONG_TERM);
    }

    #[test]
    fn responses_parse_and_garbage_does_not() {
        let txid = [7u8; 12];
        let relayed: SocketAddr = "127.0.0.1:49152".parse().unwrap();
        let m = Message::new(ALLOCATE | SUCCESS, &txid)
            .xor_addr(ATTR_XOR_RELAYED_ADDRESS, relayed)
            .attr(ATTR_LIFETIME, &600u32.to_be_bytes());
        let r = parse_response(&m.buf).unwrap();
        assert_eq!((r.method, r.success, r.txid), (ALLOCATE, true, txid));
        assert_eq!((r.relayed, r.lifetime), (Some(relayed), Some(600)));
        let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let m = Message::new(ALLOCATE | SUCCESS, &txid).xor_addr(ATTR_XOR_RELAYED_ADDRESS, v6);
        assert_eq!(parse_response(&m.buf).unwrap().relayed, Some(v6));
        let mut code = vec![0, 0, 4, 1];
        code.extend_from_slice(b"Unauthorized");
        let m = Message::new(ALLOCATE | ERROR, &txid)
            .attr(ATTR_ERROR_CODE, &code)
            .attr(ATTR_REALM, b"test")
            .attr(ATTR_NONCE, b"abc");
        let r = parse_response(&m.buf).unwrap();
        assert_eq!(r.error, Some((401, "Unauthorized".into())));
        assert_eq!(
            (r.realm.as_deref(), r.nonce.as_deref()),
            (Some("test"), Some(&b"abc"[..]))
        );
        // Cut anywhere, or a request, or ChannelData: nothing, and no panic.
        for n in 0..m.buf.len() {
            let _ = parse_response(&m.buf[..n]);
        }
        assert_eq!(parse_response(&Message::new(ALLOCATE, &txid).buf), None);
        let mut cd = Vec::new();
        channel_data(&mut cd, CHANNEL, b"lt 0");
        assert_eq!(parse_response(&cd), None);
    }

    #[test]
    fn credentials_parse() {
        let c = parse_credentials("u:p:q").unwrap();
        assert_eq!((c.user.as_str(), c.pass.as_str()), ("u", "p:q"));
        assert!(parse_credentials("nopass").is_err());
        assert!(parse_credentials(":p").is_err());
    }
}
