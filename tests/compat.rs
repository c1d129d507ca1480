//! Compatibility with the old chat peers (PROTOCOL.md Part 1), spoken byte for byte as they speak
//! it: every datagram is built the way Python's `json.dumps` builds it by default (`", "` and
//! `": "` separators, `ensure_ascii=True`, keys in the order the old peer writes them), plus a
//! variant with `ensure_ascii=False` (raw UTF-8). Replies are checked field by field against the
//! spec, on the raw bytes as well as on the parsed value.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Python's json.dumps, as the old peers call it.

/// A value of a Python dict being dumped: a `str`, or something already in JSON form (a number,
/// `True`, a nested dict dumped before).
#[derive(Clone, Copy)]
enum Py<'a> {
    S(&'a str),
    Raw(&'a str),
}

/// `json.dumps(s, ensure_ascii=ensure_ascii)` for a `str`, as CPython's encoder writes it.
fn py_str(s: &str, ensure_ascii: bool) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '\u{8}' => o.push_str("\\b"),
            '\u{c}' => o.push_str("\\f"),
            c if (c as u32) < 0x20 => write!(o, "\\u{:04x}", c as u32).unwrap(),
            // ensure_ascii escapes everything outside ' '..='~' (DEL included), astral
            // characters as a surrogate pair, in lowercase hex.
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(o, "\\u{u:04x}").unwrap();
                }
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `json.dumps(dict)` with default separators; keys in insertion order.
fn py_dumps(fields: &[(&str, Py)], ensure_ascii: bool) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Py::S(s) => py_str(s, ensure_ascii),
                Py::Raw(r) => r.to_string(),
            };
            format!("{}: {v}", py_str(k, ensure_ascii))
        })
        .collect();
    format!("{{{}}}", members.join(", "))
}

/// A dict of strings only: what every old-peer → relay message is.
fn py_msg(fields: &[(&str, &str)], ensure_ascii: bool) -> String {
    let f: Vec<(&str, Py)> = fields.iter().map(|&(k, v)| (k, Py::S(v))).collect();
    py_dumps(&f, ensure_ascii)
}

