//! Writers for the messages the relay sends, appended to a reusable byte buffer.
//!
//! Field order and value formats follow the old relay's so that its peers see what they expect.

use std::io::Write;
use std::net::SocketAddr;

/// Longest possible `error` reply beyond its message text.
const ERROR_OVERHEAD: usize = r#"{"type":"error","code":"","message":""}"#.len();

/// An `error` code from the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or incomplete request.
    BadRequest,
    /// A name that breaks the naming rules.
    InvalidName,
    /// The name is live at another address.
    NameInUse,
    /// The sender holds no registration that allows this.
    NotRegistered,
    /// The target is not live.
    UnknownTarget,
    /// The datagram exceeds `--max-datagram`.
    TooLarge,
    /// A limit was reached.
    RateLimited,
    /// The relay requires signed registration.
    AuthRequired,
    /// A signed registration's cookie or signature does not check.
    BadSignature,
    /// The request must carry the session of its name, from that name's address.
    SessionRequired,
    /// A watch beyond a watch limit.
    WatchLimit,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NameInUse => "name_in_use",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::SessionRequired => "session_required",
            ErrorCode::WatchLimit => "watch_limit",
        }
    }
}

/// Appends `s` as a JSON string, escaping what JSON requires.
pub fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                buf.extend_from_slice(&bytes[run..i]);
                // Infallible: writing to a Vec.
                let _ = write!(buf, "\\u{:04x}", b);
                run = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[run..i]);
        buf.extend_from_slice(esc);
        run = i + 1;
    }
    buf.extend_from_slice(&bytes[run..]);
    buf.push(b'"');
}

fn addr_str(buf: &mut Vec<u8>, addr: SocketAddr) {
    let _ = write!(buf, "\"{addr}\"");
}

fn time(buf: &mut Vec<u8>, unix: f64) {
    let _ = write!(buf, "{unix:.6}");
}

