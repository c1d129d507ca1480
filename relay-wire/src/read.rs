//! Readers for what the relay sends (everything [`crate::reply`] writes): one datagram in, one
//! typed [`Message`] out, for peers.
//!
//! The reader walks the scanner's grammar ([`crate::scan`]: RFC 8259, UTF-8 checked, nesting
//! bounded by [`scan::MAX_DEPTH`] without recursion), so it never panics, whatever the input.
//! Fields a message does not know are skipped (a newer relay may add some); a field it needs
//! that is missing, given twice or of the wrong type is a [`ReadError`] naming it. Strings are
//! borrowed from the datagram unless they hold escapes, which are decoded (`\uXXXX` surrogate
//! pairs included; a lone surrogate is refused). Addresses are read as the relay writes them,
//! `ip:port` or `[ip]:port` strings, numbers as the writer writes them (`server_time` a float,
//! channel numbers and counts integers). A `relayed_packet`'s payload is the raw bytes of its
//! JSON value, as the relay forwarded them: never re-encoded.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use crate::reply::Presence;
use crate::scan::{self, ScanError, Scanner, Span};

/// Why a datagram does not read as a message of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Not one JSON object: bad syntax, not UTF-8, truncated, trailing bytes, or not an object
    /// at the top.
    Syntax,
    /// Nested deeper than [`scan::MAX_DEPTH`].
    TooDeep,
    /// The message lacks this field (`type` included).
    Missing(&'static str),
    /// This field is given twice.
    Duplicate(&'static str),
    /// This field has the wrong JSON type, or a value it cannot take: an address that does not
    /// parse, a number beyond its range, a string with a lone surrogate.
    Invalid(&'static str),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Syntax => f.write_str("not a JSON object"),
            ReadError::TooDeep => write!(f, "nested deeper than {}", scan::MAX_DEPTH),
            ReadError::Missing(k) => write!(f, "no `{k}` field"),
            ReadError::Duplicate(k) => write!(f, "`{k}` given twice"),
            ReadError::Invalid(k) => write!(f, "`{k}` is not what the field holds"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<ScanError> for ReadError {
    fn from(e: ScanError) -> ReadError {
        match e {
            ScanError::TooDeep => ReadError::TooDeep,
            _ => ReadError::Syntax,
        }
    }
}

/// What the full `register_ack` holds beyond the short form's `your_address`.
#[derive(Debug, Clone, PartialEq)]
pub struct FullAck<'a> {
    /// The relay's clock, Unix seconds.
    pub server_time: f64,
    /// The name registered.
    pub peer_name: Cow<'a, str>,
    /// The registration's session token (Part 2); the old relay sends none.
    pub session: Option<Cow<'a, str>>,
}

/// A message the relay sends, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// `register_ack`, full or short (Part 2: `type` and `your_address` only).
    RegisterAck {
        /// The peer's address as the relay saw it: its public address.
        your_address: SocketAddr,
        /// The full form's fields; `None` for the short form.
        full: Option<FullAck<'a>>,
    },
    /// `challenge` (Part 5): the cookie to sign.
    Challenge {
        /// The cookie, base64, to be signed and sent back.
        cookie: Cow<'a, str>,
    },
    /// `keepalive_ack`.
    KeepaliveAck {
        /// The name kept alive.
        peer_name: Cow<'a, str>,
        /// The relay's clock, Unix seconds.
        server_time: f64,
        /// The registration's current session (it changes on a move); the old relay sends none.
        session: Option<Cow<'a, str>>,
    },
    /// `server_keepalive`.
    ServerKeepalive {
        /// The relay's clock, Unix seconds.
        server_time: f64,
        /// The name it keeps alive.
        peer_name: Cow<'a, str>,
    },
    /// `pong`: full (both fields), or short (the address, or neither).
    Pong {
        /// The relay's clock, Unix seconds; only in the full form.
        server_time: Option<f64>,
        /// The peer's address as the relay saw it.
        your_address: Option<SocketAddr>,
    },
    /// `relayed_packet`: a `relay` delivered.
    RelayedPacket {
        /// The sender's registered name.
        from_peer: Cow<'a, str>,
        /// The payload's JSON value, byte for byte as the sender wrote it (see
        /// [`payload_text`] for a payload that is a string).
        payload: Cow<'a, [u8]>,
    },
    /// `peer_list`.
    PeerList {
        /// The names listed (all of them unless `truncated`).
        peers: Vec<Cow<'a, str>>,
        /// How many names are registered in all.
        count: usize,
        /// Whether names were left out.
        truncated: bool,
    },
    /// `peer_joined` or `peer_left`.
    Presence {
        /// Which of the two.
        kind: Presence,
        /// The name that joined or left.
        peer_name: Cow<'a, str>,
        /// The names listed with it.
        peers: Vec<Cow<'a, str>>,
        /// Whether names were left out.
        truncated: bool,
    },
    /// `watch_ack`.
    WatchAck {
        /// The watched names that are online.
        online: Vec<Cow<'a, str>>,
        /// Whether names were left out.
        truncated: bool,
    },
    /// `peer_info`: the answer to `lookup`.
    PeerInfo {
        /// The name asked about.
        name: Cow<'a, str>,
        /// Whether it is online.
        online: bool,
    },
    /// `introduce`: where a peer can be reached.
    Introduce {
        /// The peer introduced.
        peer_name: Cow<'a, str>,
        /// Its public address.
        address: SocketAddr,
    },
    /// `connect_request`: a peer asks to be introduced.
    ConnectRequest {
        /// The peer asking.
        peer_name: Cow<'a, str>,
    },
    /// `bind_ack`: the channel number to send frames to `target` under.
    BindAck {
        /// The peer at the other end.
        target: Cow<'a, str>,
        /// The binder's number for the channel.
        channel: u32,
    },
    /// `channel_bound`: a peer bound a channel to the recipient.
    ChannelBound {
        /// The peer that bound it.
        peer_name: Cow<'a, str>,
        /// The recipient's number for the channel.
        channel: u32,
    },
    /// `channel_closed`.
    ChannelClosed {
        /// The recipient's number of the channel gone.
        channel: u32,
    },
    /// `error`.
    Error {
        /// The code (Part 2's list; a newer relay may have more).
        code: Cow<'a, str>,
        /// The text, empty where the relay could not pay for it (or left it out).
        message: Cow<'a, str>,
    },
    /// A well-formed message of a type the relay does not send (yet).
    Other {
        /// Its `type`.
        ty: Cow<'a, str>,
    },
}

impl Message<'_> {
    /// The message's `type` as written on the wire.
    pub fn ty(&self) -> &str {
        match self {
            Message::RegisterAck { .. } => "register_ack",
            Message::Challenge { .. } => "challenge",
            Message::KeepaliveAck { .. } => "keepalive_ack",
            Message::ServerKeepalive { .. } => "server_keepalive",
            Message::Pong { .. } => "pong",
            Message::RelayedPacket { .. } => "relayed_packet",
            Message::PeerList { .. } => "peer_list",
            Message::Presence {
                kind: Presence::Joined,
                ..
            } => "peer_joined",
            Message::Presence {
                kind: Presence::Left,
                ..
            } => "peer_left",
            Message::WatchAck { .. } => "watch_ack",
            Message::PeerInfo { .. } => "peer_info",
            Message::Introduce { .. } => "introduce",
            Message::ConnectRequest { .. } => "connect_request",
            Message::BindAck { .. } => "bind_ack",
            Message::ChannelBound { .. } => "channel_bound",
            Message::ChannelClosed { .. } => "channel_closed",
            Message::Error { .. } => "error",
            Message::Other { ty } => ty,
        }
    }

    /// The message with everything it borrowed from the datagram copied: to keep it past the
    /// receive buffer.
    pub fn into_owned(self) -> Message<'static> {
        fn own(s: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(s.into_owned())
        }
        fn own_all(v: Vec<Cow<'_, str>>) -> Vec<Cow<'static, str>> {
            v.into_iter().map(own).collect()
        }
        match self {
            Message::RegisterAck { your_address, full } => Message::RegisterAck {
                your_address,
                full: full.map(|f| FullAck {
                    server_time: f.server_time,
                    peer_name: own(f.peer_name),
                    session: f.session.map(own),
                }),
            },
            Message::Challenge { cookie } => Message::Challenge {
                cookie: own(cookie),
            },
            Message::KeepaliveAck {
                peer_name,
                server_time,
                session,
            } => Message::KeepaliveAck {
                peer_name: own(peer_name),
                server_time,
                session: session.map(own),
            },
            Message::ServerKeepalive {
                server_time,
                peer_name,
            } => Message::ServerKeepalive {
                server_time,
                peer_name: own(peer_name),
            },
            Message::Pong {
                server_time,
                your_address,
            } => Message::Pong {
                server_time,
                your_address,
            },
            Message::RelayedPacket { from_peer, payload } => Message::RelayedPacket {
                from_peer: own(from_peer),
                payload: Cow::Owned(payload.into_owned()),
            },
            Message::PeerList {
                peers,
                count,
                truncated,
            } => Message::PeerList {
                peers: own_all(peers),
                count,
                truncated,
            },
            Message::Presence {
                kind,
                peer_name,
                peers,
                truncated,
            } => Message::Presence {
                kind,
                peer_name: own(peer_name),
                peers: own_all(peers),
                truncated,
            },
            Message::WatchAck { online, truncated } => Message::WatchAck {
                online: own_all(online),
                truncated,
            },
            Message::PeerInfo { name, online } => Message::PeerInfo {
                name: own(name),
                online,
            },
            Message::Introduce { peer_name, address } => Message::Introduce {
                peer_name: own(peer_name),
                address,
            },
            Message::ConnectRequest { peer_name } => Message::ConnectRequest {
                peer_name: own(peer_name),
            },
            Message::BindAck { target, channel } => Message::BindAck {
                target: own(target),
                channel,
            },
            Message::ChannelBound { peer_name, channel } => Message::ChannelBound {
                peer_name: own(peer_name),
                channel,
            },
            Message::ChannelClosed { channel } => Message::ChannelClosed { channel },
            Message::Error { code, message } => Message::Error {
                code: own(code),
                message: own(message),
            },
            Message::Other { ty } => Message::Other { ty: own(ty) },
        }
    }
}

/// Reads datagram `d` as a message of the relay.
pub fn message(d: &[u8]) -> Result<Message<'_>, ReadError> {
    let o = Object::parse(d)?;
    let ty = o.req("type", string)?;
    Ok(match typed(&o, &ty)? {
        Some(m) => m,
        None => Message::Other { ty },
    })
}