#[test]
fn python_encoder_emulation_matches_cpython() {
    // Expected strings produced by CPython 3 `json.dumps`.
    assert_eq!(
        py_msg(&[("type", "register"), ("name", "Zoë 😀")], true),
        r#"{"type": "register", "name": "Zo\u00eb \ud83d\ude00"}"#
    );
    assert_eq!(
        py_msg(&[("a", "é😀\u{2028}\u{7f}\u{1}/\"\\\n\u{8}\u{c}")], true),
        r#"{"a": "\u00e9\ud83d\ude00\u2028\u007f\u0001/\"\\\n\b\f"}"#
    );
    assert_eq!(
        py_msg(&[("a", "é😀\u{2028}\u{7f}\u{1}")], false),
        "{\"a\": \"é😀\u{2028}\u{7f}\\u0001\"}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading replies: top-level members with their raw spans, and per-field type checks.

fn ws(d: &[u8], mut i: usize) -> usize {
    while i < d.len() && matches!(d[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Skips one JSON value starting at `i` (the document is validated separately by serde_json).
fn skip_value(d: &[u8], i: usize) -> usize {
    match d[i] {
        b'"' => {
            let mut j = i + 1;
            loop {
                match d[j] {
                    b'\\' => j += 2,
                    b'"' => return j + 1,
                    _ => j += 1,
                }
            }
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match d[j] {
                    b'"' => {
                        j = skip_value(d, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while j < d.len() && !matches!(d[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            j
        }
    }
}

/// The members of the top-level object in `d`: decoded key and the raw byte span of its value.
fn members(d: &[u8]) -> Vec<(String, Range<usize>)> {
    let mut out = Vec::new();
    let mut i = ws(d, 0);
    assert_eq!(d[i], b'{', "not an object: {}", show(d));
    i = ws(d, i + 1);
    if d[i] == b'}' {
        return out;
    }
    loop {
        i = ws(d, i);
        let k = i;
        i = skip_value(d, i);
        let key: String = serde_json::from_slice(&d[k..i]).expect("a string key");
        i = ws(d, i);
        assert_eq!(d[i], b':');
        i = ws(d, i + 1);
        let v = i;
        i = skip_value(d, i);
        out.push((key, v..i));
        i = ws(d, i);
        match d[i] {
            b',' => i += 1,
            b'}' => {
                assert_eq!(ws(d, i + 1), d.len(), "trailing bytes: {}", show(d));
                return out;
            }
            _ => panic!("bad object: {}", show(d)),
        }
    }
}

fn show(d: &[u8]) -> String {
    String::from_utf8_lossy(d).into_owned()
}

/// How the spec types a reply field.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A JSON string.
    Str,
    /// The literal `true`.
    True,
    /// A non-negative integer.
    Count,
    /// Unix seconds as a number with a fraction, like Python's `time.time()`.
    Time,
    /// An array of strings.
    Names,
    /// A string: the address written `ip:port` (IPv4) or `[ip]:port` (IPv6).
    Addr(SocketAddr),
}

/// `ip:port` or `[ip]:port`, as PROTOCOL.md writes addresses.
fn addr_text(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Checks that `d` is one JSON object of type `ty` holding exactly `type`, the `required`
/// fields and possibly some `optional` ones (Part 2 additions), each of the right JSON type,
/// with no key repeated. Returns the parsed message.
fn check(d: &[u8], ty: &str, required: &[(&str, Kind)], optional: &[(&str, Kind)]) -> Value {
    let text = std::str::from_utf8(d).unwrap_or_else(|_| panic!("not UTF-8: {}", show(d)));
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(v["type"], ty, "expected a {ty}: {text}");
    let m = members(d);
    let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
    let unique: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(unique.len(), keys.len(), "repeated key in {text}");
    for (k, _) in required {
        assert!(unique.contains(k), "{ty} lacks {k}: {text}");
    }
    for k in &unique {
        assert!(
            *k == "type" || required.iter().chain(optional).any(|(f, _)| f == k),
            "{ty} has a field the spec does not define, {k:?}: {text}"
        );
    }
    for (key, span) in &m {
        let raw = &d[span.clone()];
        let val = &v[key.as_str()];
        let Some(&(_, kind)) = required.iter().chain(optional).find(|(f, _)| f == key) else {
            assert!(val.is_string(), "type must be a string: {text}");
            continue;
        };
        match kind {
            Kind::Str => assert!(val.is_string(), "{ty}.{key} must be a string: {text}"),
            Kind::True => assert_eq!(raw, b"true", "{ty}.{key} must be true: {text}"),
            Kind::Count => assert!(
                raw.iter().all(u8::is_ascii_digit) && val.is_u64(),
                "{ty}.{key} must be an integer: {text}"
            ),
            Kind::Time => {
                let s = show(raw);
                let (int, frac) = s
                    .split_once('.')
                    .unwrap_or_else(|| panic!("{ty}.{key} needs a fraction: {text}"));
                assert!(
                    !int.is_empty()
                        && !frac.is_empty()
                        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()),
                    "{ty}.{key} must be seconds with a fraction: {text}"
                );
                let t = val.as_f64().expect("a number");
                assert!(
                    (t - unix_now()).abs() < 30.0,
                    "{ty}.{key} is not the Unix time now: {text}"
                );
            }
            Kind::Names => {
                let a = val
                    .as_array()
                    .unwrap_or_else(|| panic!("{ty}.{key} must be an array: {text}"));
                assert!(
                    a.iter().all(Value::is_string),
                    "{ty}.{key} must hold names: {text}"
                );
            }
            Kind::Addr(a) => assert_eq!(
                val.as_str(),
                Some(addr_text(a).as_str()),
                "{ty}.{key} must be the peer's address as ip:port: {text}"
            ),
        }
    }
    v
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}

fn register_ack(d: &[u8], name: &str, addr: SocketAddr) -> Value {
    let v = check(
        d,
        "register_ack",
        &[
            ("status", Kind::Str),
            ("your_address", Kind::Addr(addr)),
            ("server_time", Kind::Time),
            ("peer_name", Kind::Str),
        ],
        &[("session", Kind::Str)],
    );
    assert_eq!(v["status"], "success");
    assert_eq!(v["peer_name"], name, "{v}");
    v
}

fn peer_list(d: &[u8], expected: &[&str]) -> Value {
    let v = check(
        d,
        "peer_list",
        &[("peers", Kind::Names), ("count", Kind::Count)],
        &[("truncated", Kind::True)],
    );
    assert_eq!(names(&v["peers"]), expected, "{v}");
    assert_eq!(v["count"], expected.len(), "{v}");
    v
}

fn presence(d: &[u8], ty: &str, name: &str, expected: &[&str]) -> Value {
    let v = check(
        d,
        ty,
        &[("peer_name", Kind::Str), ("peers", Kind::Names)],
        &[("truncated", Kind::True)],
    );
    assert_eq!(v["peer_name"], name, "{v}");
    assert_eq!(names(&v["peers"]), expected, "{v}");
    v
}

fn keepalive_ack(d: &[u8], name: &str) -> Value {
    let v = check(
        d,
        "keepalive_ack",
        &[("peer_name", Kind::Str), ("server_time", Kind::Time)],
        // Part 2: the current session token (it changes when the registration moves).
        &[("session", Kind::Str)],
    );
    assert_eq!(v["peer_name"], name, "{v}");
    v
}

fn server_keepalive(d: &[u8], name: &str) -> Value {
    let v = check(
        d,
        "server_keepalive",
        &[("server_time", Kind::Time), ("peer_name", Kind::Str)],
        &[],
    );
    assert_eq!(v["peer_name"], name, "{v}");
    v
}

fn pong(d: &[u8], addr: SocketAddr) -> Value {
    check(
        d,
        "pong",
        &[
            ("server_time", Kind::Time),
            ("your_address", Kind::Addr(addr)),
        ],
        &[],
    )
}

/// An `error` reply with `code`.
fn error(d: &[u8], code: &str) -> Value {
    let v = check(
        d,
        "error",
        &[("code", Kind::Str), ("message", Kind::Str)],
        &[],
    );
    assert!(ERROR_CODES.contains(&v["code"].as_str().unwrap()), "{v}");
    assert_eq!(v["code"], code, "{v}");
    v
}

/// What `p` got for a refused datagram: one `error` with `code` (Part 2), raw and parsed. An old
/// peer never authenticates, so the error is paid from its host's budgets (its `message` is
/// empty where they cannot pay the full one); the tests calling this stay well within them.
fn expect_error(p: &OldPeer, code: &str) -> (Vec<u8>, Value) {
    let mut got = p.barrier();
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|d| show(d)).collect::<Vec<_>>()
    );
    let d = got.remove(0);
    let v = error(&d, code);
    (d, v)
}

/// A `relayed_packet` from `from`, whose payload must be the `sent` bytes exactly.
fn relayed_packet(d: &[u8], from: &str, sent: &[u8]) -> Value {
    let v = check(
        d,
        "relayed_packet",
        &[
            ("from_peer", Kind::Str),
            ("via_relay", Kind::True),
            ("payload", Kind::Str),
        ],
        &[],
    );
    assert_eq!(v["from_peer"], from, "{v}");
    let (_, span) = members(d)
        .into_iter()
        .find(|(k, _)| k == "payload")
        .unwrap();
    assert_eq!(
        show(&d[span]),
        show(sent),
        "payload bytes changed in transit"
    );
    let sent_value: Value = serde_json::from_slice(sent).unwrap();
    assert_eq!(v["payload"], sent_value);
    v
}

// ---------------------------------------------------------------------------------------------
// An old peer.

thread_local! {
    /// Bytes the old peers of this test (each test runs on a thread of its own) sent, and bytes
    /// they got other than forwards (`relayed_packet`).
    static LEDGER: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Default `--reply-credit`: what one host may be sent beyond what it sent, for requests that
/// do not authenticate (every request of an old peer).
const REPLY_CREDIT: usize = 2048;

/// Part 2: over the whole test, what the relay sent this test's old peers (all on one host,
/// never authenticated), forwards aside, stays within what they sent plus the host's credit.
fn assert_within_the_host_credit() {
    let (sent, got) = LEDGER.get();
    assert!(
        got <= sent + REPLY_CREDIT,
        "{got} bytes sent to old peers that sent {sent} (credit {REPLY_CREDIT})"
    );
}

struct OldPeer {
    p: Peer,
    name: String,
    ascii: bool,
}

impl OldPeer {
    fn new(r: &Relay, name: &str, ascii: bool) -> OldPeer {
        OldPeer::at(Peer::new(r), name, ascii)
    }

    fn at(p: Peer, name: &str, ascii: bool) -> OldPeer {
        OldPeer {
            p,
            name: name.to_string(),
            ascii,
        }
    }

    /// An old peer on loopback host `host` (e.g. `127.0.2.1`): another host has budgets of its
    /// own, as peers on the Internet do.
    fn on(r: &Relay, host: &str, name: &str, ascii: bool) -> OldPeer {
        OldPeer::at(Peer::bind(r.addr, &format!("{host}:0")), name, ascii)
    }

    fn addr(&self) -> SocketAddr {
        self.p.addr()
    }

    /// Sends a dict of strings the way the old peer dumps it; returns the bytes sent.
    fn send(&self, fields: &[(&str, &str)]) -> Vec<u8> {
        let d = py_msg(fields, self.ascii).into_bytes();
        self.send_raw(&d);
        d
    }

    fn send_raw(&self, d: &[u8]) {
        self.p.send_raw(d);
        LEDGER.set({
            let (sent, got) = LEDGER.get();
            (sent + d.len(), got)
        });
    }

    fn send_register(&self) -> Vec<u8> {
        self.send(&[("type", "register"), ("name", &self.name)])
    }

    fn send_keepalive(&self) -> Vec<u8> {
        self.send(&[("type", "keepalive"), ("name", &self.name)])
    }

    /// Sends `relay` with `payload` (a `str`); returns the datagram and the payload's span in it.
    fn send_relay(&self, target: &str, payload: &str) -> (Vec<u8>, Vec<u8>) {
        let d = self.send(&[
            ("type", "relay"),
            ("target", target),
            ("source", &self.name),
            ("payload", payload),
        ]);
        let span = py_str(payload, self.ascii).into_bytes();
        assert!(d.ends_with(&[span.as_slice(), b"}"].concat()));
        (d, span)
    }

    fn recv(&self) -> Vec<u8> {
        let d = self.p.recv_raw();
        if !d.starts_with(br#"{"type":"relayed_packet","#) {
            LEDGER.set({
                let (sent, got) = LEDGER.get();
                (sent, got + d.len())
            });
        }
        d
    }

    /// Registers and checks `register_ack` and `peer_list` (expected to list `listed`).
    fn register(&self, listed: &[&str]) -> Value {
        self.send_register();
        let ack = register_ack(&self.recv(), &self.name, self.addr());
        peer_list(&self.recv(), listed);
        ack
    }

    /// Barrier: an old-style `ping`; returns every datagram that came before the `pong`.
    fn barrier(&self) -> Vec<Vec<u8>> {
        self.send(&[("type", "ping"), ("name", &self.name)]);
        let mut before = Vec::new();
        loop {
            let d = self.recv();
            let v: Value = serde_json::from_slice(&d).unwrap();
            if v["type"] == "pong" {
                pong(&d, self.addr());
                return before;
            }
            before.push(d);
        }
    }

    fn expect_nothing(&self) {
        let got: Vec<String> = self.barrier().iter().map(|d| show(d)).collect();
        assert!(
            got.is_empty(),
            "{} expected nothing, got {got:?}",
            self.name
        );
    }
}

/// The handshake an old peer puts in `payload`: its own `json.dumps` of a dict, with a message
/// full of what JSON must escape, non-ASCII text and an emoji outside the BMP.
fn handshake(ascii: bool) -> (String, Value) {
    let text = "Grüße, «Welt»! He said \"hi\" \\o/ C:\\temp\\new\nline 2\ttab \u{1}\u{7f} 😀👍🏽 日本語 \u{2028}end";
    let key = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
    let inner = py_dumps(
        &[
            ("type", Py::S("handshake")),
            ("from", Py::S("Alice")),
            ("public_key", Py::S(key)),
            ("message", Py::S(text)),
            ("timestamp", Py::Raw("1795574001.4512343")),
            ("verified", Py::Raw("true")),
            ("signature", Py::S("3q2+7w==/+AZ")),
        ],
        ascii,
    );
    let expect = serde_json::json!({
        "type": "handshake",
        "from": "Alice",
        "public_key": key,
        "message": text,
        "timestamp": 1795574001.4512343,
        "verified": true,
        "signature": "3q2+7w==/+AZ",
    });
    (inner, expect)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn register_ack_peer_list_and_peer_joined_as_the_old_peers_see_them() {
    let r = Relay::start(&[]);
    let bob = OldPeer::new(&r, "Bob", true);
    // (The old peer ignores `session`; `check` allows it, as a string.)
    bob.register(&["Bob"]);
    bob.expect_nothing();
    let alice = OldPeer::new(&r, "Alice", true);
    alice.register(&["Bob", "Alice"]);
    presence(&bob.recv(), "peer_joined", "Alice", &["Bob", "Alice"]);

    // A non-ASCII name, escaped by ensure_ascii (a surrogate pair for the emoji) …
    let zoe = OldPeer::new(&r, "Zoë 😀", true);
    zoe.send_register();
    assert!(
        show(&py_msg(&[("name", &zoe.name)], true).into_bytes()).contains(r"Zo\u00eb \ud83d\ude00")
    );
    register_ack(&zoe.recv(), "Zoë 😀", zoe.addr());
    peer_list(&zoe.recv(), &["Bob", "Alice", "Zoë 😀"]);
    for p in [&bob, &alice] {
        presence(
            &p.recv(),
            "peer_joined",
            "Zoë 😀",
            &["Bob", "Alice", "Zoë 😀"],
        );
    }

    // … and one sent as raw UTF-8 (ensure_ascii=False).
    let jurgen = OldPeer::new(&r, "Jürgen 日本", false);
    let all = ["Bob", "Alice", "Zoë 😀", "Jürgen 日本"];
    jurgen.register(&all);
    for p in [&bob, &alice, &zoe] {
        presence(&p.recv(), "peer_joined", "Jürgen 日本", &all);
    }
    for p in [&bob, &alice, &zoe, &jurgen] {
        p.expect_nothing();
    }
    assert_within_the_host_credit();
}

#[test]
fn unknown_fields_from_old_peers_are_ignored() {
    let r = Relay::start(&[]);
    let bob = OldPeer::new(&r, "Bob", true);
    bob.register(&["Bob"]);
    let alice = OldPeer::new(&r, "Alice", true);
    let d = py_dumps(
        &[
            ("type", Py::S("register")),
            ("name", Py::S("Alice")),
            ("version", Py::S("1.2")),
            ("capabilities", Py::Raw(r#"["e2e", {"x": [1, 2.5, null]}]"#)),
            ("port", Py::Raw("9001")),
        ],
        true,
    );
    alice.send_raw(d.as_bytes());
    register_ack(&alice.recv(), "Alice", alice.addr());
    peer_list(&alice.recv(), &["Bob", "Alice"]);
    presence(&bob.recv(), "peer_joined", "Alice", &["Bob", "Alice"]);

    let payload = r#"{"type": "message", "text": "hi"}"#;
    let d = py_dumps(
        &[
            ("type", Py::S("relay")),
            ("target", Py::S("Bob")),
            ("source", Py::S("Alice")),
            ("payload", Py::S(payload)),
            ("timestamp", Py::Raw("1795574001.4512343")),
        ],
        true,
    );
    alice.send_raw(d.as_bytes());
    relayed_packet(&bob.recv(), "Alice", py_str(payload, true).as_bytes());
    alice.expect_nothing();
    bob.expect_nothing();
    assert_within_the_host_credit();
}

/// Alice → Bob and back, with a payload that exercises every escape, in one encoding.
fn relay_round_trip(ascii: bool, alice_name: &str, bob_name: &str) {
    let r = Relay::start(&[]);
    let alice = OldPeer::new(&r, alice_name, ascii);
    let bob = OldPeer::new(&r, bob_name, ascii);
    alice.register(&[alice_name]);
    bob.register(&[alice_name, bob_name]);
    presence(
        &alice.recv(),
        "peer_joined",
        bob_name,
        &[alice_name, bob_name],
    );

    let (inner, expect) = handshake(ascii);
    let (d, span) = alice.send_relay(bob_name, &inner);
    if ascii {
        assert!(d.is_ascii(), "ensure_ascii output is ASCII");
        let s = show(&span);
        for esc in [r#"\\\""#, r"\\\\", r"\\n", r"\\u00fc", r"\\ud83d\\ude00"] {
            assert!(s.contains(esc), "payload span lacks {esc}: {s}");
        }
    } else {
        assert!(!d.is_ascii());
    }
    let got = bob.recv();
    let v = relayed_packet(&got, alice_name, &span);
    assert_eq!(v["payload"], inner.as_str());
    let doc: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
    assert_eq!(doc, expect);
    // The payload bytes also appear once, verbatim, in the raw datagram.
    let hits = got.windows(span.len()).filter(|w| *w == span).count();
    assert_eq!(hits, 1);
    alice.expect_nothing();

    // And back: a reply with a different payload.
    let reply = py_dumps(
        &[
            ("type", Py::S("message")),
            ("text", Py::S("Danke! «ok» \"✓\" \\ 🎉")),
        ],
        ascii,
    );
    let (_, span) = bob.send_relay(alice_name, &reply);
    relayed_packet(&alice.recv(), bob_name, &span);
    alice.expect_nothing();
    bob.expect_nothing();
    assert_within_the_host_credit();
}

#[test]
fn relayed_payload_is_byte_identical_ensure_ascii() {
    relay_round_trip(true, "Alice", "Bob");
}

#[test]
fn relayed_payload_is_byte_identical_ensure_ascii_non_ascii_names() {
    relay_round_trip(true, "Ålice 🦊", "Bøb");
}

#[test]
fn relayed_payload_is_byte_identical_raw_utf8() {
    relay_round_trip(false, "Alice", "Bob");
}

#[test]
fn relayed_payload_is_byte_identical_raw_utf8_non_ascii_names() {
    relay_round_trip(false, "Ålice 🦊", "Bøb");
}

/// An encrypted message as the old peers send it: a long base64 ciphertext inside the document.
#[test]
fn large_encrypted_payload_is_forwarded_byte_identical() {
    let r = Relay::start(&[]);
    let alice = OldPeer::new(&r, "Alice", true);
    let bob = OldPeer::new(&r, "Bob", true);
    alice.register(&["Alice"]);
    bob.register(&["Alice", "Bob"]);
    presence(&alice.recv(), "peer_joined", "Bob", &["Alice", "Bob"]);
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let ciphertext: String = (0..40_000u32)
        .map(|i| B64[(i.wrapping_mul(2_654_435_761) >> 26) as usize] as char)
        .collect();
    let inner = py_dumps(
        &[
            ("type", Py::S("encrypted_message")),
            ("from", Py::S("Alice")),
            ("nonce", Py::S("q83vEjRWeJA=")),
            ("ciphertext", Py::S(&ciphertext)),
            ("note", Py::S("ünïcødé \"quoted\" 😀")),
        ],
        true,
    );
    let (d, span) = alice.send_relay("Bob", &inner);
    assert!(d.len() > 40_000);
    relayed_packet(&bob.recv(), "Alice", &span);
    alice.expect_nothing();
    assert_within_the_host_credit();
}

#[test]
fn ping_pong_and_keepalive_ack() {
    let r = Relay::start(&[]);
    // ping from an address that never registered, with and without a name.
    let stranger = OldPeer::new(&r, "Stranger", true);
    stranger.send(&[("type", "ping"), ("name", "Stranger")]);
    pong(&stranger.recv(), stranger.addr());
    stranger.send(&[("type", "ping")]);
    pong(&stranger.recv(), stranger.addr());

    let alice = OldPeer::new(&r, "Alice", true);
    alice.register(&["Alice"]);
    alice.send(&[("type", "ping"), ("name", "Alice")]);
    pong(&alice.recv(), alice.addr());
    alice.send_keepalive();
    keepalive_ack(&alice.recv(), "Alice");

    // A keepalive for a name that is not registered registers it (relay restart).
    let bob = OldPeer::new(&r, "Bøb", true);
    bob.send_keepalive();
    keepalive_ack(&bob.recv(), "Bøb");
    bob.expect_nothing();
    // Bob is now a registered peer: Alice can reach him and he appears in lists.
    // (Whether that is announced to others, the spec leaves open; nothing below reads Alice's
    // announcements.)
    let (_, span) = alice.send_relay("Bøb", "{\"type\": \"hello\"}");
    relayed_packet(&bob.recv(), "Alice", &span);
    let carol = OldPeer::new(&r, "Carol", false);
    carol.register(&["Alice", "Bøb", "Carol"]);
    stranger.expect_nothing();
    assert_within_the_host_credit();
}

#[test]
fn your_address_is_ip_port_on_a_dual_stack_relay() {
    let r = Relay::start_with(&[], &[("RUST_LOG", "debug")], "::");
    let relay_v4: SocketAddr = format!("127.0.0.1:{}", r.addr.port()).parse().unwrap();
    let relay_v6: SocketAddr = format!("[::1]:{}", r.addr.port()).parse().unwrap();
    let v4 = OldPeer::at(Peer::bind(relay_v4, "127.0.0.1:0"), "Four", true);
    let v6 = OldPeer::at(Peer::bind(relay_v6, "[::1]:0"), "Six", true);
    assert!(addr_text(v4.addr()).starts_with("127.0.0.1:"));
    assert!(addr_text(v6.addr()).starts_with("[::1]:"));
    v4.register(&["Four"]);
    v6.register(&["Four", "Six"]);
    presence(&v4.recv(), "peer_joined", "Six", &["Four", "Six"]);
    for p in [&v4, &v6] {
        p.send(&[("type", "ping"), ("name", &p.name)]);
        pong(&p.recv(), p.addr());
    }
    let (_, span) = v4.send_relay("Six", "{\"n\": 4}");
    relayed_packet(&v6.recv(), "Four", &span);
    let (_, span) = v6.send_relay("Four", "{\"n\": 6}");
    relayed_packet(&v4.recv(), "Six", &span);
}

#[test]
fn error_replies() {
    let r = Relay::start(&[]);
    let alice = OldPeer::new(&r, "Alice", true);
    alice.register(&["Alice"]);

    // Unknown target: nothing forwarded; the registered sender is told.
    alice.send_relay("Nobody", "{\"type\": \"message\", \"text\": \"hello?\"}");
    // The host's credit is nearly whole: the error goes out in full.
    let (_, e) = expect_error(&alice, "unknown_target");
    assert_eq!(e["message"], "target is not online");
    // A datagram shorter than the error is answered all the same: errors are paid from the
    // host's budgets (Part 2), not cut to the size of the request.
    let d = alice.send(&[
        ("type", "relay"),
        ("target", "X"),
        ("source", "Alice"),
        ("payload", ""),
    ]);
    let (raw, e) = expect_error(&alice, "unknown_target");
    assert_eq!(e["message"], "target is not online");
    assert!(raw.len() > d.len(), "{} bytes for {}", raw.len(), d.len());

    // A name taken by a live peer, from another address.
    let thief = OldPeer::new(&r, "Alice", true);
    thief.send_register();
    expect_error(&thief, "name_in_use");
    // Invalid names.
    let long = "x".repeat(65);
    for bad in ["", long.as_str(), "a\nb"] {
        let p = OldPeer::new(&r, bad, true);
        p.send_register();
        expect_error(&p, "invalid_name");
    }

    // A relay naming Alice as source from Bob's address is refused; nothing reaches Alice.
    let bob = OldPeer::new(&r, "Bob", true);
    bob.register(&["Alice", "Bob"]);
    presence(&alice.recv(), "peer_joined", "Bob", &["Alice", "Bob"]);
    bob.send(&[
        ("type", "relay"),
        ("target", "Alice"),
        ("source", "Alice"),
        ("payload", "{\"type\": \"message\", \"text\": \"spoofed\"}"),
    ]);
    expect_error(&bob, "not_registered");
    alice.expect_nothing();
    bob.expect_nothing();
    thief.expect_nothing();
    assert_within_the_host_credit();
}

const FAST: &[&str] = &["--keepalive-interval", "300ms", "--peer-timeout", "1s"];

/// Serves `peers` until `done` says so: each keeps itself live with `refresh` on its own timer
/// (the old peers' 15 s, scaled to the relay's 300 ms keepalive interval), whatever the relay
/// sends it. `server_keepalive`s are checked and counted; every other datagram goes to `other`.
fn serve(
    peers: &[&OldPeer],
    refresh: &dyn Fn(usize),
    other: &mut dyn FnMut(usize, &[u8], &Value),
    done: &dyn Fn() -> bool,
) -> Vec<usize> {
    let mut keepalives = vec![0; peers.len()];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut due = Instant::now();
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for the relay");
        if Instant::now() >= due {
            (0..peers.len()).for_each(refresh);
            due += Duration::from_millis(250);
        }
        let Some((i, d, v)) = poll_any(peers, due) else {
            continue;
        };
        if v["type"] == "server_keepalive" {
            server_keepalive(&d, &peers[i].name);
            keepalives[i] += 1;
        } else {
            other(i, &d, &v);
        }
    }
    keepalives
}

#[test]
fn server_keepalive_then_peer_left_for_the_silent_peer() {
    // Default budgets, each peer a host of its own as on the Internet. (Old peers never
    // authenticate, so what they are sent beyond forwards is paid from their host's budget:
    // several behind one address share it; see old_python_peers_exchange_with_default_limits.)
    let r = Relay::start(FAST);
    let bob = OldPeer::on(&r, "127.0.1.1", "Bob", true);
    let alice = OldPeer::on(&r, "127.0.2.1", "Alice", true);
    let carol = OldPeer::on(&r, "127.0.3.1", "Carol", true);
    bob.register(&["Bob"]);
    alice.register(&["Bob", "Alice"]);
    presence(&bob.recv(), "peer_joined", "Alice", &["Bob", "Alice"]);
    carol.register(&["Bob", "Alice", "Carol"]);
    for p in [&bob, &alice] {
        presence(
            &p.recv(),
            "peer_joined",
            "Carol",
            &["Bob", "Alice", "Carol"],
        );
    }

    // Bob stays live with keepalives, Alice by relaying to Bob (Part 1: a relay refreshes the
    // sender). Carol says nothing until both have been told she left.
    let peers = [&bob, &alice];
    let left = std::cell::RefCell::new([false; 2]);
    let spans = std::cell::RefCell::new(Vec::new());
    let refresh = |i: usize| match i {
        0 => {
            bob.send_keepalive();
        }
        _ => {
            let (_, span) = alice.send_relay("Bob", "{\"type\": \"still here\"}");
            spans.borrow_mut().push(span);
        }
    };
    let mut other = |i: usize, d: &[u8], v: &Value| match v["type"].as_str().unwrap() {
        "keepalive_ack" => {
            keepalive_ack(d, "Bob");
        }
        "relayed_packet" => {
            assert_eq!(i, 0);
            let span = spans.borrow_mut().remove(0);
            relayed_packet(d, "Alice", &span);
        }
        "peer_left" => {
            presence(d, "peer_left", "Carol", &["Bob", "Alice"]);
            assert!(!left.borrow()[i], "peer_left twice");
            left.borrow_mut()[i] = true;
        }
        _ => panic!("unexpected {}", show(d)),
    };
    let keepalives = serve(&peers, &refresh, &mut other, &|| {
        left.borrow().iter().all(|&l| l)
    });
    // Heard from within every keepalive interval, Bob and Alice are owed no keepalive.
    assert_eq!(keepalives, [0, 0]);

    // Carol, silent, was sent server_keepalive before she was dropped, and nothing else.
    let queued = carol.barrier();
    assert!(!queued.is_empty(), "Carol got no server_keepalive");
    for d in &queued {
        server_keepalive(d, "Carol");
    }
    // She is gone: her relay reaches no one (and her address is not answered).
    carol.send_relay("Bob", "{\"type\": \"hello\"}");
    carol.expect_nothing();
    // Her next keepalive registers her again (old peers rely on it after a gap).
    carol.send_keepalive();
    keepalive_ack(&carol.recv(), "Carol");
    let (_, span) = bob.send_relay("Carol", "{\"type\": \"welcome back\"}");
    let mut got = None;
    while got.is_none() {
        let d = carol.recv();
        if serde_json::from_slice::<Value>(&d).unwrap()["type"] == "relayed_packet" {
            got = Some(d);
        } else {
            server_keepalive(&d, "Carol");
        }
    }
    relayed_packet(&got.unwrap(), "Bob", &span);
}

#[test]
fn moved_old_peer_gets_its_name_back_once_the_old_registration_is_stale() {
    let r = Relay::start(FAST);
    let bob = OldPeer::new(&r, "Bob", true);
    let alice = OldPeer::new(&r, "Alice", true);
    bob.register(&["Bob"]);
    alice.register(&["Bob", "Alice"]);
    presence(&bob.recv(), "peer_joined", "Alice", &["Bob", "Alice"]);

    // Alice's NAT mapping changes: same peer, new address, no session token (old peer).
    let moved = OldPeer::new(&r, "Alice", true);
    moved.send_keepalive();
    // Not taken over while live (Part 2); the new address holds nothing, so it hears nothing.
    moved.expect_nothing();
    moved.send_register();
    expect_error(&moved, "name_in_use");
    let (_, span) = bob.send_relay("Alice", "{\"to\": \"old address\"}");
    relayed_packet(&alice.recv(), "Bob", &span);

    // The old address falls silent; Bob stays live until he is told Alice left.
    let left = std::cell::Cell::new(false);
    let mut other = |_: usize, d: &[u8], v: &Value| match v["type"].as_str().unwrap() {
        "keepalive_ack" => {
            keepalive_ack(d, "Bob");
        }
        "peer_left" => {
            presence(d, "peer_left", "Alice", &["Bob"]);
            left.set(true);
        }
        _ => panic!("unexpected {}", show(d)),
    };
    serve(
        &[&bob],
        &|_| {
            bob.send_keepalive();
        },
        &mut other,
        &|| left.get(),
    );

    // Now the moved peer's keepalive takes the name.
    moved.send_keepalive();
    keepalive_ack(&moved.recv(), "Alice");
    let (_, span) = bob.send_relay("Alice", "{\"to\": \"new address\"}");
    let d = moved.recv();
    relayed_packet(&d, "Bob", &span);
    assert_within_the_host_credit();
}

/// PROTOCOL.md, Liveness: a peer is live while the relay hears a well-formed message naming it
/// (`register`, `keepalive`, a `relay` from it, a `ping` naming it); a refused or malformed
/// datagram from its address does not keep it live. Alice answers each `server_keepalive` only
/// with `datagram`, Bob with keepalives. Carol, silent, is the clock: she registered after Alice,
/// so Alice is dropped with her or before her unless `datagram` keeps her live (`counts`).
/// Each peer is a host of its own, as on the Internet, with the default budgets.
fn liveness_by(datagram: &[u8], counts: bool) {
    let r = Relay::start(FAST);
    let bob = OldPeer::on(&r, "127.0.1.1", "Bob", true);
    let alice = OldPeer::on(&r, "127.0.2.1", "Alice", true);
    let carol = OldPeer::on(&r, "127.0.3.1", "Carol", true);
    bob.register(&["Bob"]);
    alice.register(&["Bob", "Alice"]);
    // (Announcements to others are not ordered with the newcomer's replies, nor with later
    // registrations: wait for each before the next.)
    presence(&bob.recv(), "peer_joined", "Alice", &["Bob", "Alice"]);
    carol.register(&["Bob", "Alice", "Carol"]);
    for p in [&bob, &alice] {
        presence(
            &p.recv(),
            "peer_joined",
            "Carol",
            &["Bob", "Alice", "Carol"],
        );
    }

    // Who Bob heard leave, and whether Alice heard that Carol left.
    let bob_heard = std::cell::RefCell::new(BTreeSet::new());
    let alice_heard = std::cell::Cell::new(false);
    let refresh = |i: usize| {
        if i == 0 {
            bob.send_keepalive();
        } else {
            alice.send_raw(datagram);
        }
    };
    let mut other = |i: usize, d: &[u8], v: &Value| match v["type"].as_str().unwrap() {
        "keepalive_ack" => {
            keepalive_ack(d, "Bob");
        }
        "error" => {
            // Part 2 allows answering a refused datagram with an error.
            assert_eq!(i, 1, "{v}");
            check(
                d,
                "error",
                &[("code", Kind::Str), ("message", Kind::Str)],
                &[],
            );
        }
        "peer_left" if counts => {
            assert!(
                v["peer_name"] == "Carol",
                "Alice was dropped although she sent {:?} within every keepalive interval: {v}",
                show(datagram)
            );
            presence(d, "peer_left", "Carol", &["Bob", "Alice"]);
            if i == 0 {
                assert!(bob_heard.borrow_mut().insert("Carol"), "peer_left twice");
            } else {
                assert!(!alice_heard.replace(true), "peer_left twice");
            }
        }
        "peer_left" => {
            assert_eq!(
                i,
                0,
                "Alice was told Carol left: she was kept live by {:?}",
                show(datagram)
            );
            if v["peer_name"] == "Carol" {
                presence(d, "peer_left", "Carol", &["Bob"]);
                // ("Alice" in `peers` would mean she was live when Carol was dropped.)
                assert!(bob_heard.borrow_mut().insert("Carol"), "peer_left twice");
            } else {
                assert_eq!(v["peer_name"], "Alice", "{v}");
                assert!(!names(&v["peers"]).contains(&"Alice"), "{v}");
                assert!(bob_heard.borrow_mut().insert("Alice"), "peer_left twice");
            }
        }
        _ => panic!("unexpected {}", show(d)),
    };
    let want: BTreeSet<&str> = if counts {
        ["Carol"].into()
    } else {
        ["Alice", "Carol"].into()
    };
    serve(&[&bob, &alice], &refresh, &mut other, &|| {
        *bob_heard.borrow() == want && (alice_heard.get() || !counts)
    });
}

#[test]
fn liveness_counts_a_relay_to_an_unknown_target() {
    // A relay from Alice is well-formed and names her as its source: refused for its target,
    // it still refreshes her.
    liveness_by(
        br#"{"type": "relay", "target": "Nobody", "source": "Alice", "payload": "{\"type\": \"message\"}"}"#,
        true,
    );
}

#[test]
fn liveness_ignores_a_message_of_unknown_type() {
    // It names Alice, but is refused (unknown type): it keeps nobody live.
    liveness_by(br#"{"type": "typing", "name": "Alice"}"#, false);
}

/// A malformed datagram (a peer bug, a datagram mangled on the way, or one forged from a
/// departed peer's address) is refused, and shows nothing about who is there.
#[test]
fn liveness_ignores_a_malformed_datagram() {
    liveness_by(br#"{"type": "keepalive", "name": "Ali"#, false);
}

/// Waits (poll(2), no sleeping) for the next datagram to any of `peers`; `None` once `deadline`
/// passes (the peers act on a timer).
fn poll_any(peers: &[&OldPeer], deadline: Instant) -> Option<(usize, Vec<u8>, Value)> {
    let mut fds: Vec<libc::pollfd> = peers
        .iter()
        .map(|p| libc::pollfd {
            fd: p.p.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                left.as_millis().max(1) as i32,
            )
        };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        if let Some(i) = fds.iter().position(|f| f.revents & libc::POLLIN != 0) {
            let d = peers[i].recv();
            let v = serde_json::from_slice(&d).unwrap_or_else(|_| panic!("{}", show(&d)));
            return Some((i, d, v));
        }
    }
}

/// How many keepalive rounds the two old peers go through before one falls silent: enough for
/// the acks and server keepalives they ignore to spend their host's budget down to its reserve,
/// after which announcements must still reach them.
const KEEPALIVE_ROUNDS: usize = 12;
/// One keepalive round (the peers' 15 s, scaled as the relay's timers are).
const ROUND: Duration = Duration::from_millis(500);

/// Two old peers behind one address (127.0.0.1), speaking as Python's `json.dumps` writes, with
/// every default limit and budget: they register, get their lists, relay both ways, keep alive on
/// their own timer, then one falls silent and the other is told it left. The relay's timers are
/// shortened (60 s and 10 s become 1 s and 250 ms) and the peers keep alive every [`ROUND`].
#[test]
fn old_python_peers_exchange_with_default_limits() {
    let r = Relay::start(&["--peer-timeout", "1s", "--keepalive-interval", "250ms"]);
    let alice = OldPeer::new(&r, "Alice", true);
    let bob = OldPeer::new(&r, "Bob", true);
    assert_eq!(
        show(&alice.send_register()),
        r#"{"type": "register", "name": "Alice"}"#
    );
    register_ack(&alice.recv(), "Alice", alice.addr());
    peer_list(&alice.recv(), &["Alice"]);
    bob.register(&["Alice", "Bob"]);
    presence(&alice.recv(), "peer_joined", "Bob", &["Alice", "Bob"]);

    let relay_both_ways = |n: usize| {
        let (inner, expect) = handshake(true);
        let (_, span) = alice.send_relay("Bob", &inner);
        let v = relayed_packet(&bob.recv(), "Alice", &span);
        let doc: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
        assert_eq!(doc, expect);
        let reply = py_dumps(
            &[("type", Py::S("message")), ("n", Py::Raw(&n.to_string()))],
            true,
        );
        let (_, span) = bob.send_relay("Alice", &reply);
        relayed_packet(&alice.recv(), "Bob", &span);
    };
    relay_both_ways(0);

    // Keepalives on the peers' own timer. What the relay sends back is checked as it comes; the
    // acks and server keepalives to peers that never authenticate are paid from their host's
    // budget and may be withheld once it is spent, so they are not counted on.
    let peers = [&alice, &bob];
    let check_other = |i: usize, d: &[u8], v: &Value| match v["type"].as_str().unwrap() {
        "keepalive_ack" => {
            keepalive_ack(d, &peers[i].name);
        }
        "server_keepalive" => {
            server_keepalive(d, &peers[i].name);
        }
        _ => panic!("unexpected {}", show(d)),
    };
    let mut due = Instant::now();
    for _ in 0..KEEPALIVE_ROUNDS {
        for p in peers {
            p.send_keepalive();
        }
        due += ROUND;
        while let Some((i, d, v)) = poll_any(&peers, due) {
            check_other(i, &d, &v);
        }
    }
    // Both are still registered, and relaying costs their host nothing.
    relay_both_ways(1);

    // Bob falls silent; Alice keeps her timer until she is told that Bob left.
    let deadline = Instant::now() + Duration::from_secs(1) + TIMEOUT;
    'alice: loop {
        alice.send_keepalive();
        due += ROUND;
        while let Some((_, d, v)) = poll_any(&[&alice], due) {
            if v["type"] == "peer_left" {
                presence(&d, "peer_left", "Bob", &["Alice"]);
                break 'alice;
            }
            check_other(0, &d, &v);
        }
        assert!(
            Instant::now() < deadline,
            "Alice was never told that Bob left (announcements withheld: {})",
            r.metric(r#"udp_relay_sends_withheld_total{kind="announcement"}"#)
        );
    }
    // Bob is gone: Alice's relay to him reaches nobody.
    alice.send_relay("Bob", "{\"type\": \"message\", \"text\": \"still there?\"}");
    let got = alice.barrier();
    assert!(
        got.iter()
            .all(|d| serde_json::from_slice::<Value>(d).unwrap()["type"] != "relayed_packet"),
        "{:?}",
        got.iter().map(|d| show(d)).collect::<Vec<_>>()
    );
    // While silent, Bob was sent at most server keepalives (and nothing once gone).
    for d in bob.barrier() {
        server_keepalive(&d, "Bob");
    }
    assert_eq!(r.metric("udp_relay_peers_registered"), 1);
    assert_within_the_host_credit();
}