/// `register_ack`.
pub fn register_ack(buf: &mut Vec<u8>, addr: SocketAddr, unix: f64, name: &str, session: &str) {
    buf.extend_from_slice(br#"{"type":"register_ack","status":"success","your_address":"#);
    addr_str(buf, addr);
    buf.extend_from_slice(br#","server_time":"#);
    time(buf, unix);
    buf.extend_from_slice(br#","peer_name":"#);
    json_str(buf, name);
    buf.extend_from_slice(br#","session":"#);
    json_str(buf, session);
    buf.push(b'}');
}

/// The short `register_ack` (Part 2): what the old peers read of it, for a request whose own
/// bytes cannot pay for the full one.
pub fn register_ack_short(buf: &mut Vec<u8>, addr: SocketAddr) {
    buf.extend_from_slice(br#"{"type":"register_ack","your_address":"#);
    addr_str(buf, addr);
    buf.push(b'}');
}

/// `challenge` with a registration cookie.
pub fn challenge(buf: &mut Vec<u8>, cookie: &str) {
    buf.extend_from_slice(br#"{"type":"challenge","cookie":"#);
    json_str(buf, cookie);
    buf.push(b'}');
}

/// `keepalive_ack`, with the registration's current session token (it changes on a move).
pub fn keepalive_ack(buf: &mut Vec<u8>, name: &str, unix: f64, session: &str) {
    buf.extend_from_slice(br#"{"type":"keepalive_ack","peer_name":"#);
    json_str(buf, name);
    buf.extend_from_slice(br#","server_time":"#);
    time(buf, unix);
    buf.extend_from_slice(br#","session":"#);
    json_str(buf, session);
    buf.push(b'}');
}

/// `server_keepalive`.
pub fn server_keepalive(buf: &mut Vec<u8>, unix: f64, name: &str) {
    buf.extend_from_slice(br#"{"type":"server_keepalive","server_time":"#);
    time(buf, unix);
    buf.extend_from_slice(br#","peer_name":"#);
    json_str(buf, name);
    buf.push(b'}');
}

/// `pong`.
pub fn pong(buf: &mut Vec<u8>, unix: f64, addr: SocketAddr) {
    buf.extend_from_slice(br#"{"type":"pong","server_time":"#);
    time(buf, unix);
    buf.extend_from_slice(br#","your_address":"#);
    addr_str(buf, addr);
    buf.push(b'}');
}

/// The short `pong` (Part 2), for a `ping` whose own bytes cannot pay for the full one: with
/// `your_address` where the ping pays for that much, else its type alone.
pub fn pong_short(buf: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(addr) => {
            buf.extend_from_slice(br#"{"type":"pong","your_address":"#);
            addr_str(buf, addr);
            buf.push(b'}');
        }
        None => buf.extend_from_slice(br#"{"type":"pong"}"#),
    }
}

/// The part of `relayed_packet` before the payload span; [`RELAYED_SUFFIX`] follows the span.
pub fn relayed_prefix(buf: &mut Vec<u8>, from: &str) {
    buf.extend_from_slice(br#"{"type":"relayed_packet","from_peer":"#);
    json_str(buf, from);
    buf.extend_from_slice(br#","via_relay":true,"payload":"#);
}

/// What closes `relayed_packet` after the payload span.
pub const RELAYED_SUFFIX: &[u8] = b"}";

/// Writes `names` as a JSON array while the whole message, started at `msg_start`, stays within
/// `budget` bytes (leaving `reserve` bytes for what follows). Returns true if names were left out.
fn names_array<'a>(
    buf: &mut Vec<u8>,
    names: impl IntoIterator<Item = &'a str>,
    msg_start: usize,
    budget: Option<usize>,
    reserve: usize,
) -> bool {
    buf.push(b'[');
    let mut first = true;
    for name in names {
        let mark = buf.len();
        if !first {
            buf.push(b',');
        }
        json_str(buf, name);
        if let Some(b) = budget {
            if buf.len() + 1 + reserve - msg_start > b {
                buf.truncate(mark);
                buf.push(b']');
                return true;
            }
        }
        first = false;
    }
    buf.push(b']');
    false
}

/// Room kept after a truncated names array for the rest of the message.
const TRUNCATED_TAIL: usize = r#","truncated":true}"#.len();

/// Digits of `n` in decimal.
fn decimal_len(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// `peer_list`; `budget` bounds its size (names beyond it are left out and `truncated` set).
pub fn peer_list<'a>(
    buf: &mut Vec<u8>,
    names: impl IntoIterator<Item = &'a str>,
    count: usize,
    budget: Option<usize>,
) {
    let start = buf.len();
    buf.extend_from_slice(br#"{"type":"peer_list","peers":"#);
    let reserve = r#","count":"#.len() + decimal_len(count) + TRUNCATED_TAIL;
    let truncated = names_array(buf, names, start, budget, reserve);
    let _ = write!(buf, r#","count":{count}"#);
    if truncated {
        buf.extend_from_slice(br#","truncated":true"#);
    }
    buf.push(b'}');
}

/// Whether a presence message announces a join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// `peer_joined`.
    Joined,
    /// `peer_left`.
    Left,
}

/// `peer_joined` or `peer_left` about `name`, with the current names under `budget`.
pub fn presence<'a>(
    buf: &mut Vec<u8>,
    kind: Presence,
    name: &str,
    names: impl IntoIterator<Item = &'a str>,
    budget: Option<usize>,
) {
    let start = buf.len();
    buf.extend_from_slice(match kind {
        Presence::Joined => br#"{"type":"peer_joined","peer_name":"#.as_slice(),
        Presence::Left => br#"{"type":"peer_left","peer_name":"#.as_slice(),
    });
    json_str(buf, name);
    buf.extend_from_slice(br#","peers":"#);
    let truncated = names_array(buf, names, start, budget, TRUNCATED_TAIL);
    if truncated {
        buf.extend_from_slice(br#","truncated":true"#);
    }
    buf.push(b'}');
}

/// `watch_ack` with the watched names that are online, under `budget`.
pub fn watch_ack<'a>(buf: &mut Vec<u8>, online: impl IntoIterator<Item = &'a str>, budget: usize) {
    let start = buf.len();
    buf.extend_from_slice(br#"{"type":"watch_ack","online":"#);
    let truncated = names_array(buf, online, start, Some(budget), TRUNCATED_TAIL);
    if truncated {
        buf.extend_from_slice(br#","truncated":true"#);
    }
    buf.push(b'}');
}

/// `peer_info`.
pub fn peer_info(buf: &mut Vec<u8>, name: &str, online: bool) {
    buf.extend_from_slice(br#"{"type":"peer_info","name":"#);
    json_str(buf, name);
    let _ = write!(buf, r#","online":{online}}}"#);
}

/// `introduce`: tells a peer where `name` can be reached.
pub fn introduce(buf: &mut Vec<u8>, name: &str, addr: SocketAddr) {
    buf.extend_from_slice(br#"{"type":"introduce","peer_name":"#);
    json_str(buf, name);
    buf.extend_from_slice(br#","address":"#);
    addr_str(buf, addr);
    buf.push(b'}');
}

/// `connect_request`: tells a peer that `name` asks to be introduced to it.
pub fn connect_request(buf: &mut Vec<u8>, name: &str) {
    buf.extend_from_slice(br#"{"type":"connect_request","peer_name":"#);
    json_str(buf, name);
    buf.push(b'}');
}

/// `bind_ack`: the channel number the binder sends its frames to `target` under.
pub fn bind_ack(buf: &mut Vec<u8>, target: &str, channel: u32) {
    buf.extend_from_slice(br#"{"type":"bind_ack","target":"#);
    json_str(buf, target);
    let _ = write!(buf, r#","channel":{channel}}}"#);
}

/// `channel_bound`: `peer` bound a channel to the recipient, who uses `channel` for it.
pub fn channel_bound(buf: &mut Vec<u8>, peer: &str, channel: u32) {
    buf.extend_from_slice(br#"{"type":"channel_bound","peer_name":"#);
    json_str(buf, peer);
    let _ = write!(buf, r#","channel":{channel}}}"#);
}

/// `channel_closed`: the recipient's channel `channel` is gone.
pub fn channel_closed(buf: &mut Vec<u8>, channel: u32) {
    let _ = write!(buf, r#"{{"type":"channel_closed","channel":{channel}}}"#);
}

/// `error`, never longer than `limit` bytes: the message text is dropped if it does not fit,
/// and nothing is written (false returned) if even that does not fit.
pub fn error(buf: &mut Vec<u8>, code: ErrorCode, message: &str, limit: usize) -> bool {
    let code = code.as_str();
    let bare = ERROR_OVERHEAD + code.len();
    if bare > limit {
        return false;
    }
    // Messages are the relay's own ASCII text: no escaping changes their length.
    let message = if bare + message.len() <= limit {
        message
    } else {
        ""
    };
    buf.extend_from_slice(br#"{"type":"error","code":""#);
    buf.extend_from_slice(code.as_bytes());
    buf.extend_from_slice(br#"","message":"#);
    json_str(buf, message);
    buf.push(b'}');
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_json(buf: &[u8]) -> serde_json::Value {
        serde_json::from_slice(buf)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(buf)))
    }

    #[test]
    fn escapes_strings() {
        let mut b = Vec::new();
        json_str(&mut b, "a\"b\\c\u{1}\n é");
        assert_eq!(as_json(&b), serde_json::json!("a\"b\\c\u{1}\n é"));
    }

    #[test]
    fn register_ack_fields() {
        let mut b = Vec::new();
        register_ack(&mut b, "[::1]:5".parse().unwrap(), 1.5, "Al\"ice", "ab");
        let v = as_json(&b);
        assert_eq!(v["type"], "register_ack");
        assert_eq!(v["status"], "success");
        assert_eq!(v["your_address"], "[::1]:5");
        assert_eq!(v["server_time"], 1.5);
        assert_eq!(v["peer_name"], "Al\"ice");
        assert_eq!(v["session"], "ab");
    }

    #[test]
    fn peer_list_truncates_within_budget() {
        let names: Vec<String> = (0..500).map(|i| format!("peer-{i:04}")).collect();
        let mut b = Vec::new();
        peer_list(&mut b, names.iter().map(String::as_str), 500, Some(1200));
        assert!(b.len() <= 1200, "{}", b.len());
        let v = as_json(&b);
        assert_eq!(v["count"], 500);
        assert_eq!(v["truncated"], true);
        assert!(v["peers"].as_array().unwrap().len() > 50);
        let mut b = Vec::new();
        peer_list(&mut b, ["a", "b"], 2, Some(1200));
        let v = as_json(&b);
        assert_eq!(v["peers"], serde_json::json!(["a", "b"]));
        assert!(v.get("truncated").is_none());
    }

    #[test]
    fn error_never_exceeds_limit() {
        for limit in 0..120 {
            let mut b = Vec::new();
            if error(
                &mut b,
                ErrorCode::NameInUse,
                "name is live at another address",
                limit,
            ) {
                assert!(b.len() <= limit);
                assert_eq!(as_json(&b)["code"], "name_in_use");
            } else {
                assert!(b.is_empty());
            }
        }
    }
}
