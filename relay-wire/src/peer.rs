//! What a peer sends the relay (Parts 1, 2, 4 and 5): each message appended to a buffer, strings
//! escaped as JSON requires, and the bytes a signed registration signs. The relay's own writers
//! are in [`crate::reply`], a peer's readers of them in [`crate::read`].

use std::io::Write;

use crate::reply::json_str;

/// Appends `,"name":…,"session":…` for whichever of the two is given.
fn identity(buf: &mut Vec<u8>, name: Option<&str>, session: Option<&str>) {
    if let Some(n) = name {
        buf.extend_from_slice(br#","name":"#);
        json_str(buf, n);
    }
    if let Some(s) = session {
        buf.extend_from_slice(br#","session":"#);
        json_str(buf, s);
    }
}

/// `register` of `name`, with the session of an earlier registration when moving.
pub fn register(buf: &mut Vec<u8>, name: &str, session: Option<&str>) {
    buf.extend_from_slice(br#"{"type":"register""#);
    identity(buf, Some(name), session);
    buf.push(b'}');
}

/// What a signed registration's signature covers before the name (Part 5).
pub const SIGNED_PREFIX: &[u8] = b"udp-relay register v1\n";

/// Appends the bytes a signed registration signs (Part 5): [`SIGNED_PREFIX`], the name, a
/// newline, the cookie. The peer signs them with its Ed25519 key, the relay verifies them; no
/// crypto here.
pub fn signed_payload(buf: &mut Vec<u8>, name: &str, cookie: &str) {
    buf.extend_from_slice(SIGNED_PREFIX);
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(cookie.as_bytes());
}

/// `register` of `name` with its key (`pubkey`, base64 Ed25519) and no signature: asks for a
/// `challenge` (Part 5).
pub fn register_key(buf: &mut Vec<u8>, name: &str, pubkey: &str) {
    buf.extend_from_slice(br#"{"type":"register""#);
    identity(buf, Some(name), None);
    buf.extend_from_slice(br#","pubkey":"#);
    json_str(buf, pubkey);
    buf.push(b'}');
}

/// `register` answering a `challenge` (Part 5): the key, the relay's `cookie` and `sig`, the
/// signature (base64) of [`signed_payload`] of `name` and `cookie`.
pub fn register_signed(buf: &mut Vec<u8>, name: &str, pubkey: &str, cookie: &str, sig: &str) {
    buf.extend_from_slice(br#"{"type":"register""#);
    identity(buf, Some(name), None);
    for (k, v) in [
        (&br#","pubkey":"#[..], pubkey),
        (br#","cookie":"#, cookie),
        (br#","sig":"#, sig),
    ] {
        buf.extend_from_slice(k);
        json_str(buf, v);
    }
    buf.push(b'}');
}

/// `keepalive` of `name`; with its session, an authenticated one.
pub fn keepalive(buf: &mut Vec<u8>, name: &str, session: Option<&str>) {
    buf.extend_from_slice(br#"{"type":"keepalive""#);
    identity(buf, Some(name), session);
    buf.push(b'}');
}

/// `ping`; naming a name and its session, it shows the session back (Part 2).
pub fn ping(buf: &mut Vec<u8>, name: Option<&str>, session: Option<&str>) {
    buf.extend_from_slice(br#"{"type":"ping""#);
    identity(buf, name, session);
    buf.push(b'}');
}

/// `watch` `names` (Part 2): hear of their joins and leaves. `name` says which of the sender's
/// names watches (it may be left out where its address holds one), `session` is that name's.
pub fn watch<'a>(
    buf: &mut Vec<u8>,
    names: impl IntoIterator<Item = &'a str>,
    name: Option<&str>,
    session: &str,
) {
    names_request(buf, br#"{"type":"watch","names":["#, names, name, session);
}

/// `unwatch` `names` (Part 2), as [`watch`].
pub fn unwatch<'a>(
    buf: &mut Vec<u8>,
    names: impl IntoIterator<Item = &'a str>,
    name: Option<&str>,
    session: &str,
) {
    names_request(buf, br#"{"type":"unwatch","names":["#, names, name, session);
}

fn names_request<'a>(
    buf: &mut Vec<u8>,
    head: &[u8],
    names: impl IntoIterator<Item = &'a str>,
    name: Option<&str>,
    session: &str,
) {
    buf.extend_from_slice(head);
    for (i, n) in names.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        json_str(buf, n);
    }
    buf.push(b']');
    identity(buf, name, Some(session));
    buf.push(b'}');
}

/// `lookup` (Part 2): is `name` online?
pub fn lookup(buf: &mut Vec<u8>, name: &str) {
    buf.extend_from_slice(br#"{"type":"lookup""#);
    identity(buf, Some(name), None);
    buf.push(b'}');
}

/// `unregister` `name` (Part 2), authenticated by its session.
pub fn unregister(buf: &mut Vec<u8>, name: &str, session: &str) {
    buf.extend_from_slice(br#"{"type":"unregister""#);
    identity(buf, Some(name), Some(session));
    buf.push(b'}');
}

/// `connect` to `target` (Part 2): ask to be introduced, as `name` with its session (`name`
/// may be left out where the sender's address holds one).
pub fn connect(buf: &mut Vec<u8>, target: &str, name: Option<&str>, session: &str) {
    buf.extend_from_slice(br#"{"type":"connect","target":"#);
    json_str(buf, target);
    identity(buf, name, Some(session));
    buf.push(b'}');
}

/// `bind` a channel to `target` (Part 4), authenticated by `name`'s session.
pub fn bind(buf: &mut Vec<u8>, target: &str, name: &str, session: &str) {
    buf.extend_from_slice(br#"{"type":"bind","target":"#);
    json_str(buf, target);
    identity(buf, Some(name), Some(session));
    buf.push(b'}');
}

/// `unbind` channel `channel` (the sender's number), authenticated by `name`'s session.
pub fn unbind(buf: &mut Vec<u8>, channel: u32, name: &str, session: &str) {
    let _ = write!(buf, r#"{{"type":"unbind","channel":{channel}"#);
    identity(buf, Some(name), Some(session));
    buf.push(b'}');
}

/// Pads the request that ends `buf` to `len` bytes with a `"pad"` field (Part 2), so that the
/// relay may answer it in full: a reply to an unauthenticated request is at most 3× its size.
/// A request already that long is left as it is.
pub fn pad(buf: &mut Vec<u8>, len: usize) {
    const FIELD: &[u8] = br#","pad":""#;
    if buf.last() != Some(&b'}') || buf.len() + FIELD.len() + 1 >= len {
        return;
    }
    buf.pop();
    buf.extend_from_slice(FIELD);
    let fill = len - buf.len() - 2;
    buf.resize(buf.len() + fill, b' ');
    buf.extend_from_slice(b"\"}");
}

/// `relay` from `source` to `target`; `payload` is the JSON value to carry, as it is written.
pub fn relay(buf: &mut Vec<u8>, source: &str, target: &str, payload: &[u8]) {
    buf.extend_from_slice(br#"{"type":"relay","target":"#);
    json_str(buf, target);
    buf.extend_from_slice(br#","source":"#);
    json_str(buf, source);
    buf.extend_from_slice(br#","payload":"#);
    buf.extend_from_slice(payload);
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parsed(f: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut b = Vec::new();
        f(&mut b);
        serde_json::from_slice(&b).expect("JSON")
    }

    #[test]
    fn requests_are_the_json_the_relay_reads() {
        assert_eq!(
            parsed(|b| register(b, "zoë \"q\"", None)),
            json!({"type": "register", "name": "zoë \"q\""})
        );
        assert_eq!(
            parsed(|b| keepalive(b, "a", Some("00ff"))),
            json!({"type": "keepalive", "name": "a", "session": "00ff"})
        );
        assert_eq!(parsed(|b| ping(b, None, None)), json!({"type": "ping"}));
        assert_eq!(
            parsed(|b| bind(b, "bob", "alice", "s")),
            json!({"type": "bind", "target": "bob", "name": "alice", "session": "s"})
        );
        assert_eq!(
            parsed(|b| unbind(b, 7, "alice", "s")),
            json!({"type": "unbind", "channel": 7, "name": "alice", "session": "s"})
        );
        assert_eq!(
            parsed(|b| relay(b, "a", "b", br#"{"x":[1]}"#)),
            json!({"type": "relay", "target": "b", "source": "a", "payload": {"x": [1]}})
        );
        assert_eq!(
            parsed(|b| register_key(b, "a\"", "PK=")),
            json!({"type": "register", "name": "a\"", "pubkey": "PK="})
        );
        assert_eq!(
            parsed(|b| register_signed(b, "a", "PK=", "C/+", "S==")),
            json!({"type": "register", "name": "a", "pubkey": "PK=", "cookie": "C/+", "sig": "S=="})
        );
        assert_eq!(
            parsed(|b| watch(b, ["x", "y\\"], Some("a"), "s")),
            json!({"type": "watch", "names": ["x", "y\\"], "name": "a", "session": "s"})
        );
        assert_eq!(
            parsed(|b| unwatch(b, [], None, "s")),
            json!({"type": "unwatch", "names": [], "session": "s"})
        );
        assert_eq!(
            parsed(|b| lookup(b, "bob")),
            json!({"type": "lookup", "name": "bob"})
        );
        assert_eq!(
            parsed(|b| unregister(b, "a", "s")),
            json!({"type": "unregister", "name": "a", "session": "s"})
        );
        assert_eq!(
            parsed(|b| connect(b, "bob", Some("a"), "s")),
            json!({"type": "connect", "target": "bob", "name": "a", "session": "s"})
        );
        assert_eq!(
            parsed(|b| connect(b, "bob", None, "s")),
            json!({"type": "connect", "target": "bob", "session": "s"})
        );
        let mut b = Vec::new();
        relay(&mut b, "a", "b", b"\"hi\"");
        let h = crate::scan::scan(&b).expect("the relay's scanner reads it");
        assert_eq!(h.payload.unwrap().of(&b), b"\"hi\"");
    }

    #[test]
    fn padding_reaches_the_length_asked_and_stays_json() {
        let mut b = Vec::new();
        register(&mut b, "a", None);
        pad(&mut b, 200);
        assert_eq!(b.len(), 200);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["name"], "a");
        let before = b.clone();
        pad(&mut b, 100);
        assert_eq!(b, before, "already longer");
    }

    #[test]
    fn the_signed_payload_is_prefix_name_newline_cookie() {
        let mut b = Vec::new();
        signed_payload(&mut b, "zoë", "Q29va2ll");
        assert_eq!(b, "udp-relay register v1\nzoë\nQ29va2ll".as_bytes());
        assert!(b.starts_with(SIGNED_PREFIX));
    }
}
