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
mod tests;