/// The text of a payload (a [`Message::RelayedPacket`]'s) that is a JSON string, as the old
/// peers' payloads are: `Invalid("payload")` for any other JSON value.
pub fn payload_text(payload: &[u8]) -> Result<Cow<'_, str>, ReadError> {
    let whole = std::str::from_utf8(payload).map_err(|_| ReadError::Syntax)?;
    let mut s = Scanner {
        buf: payload,
        pos: 0,
    };
    s.skip_ws();
    let is_string = s.peek() == Some(b'"');
    let start = s.pos;
    s.value(0)?;
    let end = s.pos;
    s.skip_ws();
    if s.pos != payload.len() {
        return Err(ReadError::Syntax);
    }
    if !is_string {
        return Err(ReadError::Invalid("payload"));
    }
    whole
        .get(start..end)
        .and_then(string)
        .ok_or(ReadError::Invalid("payload"))
}

/// Fields whose presence makes a `register_ack` the full one.
const FULL_ACK: [&str; 4] = ["status", "server_time", "peer_name", "session"];

/// The message of type `ty` in `o`; `None` for a type the relay does not send.
fn typed<'a>(o: &Object<'a>, ty: &str) -> Result<Option<Message<'a>>, ReadError> {
    Ok(Some(match ty {
        "register_ack" => {
            let mut full = false;
            for k in FULL_ACK {
                full |= o.get(k)?.is_some();
            }
            Message::RegisterAck {
                your_address: o.req("your_address", addr)?,
                full: if full {
                    Some(FullAck {
                        server_time: o.req("server_time", float)?,
                        peer_name: o.req("peer_name", string)?,
                        session: o.opt("session", string)?,
                    })
                } else {
                    None
                },
            }
        }
        "challenge" => Message::Challenge {
            cookie: o.req("cookie", string)?,
        },
        "keepalive_ack" => Message::KeepaliveAck {
            peer_name: o.req("peer_name", string)?,
            server_time: o.req("server_time", float)?,
            session: o.opt("session", string)?,
        },
        "server_keepalive" => Message::ServerKeepalive {
            server_time: o.req("server_time", float)?,
            peer_name: o.req("peer_name", string)?,
        },
        "pong" => Message::Pong {
            server_time: o.opt("server_time", float)?,
            your_address: o.opt("your_address", addr)?,
        },
        "relayed_packet" => Message::RelayedPacket {
            from_peer: o.req("from_peer", string)?,
            payload: Cow::Borrowed(o.req("payload", |v| Some(v.as_bytes()))?),
        },
        "peer_list" => Message::PeerList {
            peers: o.req("peers", names)?,
            count: o.req("count", integer)?,
            truncated: o.opt("truncated", boolean)?.unwrap_or(false),
        },
        "peer_joined" | "peer_left" => Message::Presence {
            kind: if ty == "peer_joined" {
                Presence::Joined
            } else {
                Presence::Left
            },
            peer_name: o.req("peer_name", string)?,
            peers: o.req("peers", names)?,
            truncated: o.opt("truncated", boolean)?.unwrap_or(false),
        },
        "watch_ack" => Message::WatchAck {
            online: o.req("online", names)?,
            truncated: o.opt("truncated", boolean)?.unwrap_or(false),
        },
        "peer_info" => Message::PeerInfo {
            name: o.req("name", string)?,
            online: o.req("online", boolean)?,
        },
        "introduce" => Message::Introduce {
            peer_name: o.req("peer_name", string)?,
            address: o.req("address", addr)?,
        },
        "connect_request" => Message::ConnectRequest {
            peer_name: o.req("peer_name", string)?,
        },
        "bind_ack" => Message::BindAck {
            target: o.req("target", string)?,
            channel: o.req("channel", integer)?,
        },
        "channel_bound" => Message::ChannelBound {
            peer_name: o.req("peer_name", string)?,
            channel: o.req("channel", integer)?,
        },
        "channel_closed" => Message::ChannelClosed {
            channel: o.req("channel", integer)?,
        },
        "error" => Message::Error {
            code: o.req("code", string)?,
            message: o.opt("message", string)?.unwrap_or(Cow::Borrowed("")),
        },
        _ => return Ok(None),
    }))
}

/// A JSON object, validated whole: its members' keys and the spans of their values.
struct Object<'a> {
    /// The datagram, checked to be UTF-8 once: every string in it is a slice of it.
    d: &'a str,
    /// Each member's key (`None` where it does not decode: then no field of ours) and value.
    members: Vec<(Option<Cow<'a, str>>, Span)>,
}

impl<'a> Object<'a> {
    fn parse(d: &'a [u8]) -> Result<Object<'a>, ReadError> {
        let d = std::str::from_utf8(d).map_err(|_| ReadError::Syntax)?;
        let mut s = Scanner {
            buf: d.as_bytes(),
            pos: 0,
        };
        let mut members = Vec::new();
        s.skip_ws();
        s.expect(b'{')?;
        s.skip_ws();
        if s.peek() == Some(b'}') {
            s.pos += 1;
        } else {
            loop {
                s.skip_ws();
                let key = s.string()?;
                s.skip_ws();
                s.expect(b':')?;
                s.skip_ws();
                let start = s.pos;
                // Depth 1: the top-level object is open.
                s.value(1)?;
                members.push((text(d, key), Span { start, end: s.pos }));
                s.skip_ws();
                if s.done_object()? {
                    break;
                }
            }
        }
        s.skip_ws();
        if s.pos != d.len() {
            return Err(ReadError::Syntax);
        }
        Ok(Object { d, members })
    }

    /// The value of field `key`, if present.
    fn get(&self, key: &'static str) -> Result<Option<&'a str>, ReadError> {
        let mut found = None;
        for (k, v) in &self.members {
            if k.as_deref() == Some(key) && found.replace(*v).is_some() {
                return Err(ReadError::Duplicate(key));
            }
        }
        Ok(found.map(|v| self.d.get(v.start..v.end).unwrap_or_default()))
    }

    /// Field `key` read by `read`, if present.
    fn opt<T>(
        &self,
        key: &'static str,
        read: impl FnOnce(&'a str) -> Option<T>,
    ) -> Result<Option<T>, ReadError> {
        match self.get(key)? {
            Some(v) => read(v).map(Some).ok_or(ReadError::Invalid(key)),
            None => Ok(None),
        }
    }

    /// Field `key` read by `read`, which the message must have.
    fn req<T>(
        &self,
        key: &'static str,
        read: impl FnOnce(&'a str) -> Option<T>,
    ) -> Result<T, ReadError> {
        self.opt(key, read)?.ok_or(ReadError::Missing(key))
    }
}

/// The text of a scanned string of `d`: borrowed (a slice of `d`, whose quotes are char
/// boundaries: no UTF-8 check again), or decoded where it holds escapes.
fn text(d: &str, s: scan::RawStr) -> Option<Cow<'_, str>> {
    let raw = d.get(s.span.start..s.span.end)?;
    if s.escaped {
        scan::unescape(raw.as_bytes()).map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(raw))
    }
}

// Readers of one validated JSON value (its exact text); `None` when it is not of their kind.

fn string(v: &str) -> Option<Cow<'_, str>> {
    let mut s = Scanner {
        buf: v.as_bytes(),
        pos: 0,
    };
    let raw = s.string().ok()?;
    (s.pos == v.len()).then_some(())?;
    text(v, raw)
}

fn addr(v: &str) -> Option<SocketAddr> {
    string(v)?.parse().ok()
}

fn float(v: &str) -> Option<f64> {
    // A validated value that starts so is a JSON number, which Rust's float syntax includes;
    // one beyond f64 (`1e400`) is refused, as serde_json refuses it.
    if !matches!(v.as_bytes().first(), Some(b'-' | b'0'..=b'9')) {
        return None;
    }
    let x: f64 = v.parse().ok()?;
    x.is_finite().then_some(x)
}

/// A non-negative integer written without fraction or exponent, within `T`.
fn integer<T: std::str::FromStr>(v: &str) -> Option<T> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// An array of strings.
fn names(v: &str) -> Option<Vec<Cow<'_, str>>> {
    let mut s = Scanner {
        buf: v.as_bytes(),
        pos: 0,
    };
    s.expect(b'[').ok()?;
    let mut out = Vec::new();
    s.skip_ws();
    if s.peek() == Some(b']') {
        return Some(out);
    }
    loop {
        s.skip_ws();
        let raw = s.string().ok()?;
        out.push(text(v, raw)?);
        s.skip_ws();
        match s.peek() {
            Some(b',') => s.pos += 1,
            Some(b']') => return Some(out),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{self, ErrorCode};
    use serde_json::Value;

    fn read(d: &[u8]) -> Message<'_> {
        message(d).unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(d)))
    }

    fn write(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = Vec::new();
        f(&mut b);
        b
    }

    /// The time as the writer rounds it.
    fn written(t: f64) -> f64 {
        format!("{t:.6}").parse().unwrap()
    }

    const NAMES: &[&str] = &[
        "Alice",
        "zoë \"q\" \\ / 🙂",
        "tab\there\u{1}\u{1f}\u{7f}",
        "\u{2028}日本語",
        "",
    ];

    const ADDRS: &[&str] = &[
        "198.51.100.7:9001",
        "[2001:db8::1]:5",
        "[::ffff:1.2.3.4]:65535",
    ];

    #[test]
    fn register_acks_full_and_short_round_trip() {
        for (&name, &a) in NAMES.iter().zip(ADDRS.iter().cycle()) {
            let a: SocketAddr = a.parse().unwrap();
            let t = 1_795_574_001.451_234_3;
            let d = write(|b| reply::register_ack(b, a, t, name, "00ff\"s"));
            let m = read(&d);
            assert_eq!(m.ty(), "register_ack");
            assert_eq!(
                m,
                Message::RegisterAck {
                    your_address: a,
                    full: Some(FullAck {
                        server_time: written(t),
                        peer_name: name.into(),
                        session: Some("00ff\"s".into()),
                    }),
                }
            );
            let d = write(|b| reply::register_ack_short(b, a));
            assert_eq!(
                read(&d),
                Message::RegisterAck {
                    your_address: a,
                    full: None
                }
            );
        }
        // The old relay's full ack: no session.
        let old = br#"{"type": "register_ack", "status": "success", "your_address": "1.2.3.4:5", "server_time": 1795574001.45, "peer_name": "Al"}"#;
        let Message::RegisterAck {
            full: Some(full), ..
        } = read(old)
        else {
            panic!()
        };
        assert_eq!((full.server_time, full.session), (1795574001.45, None));
    }

    #[test]
    fn acks_keepalives_and_pongs_round_trip() {
        let a: SocketAddr = "[::1]:7".parse().unwrap();
        for &name in NAMES {
            let d = write(|b| reply::keepalive_ack(b, name, 12.5, "tok"));
            assert_eq!(
                read(&d),
                Message::KeepaliveAck {
                    peer_name: name.into(),
                    server_time: 12.5,
                    session: Some("tok".into())
                }
            );
            let d = write(|b| reply::server_keepalive(b, 0.000_000_4, name));
            assert_eq!(
                read(&d),
                Message::ServerKeepalive {
                    server_time: written(0.000_000_4),
                    peer_name: name.into()
                }
            );
            let d = write(|b| reply::challenge(b, name));
            assert_eq!(
                read(&d),
                Message::Challenge {
                    cookie: name.into()
                }
            );
        }
        let d = write(|b| reply::pong(b, 3.25, a));
        assert_eq!(
            read(&d),
            Message::Pong {
                server_time: Some(3.25),
                your_address: Some(a)
            }
        );
        let d = write(|b| reply::pong_short(b, Some(a)));
        assert_eq!(
            read(&d),
            Message::Pong {
                server_time: None,
                your_address: Some(a)
            }
        );
        let d = write(|b| reply::pong_short(b, None));
        assert_eq!(
            read(&d),
            Message::Pong {
                server_time: None,
                your_address: None
            }
        );
    }

    #[test]
    fn relayed_payloads_are_their_bytes() {
        let payloads: &[&[u8]] = &[
            br#""{\"type\": \"handshake\", \"m\": \"caf\u00e9 \ud83d\ude00\"}""#,
            br#"{"a":[1,2,{"b":null}],"c":"\"}"}"#,
            b"1.5e3",
            b"null",
            b"[]",
            br#""""#,
        ];
        for &name in NAMES {
            for &p in payloads {
                let d = write(|b| {
                    reply::relayed_prefix(b, name);
                    b.extend_from_slice(p);
                    b.extend_from_slice(reply::RELAYED_SUFFIX);
                });
                let m = read(&d);
                assert_eq!(
                    m,
                    Message::RelayedPacket {
                        from_peer: name.into(),
                        payload: p.into()
                    }
                );
                let Message::RelayedPacket { payload, .. } = m else {
                    unreachable!()
                };
                let want: Value = serde_json::from_slice(p).unwrap();
                match want.as_str() {
                    Some(s) => assert_eq!(payload_text(&payload).unwrap(), s),
                    None => assert_eq!(payload_text(&payload), Err(ReadError::Invalid("payload"))),
                }
            }
        }
        assert_eq!(payload_text(b" \"a\" "), Ok("a".into()));
        assert_eq!(payload_text(b"\"a\" x"), Err(ReadError::Syntax));
        assert_eq!(
            payload_text(br#""\ud800""#),
            Err(ReadError::Invalid("payload"))
        );
        assert_eq!(payload_text(b"\"\xff\""), Err(ReadError::Syntax));
    }

    #[test]
    fn lists_round_trip_truncated_or_whole() {
        let many: Vec<String> = (0..500).map(|i| format!("peer-{i:04}\"é")).collect();
        for (names, count, budget) in [
            (&many[..], 500, Some(1200)),
            (&many[..3], 3, Some(1200)),
            (&many[..0], 0, None),
            (&many[..], 9000, None),
        ] {
            let d = write(|b| reply::peer_list(b, names.iter().map(String::as_str), count, budget));
            let Message::PeerList {
                peers,
                count: c,
                truncated,
            } = read(&d)
            else {
                panic!()
            };
            let v: Value = serde_json::from_slice(&d).unwrap();
            assert_eq!(c, count);
            assert_eq!(truncated, v["truncated"] == true);
            assert_eq!(truncated, peers.len() < names.len());
            assert_eq!(peers, names[..peers.len()]);

            for kind in [Presence::Joined, Presence::Left] {
                let d = write(|b| {
                    reply::presence(b, kind, "n\\", names.iter().map(String::as_str), budget)
                });
                let m = read(&d);
                assert_eq!(m.ty(), serde_json::from_slice::<Value>(&d).unwrap()["type"]);
                let Message::Presence {
                    kind: k,
                    peer_name,
                    peers,
                    truncated,
                } = m
                else {
                    panic!()
                };
                assert_eq!((k, &*peer_name), (kind, "n\\"));
                assert_eq!(truncated, peers.len() < names.len());
                assert_eq!(peers, names[..peers.len()]);
            }
            let d = write(|b| {
                reply::watch_ack(
                    b,
                    names.iter().map(String::as_str),
                    budget.unwrap_or(1 << 20),
                )
            });
            let Message::WatchAck { online, truncated } = read(&d) else {
                panic!()
            };
            assert_eq!(truncated, online.len() < names.len());
            assert_eq!(online, names[..online.len()]);
        }
    }

    #[test]
    fn lookups_introductions_channels_and_errors_round_trip() {
        let a: SocketAddr = "203.0.113.9:4444".parse().unwrap();
        for &name in NAMES {
            for online in [true, false] {
                let d = write(|b| reply::peer_info(b, name, online));
                assert_eq!(
                    read(&d),
                    Message::PeerInfo {
                        name: name.into(),
                        online
                    }
                );
            }
            let d = write(|b| reply::introduce(b, name, a));
            assert_eq!(
                read(&d),
                Message::Introduce {
                    peer_name: name.into(),
                    address: a
                }
            );
            let d = write(|b| reply::connect_request(b, name));
            assert_eq!(
                read(&d),
                Message::ConnectRequest {
                    peer_name: name.into()
                }
            );
            for channel in [1, 0xDEAD_BEEF, u32::MAX] {
                let d = write(|b| reply::bind_ack(b, name, channel));
                assert_eq!(
                    read(&d),
                    Message::BindAck {
                        target: name.into(),
                        channel
                    }
                );
                let d = write(|b| reply::channel_bound(b, name, channel));
                assert_eq!(
                    read(&d),
                    Message::ChannelBound {
                        peer_name: name.into(),
                        channel
                    }
                );
                let d = write(|b| reply::channel_closed(b, channel));
                assert_eq!(read(&d), Message::ChannelClosed { channel });
            }
        }
        for limit in [0, 50, 1000] {
            let d = write(|b| {
                reply::error(b, ErrorCode::WatchLimit, "too many watches", limit);
            });
            if d.is_empty() {
                continue;
            }
            let Message::Error { code, message } = read(&d) else {
                panic!()
            };
            assert_eq!(code, ErrorCode::WatchLimit.as_str());
            assert_eq!(message, if limit > 50 { "too many watches" } else { "" });
        }
        assert_eq!(
            read(br#"{"type":"error","code":"later_code"}"#),
            Message::Error {
                code: "later_code".into(),
                message: "".into()
            }
        );
    }

    /// A tiny deterministic generator (xorshift64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A string of what JSON must escape, may escape, and what it carries as is.
    fn random_string(r: &mut Rng) -> String {
        const POOL: &[char] = &[
            'a',
            'Z',
            ' ',
            '"',
            '\\',
            '/',
            '\u{0}',
            '\u{8}',
            '\u{c}',
            '\n',
            '\r',
            '\t',
            '\u{1f}',
            '\u{7f}',
            'é',
            '\u{2028}',
            '\u{fffd}',
            '\u{ffff}',
            '日',
            '😀',
            '\u{10ffff}',
        ];
        (0..r.below(24))
            .map(|_| POOL[r.below(POOL.len())])
            .collect()
    }

    /// `s` as Python's `json.dumps` writes it (every non-ASCII char as `\uXXXX`, astral ones as
    /// surrogate pairs), in upper- or lowercase hex.
    fn ascii_escaped(s: &str, upper: bool) -> String {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '/' => o.push_str("\\/"),
                '\u{8}' => o.push_str("\\b"),
                '\u{c}' => o.push_str("\\f"),
                ' '..='~' => o.push(c),
                _ => {
                    for u in c.encode_utf16(&mut [0; 2]) {
                        o.push_str(&if upper {
                            format!("\\u{u:04X}")
                        } else {
                            format!("\\u{u:04x}")
                        });
                    }
                }
            }
        }
        o.push('"');
        o
    }

    #[test]
    fn strings_read_as_serde_json_reads_them() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..3000 {
            let s = random_string(&mut r);
            let encodings = [
                write(|b| reply::json_str(b, &s)),
                serde_json::to_vec(&s).unwrap(),
                ascii_escaped(&s, i % 2 == 0).into_bytes(),
            ];
            for enc in encodings {
                let mut d = br#"{"type":"peer_info","online":true,"name":"#.to_vec();
                d.extend_from_slice(&enc);
                d.push(b'}');
                let Message::PeerInfo { name, .. } = read(&d) else {
                    panic!()
                };
                let v: Value = serde_json::from_slice(&d).unwrap();
                assert_eq!(name, s, "{}", String::from_utf8_lossy(&d));
                assert_eq!(v["name"], *name);
                assert_eq!(payload_text(&enc).unwrap(), s);
            }
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_escaped_keys_count() {
        let d = br#" { "x" : {"y":[1,{"z":"}"}]} , "type" : "bind_ack", "truncated":7, "channel" : 9 , "\u0074arget":"b\u00f6b", "w":null } "#;
        assert_eq!(
            read(d),
            Message::BindAck {
                target: "böb".into(),
                channel: 9
            }
        );
        // A key that does not decode is nobody's.
        let d = br#"{"type":"channel_closed","\udc00":1,"channel":3}"#;
        assert_eq!(read(d), Message::ChannelClosed { channel: 3 });
        assert_eq!(
            read(br#"{"type":"register","name":"a"}"#),
            Message::Other {
                ty: "register".into()
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        use ReadError::*;
        let e = |d: &str| message(d.as_bytes()).expect_err(d);
        assert_eq!(e(r#"{"peer_name":"a"}"#), Missing("type"));
        assert_eq!(e(r#"{"type":5}"#), Invalid("type"));
        assert_eq!(e(r#"{"type":"register_ack"}"#), Missing("your_address"));
        assert_eq!(
            e(r#"{"type":"register_ack","your_address":"1.2.3.4"}"#),
            Invalid("your_address")
        );
        assert_eq!(
            e(r#"{"type":"register_ack","your_address":["1.2.3.4",5]}"#),
            Invalid("your_address")
        );
        assert_eq!(
            e(r#"{"type":"register_ack","your_address":"1.2.3.4:5","peer_name":"a"}"#),
            Missing("server_time")
        );
        assert_eq!(
            e(
                r#"{"type":"register_ack","your_address":"1.2.3.4:5","status":"success","server_time":1}"#
            ),
            Missing("peer_name")
        );
        assert_eq!(
            e(r#"{"type":"channel_closed","channel":1,"channel":2}"#),
            Duplicate("channel")
        );
        assert_eq!(e(r#"{"type":"a","type":"a"}"#), Duplicate("type"));
        assert_eq!(
            e(r#"{"type":"channel_closed","channel":4294967296}"#),
            Invalid("channel")
        );
        assert_eq!(
            e(r#"{"type":"channel_closed","channel":-1}"#),
            Invalid("channel")
        );
        assert_eq!(
            e(r#"{"type":"channel_closed","channel":1.0}"#),
            Invalid("channel")
        );
        assert_eq!(
            e(r#"{"type":"channel_closed","channel":"1"}"#),
            Invalid("channel")
        );
        assert_eq!(
            e(r#"{"type":"peer_list","peers":["a",1],"count":2}"#),
            Invalid("peers")
        );
        assert_eq!(
            e(r#"{"type":"peer_list","peers":["\ud800"],"count":1}"#),
            Invalid("peers")
        );
        assert_eq!(
            e(r#"{"type":"peer_list","peers":[],"count":0,"truncated":1}"#),
            Invalid("truncated")
        );
        assert_eq!(e(r#"{"type":"peer_info","name":"a"}"#), Missing("online"));
        assert_eq!(
            e(r#"{"type":"pong","server_time":"1"}"#),
            Invalid("server_time")
        );
        assert_eq!(
            e(r#"{"type":"pong","server_time":-1e400}"#),
            Invalid("server_time")
        );
        assert_eq!(
            e(r#"{"type":"relayed_packet","from_peer":"a"}"#),
            Missing("payload")
        );
        for bad in [
            "",
            " ",
            "[]",
            "\"type\"",
            "{",
            r#"{"type":"pong"}x"#,
            r#"{"type":"pong",}"#,
            r#"{"type":"pong" "x":1}"#,
            r#"{"type":"pong","x":01}"#,
            r#"{"type":"pong","x":"\q"}"#,
            "{\"type\":\"pong\",\"x\":\"\u{1}\"}",
        ] {
            assert_eq!(e(bad), Syntax, "{bad}");
        }
        assert_eq!(message(b"{\"type\":\"pong\",\"x\":\"\xff\"}"), Err(Syntax));
        let deep = |n: usize| {
            format!(
                r#"{{"type":"pong","x":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(message(deep(scan::MAX_DEPTH - 1).as_bytes()).is_ok());
        assert_eq!(message(deep(scan::MAX_DEPTH).as_bytes()), Err(TooDeep));
        assert_eq!(message(deep(1_000_000).as_bytes()), Err(TooDeep));
    }

    #[test]
    fn owned_messages_equal_borrowed_ones() {
        for d in corpus() {
            let m = read(&d);
            assert_eq!(m.clone().into_owned(), m);
        }
    }

    /// One of every message the relay writes, with names and payloads that need escapes.
    fn corpus() -> Vec<Vec<u8>> {
        let a4: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let a6: SocketAddr = "[2001:db8::2]:6000".parse().unwrap();
        let n = "Al\"i\\ce é😀\u{1}";
        vec![
            write(|b| reply::register_ack(b, a4, 1.5, n, "0123abcd")),
            write(|b| reply::register_ack_short(b, a6)),
            write(|b| reply::challenge(b, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX")),
            write(|b| reply::keepalive_ack(b, n, 2.25, "s")),
            write(|b| reply::server_keepalive(b, 3.0, n)),
            write(|b| reply::pong(b, 4.0, a6)),
            write(|b| reply::pong_short(b, Some(a4))),
            write(|b| reply::pong_short(b, None)),
            write(|b| {
                reply::relayed_prefix(b, n);
                b.extend_from_slice(br#""{\"k\": \"caf\u00e9 \ud83d\ude00\"}\n""#);
                b.extend_from_slice(reply::RELAYED_SUFFIX);
            }),
            write(|b| {
                reply::relayed_prefix(b, "b");
                b.extend_from_slice(br#"{"x":[1,-2.5e-3,true,null,{}]}"#);
                b.extend_from_slice(reply::RELAYED_SUFFIX);
            }),
            write(|b| reply::peer_list(b, ["a", n, "c"], 3, Some(60))),
            write(|b| reply::peer_list(b, ["a", n], 2, None)),
            write(|b| reply::presence(b, Presence::Joined, n, ["x", n], None)),
            write(|b| reply::presence(b, Presence::Left, "x", ["y"], Some(40))),
            write(|b| reply::watch_ack(b, [n, "q"], 1200)),
            write(|b| reply::peer_info(b, n, true)),
            write(|b| reply::introduce(b, n, a6)),
            write(|b| reply::connect_request(b, n)),
            write(|b| reply::bind_ack(b, n, 0xFFFF_FFFF)),
            write(|b| reply::channel_bound(b, n, 17)),
            write(|b| reply::channel_closed(b, 4_000_000_000)),
            write(|b| {
                reply::error(b, ErrorCode::NameInUse, "name is live elsewhere", 200);
            }),
        ]
    }

    /// Truncations, byte flips and random mutations of every message: the reader never panics,
    /// and what it accepts is JSON (serde_json accepts it too, but for what the reader skips
    /// unread as the relay's scanner does: a lone surrogate, or a number beyond f64, in a field
    /// it does not know).
    #[test]
    fn mangled_messages_never_panic() {
        let check = |d: &[u8]| {
            if message(d).is_ok() {
                if let Err(e) = serde_json::from_slice::<Value>(d) {
                    let e = e.to_string();
                    assert!(
                        [
                            "surrogate",
                            "hex escape",
                            "code point",
                            "number out of range"
                        ]
                        .iter()
                        .any(|why| e.contains(why)),
                        "read, but not JSON ({e}): {}",
                        String::from_utf8_lossy(d)
                    );
                }
            }
            let _ = payload_text(d);
        };
        const BYTES: &[u8] = b"\x00\x1f \"\\/{}[]:,.-+eE0129afu\x7f\x80\xc3\xff";
        let corpus = corpus();
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        for d in &corpus {
            for end in 0..d.len() {
                check(&d[..end]);
                check(&d[end..]);
            }
            for i in 0..d.len() {
                let mut m = d.clone();
                for &b in BYTES {
                    m[i] = b;
                    check(&m);
                }
                m.remove(i);
                check(&m);
                let mut m = d.clone();
                m.insert(i, BYTES[r.below(BYTES.len())]);
                check(&m);
            }
            for _ in 0..2000 {
                let mut m = d.clone();
                for _ in 0..1 + r.below(6) {
                    let i = r.below(m.len());
                    match r.below(3) {
                        0 => m[i] = BYTES[r.below(BYTES.len())],
                        1 => m[i] = r.next() as u8,
                        _ => {
                            let j = r.below(m.len());
                            m.swap(i, j);
                        }
                    }
                }
                check(&m);
            }
        }
        // Pieces of messages spliced together.
        for _ in 0..20_000 {
            let a = &corpus[r.below(corpus.len())];
            let b = &corpus[r.below(corpus.len())];
            let (i, j) = (r.below(a.len()), r.below(b.len()));
            check(&[&a[..i], &b[j..]].concat());
        }
    }
}
