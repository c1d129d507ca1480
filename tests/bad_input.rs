//! Hostile and broken datagrams: each is refused under the right reason, answered only as the
//! protocol allows (an `error` within what the budgets pay, and only to a registered peer or to
//! the sender of a `register`), and leaves the relay serving fresh peers.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::*;
use serde_json::json;

/// Error replies are rate limited per source IP, and every test peer is 127.0.0.1: tests that
/// check each error reply lift the limit (one test checks the limit itself).
/// Every refusal answered where the protocol allows: no error-rate limit, and no reply budget on
/// what unauthenticated requests are sent.
const NO_ERROR_LIMIT: &[&str] = &[
    "--error-rate",
    "1000000",
    "--reply-credit",
    "0",
    "--reply-prefix-credit",
    "0",
    "--reply-global-credit",
    "0",
];

/// The counters that moved since `before`.
fn moved(before: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .filter_map(|(k, &v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Waits until the refusals since `before` are exactly `want` (reason, count), failing at once
/// if any other reason moves or a reason moves further.
fn expect_refused(r: &Relay, before: &BTreeMap<String, u64>, want: &[(&str, u64)], what: &str) {
    let want: BTreeMap<String, u64> = want.iter().map(|&(k, n)| (k.to_string(), n)).collect();
    assert!(
        want.keys().all(|k| before.contains_key(k)),
        "{what}: no counter for one of {want:?}"
    );
    let total: u64 = want.values().sum();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = moved(before, &r.refusals());
        if got == want {
            return;
        }
        let sum: u64 = got.values().sum();
        assert!(
            sum < total && Instant::now() < deadline,
            "{what}: refusals moved by {got:?}, expected {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Barrier: pings and returns every raw datagram that arrived before the `pong`.
fn drain_raw(p: &Peer) -> Vec<Vec<u8>> {
    p.send(p.ping());
    let mut before = Vec::new();
    loop {
        let d = p.recv_raw();
        let v: serde_json::Value = serde_json::from_slice(&d).unwrap_or_else(|e| {
            panic!("relay sent non-JSON ({e}): {}", String::from_utf8_lossy(&d))
        });
        if v["type"] == "pong" {
            return before;
        }
        before.push(d);
    }
}

/// Asserts no `relayed_packet` is waiting for `p` (other messages are consumed).
fn assert_no_relayed(p: &Peer) {
    let got = p.drain();
    assert!(
        got.iter().all(|v| v["type"] != "relayed_packet"),
        "{} got {got:?}",
        p.addr()
    );
}

/// Checks that the relay still registers new peers and relays between them, and that no thread
/// of it panicked.
fn assert_serves(r: &Relay) {
    assert_serves_from(r, "127.0.0.1");
}

/// [`assert_serves`] with fresh peers on `host` (another loopback host than 127.0.0.1 has
/// budgets of its own).
fn assert_serves_from(r: &Relay, host: &str) {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let (an, bn) = (format!("fresh-a-{n}"), format!("fresh-b-{n}"));
    let local = format!("{host}:0");
    let a = Peer::bind(r.addr, &local);
    let b = Peer::bind(r.addr, &local);
    a.register(&an);
    let (_, list) = b.register(&bn);
    assert!(list["peers"].as_array().unwrap().contains(&json!(an)));
    let joined = a.expect("peer_joined");
    assert_eq!(joined["peer_name"], bn.as_str());
    let payload = json!({"text": "still here", "n": n, "nested": [1, {"k": null}]});
    a.send(json!({"type": "relay", "target": bn, "source": an, "payload": payload}));
    let got = b.expect("relayed_packet");
    assert_eq!(got["from_peer"], an.as_str());
    assert_eq!(got["via_relay"], true);
    assert_eq!(got["payload"], payload);
    let logs = r.logs();
    assert!(!logs.contains("panicked"), "relay panicked:\n{logs}");
}

/// Stops the relay and checks it exits cleanly, without a panic in its output.
fn stop_cleanly(mut r: Relay) {
    let (status, _) = r.stop();
    let logs = r.logs();
    assert!(status.success(), "relay exited with {status}:\n{logs}");
    assert!(!logs.contains("panicked"), "relay panicked:\n{logs}");
}

/// One broken datagram and what it should cause.
struct Case {
    what: String,
    data: Vec<u8>,
    /// The refusal reason counted for it.
    reason: &'static str,
    /// The error code a registered sender is answered with (`None`: no reply).
    member: Option<&'static str>,
    /// The error code an unregistered sender is answered with (`None`: no reply).
    stranger: Option<&'static str>,
}

fn case(what: &str, data: impl Into<Vec<u8>>, reason: &'static str) -> Case {
    Case {
        what: what.to_string(),
        data: data.into(),
        reason,
        member: None,
        stranger: None,
    }
}

impl Case {
    /// A registered sender gets `error` with `code`.
    fn member(mut self, code: &'static str) -> Case {
        self.member = Some(code);
        self
    }

    /// Any sender gets `error` with `code` (a `register`'s requester is answered).
    fn anyone(mut self, code: &'static str) -> Case {
        self.member = Some(code);
        self.stranger = Some(code);
        self
    }
}

/// A field that makes a datagram pay for its error reply (what a request sends in pays for what
/// it gets back), whatever the budgets.
const PAD: &str = r#""pad":"................................................................""#;

/// The error code the refusal table answers `reason` with.
fn code_of(reason: &str) -> Option<&'static str> {
    let r = relay_core::refusal::Reason::ALL
        .iter()
        .find(|r| r.as_str() == reason)
        .unwrap_or_else(|| panic!("no reason {reason}"));
    r.code().map(|c| c.as_str())
}

/// Sends `c` from `from`, and checks the refusal and the reply (`want`).
fn check(r: &Relay, from: &Peer, c: &Case, want: Option<&str>, who: &str) {
    let what = format!("{} (from a {who})", c.what);
    let before = r.refusals();
    from.send_raw(&c.data);
    let got = drain_raw(from);
    expect_refused(r, &before, &[(c.reason, 1)], &what);
    let shown: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    match want {
        None => assert!(got.is_empty(), "{what}: expected no reply, got {shown:?}"),
        Some(code) => {
            assert_eq!(got.len(), 1, "{what}: expected one error, got {shown:?}");
            let v: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
            assert_eq!(v["type"], "error", "{what}: {v}");
            assert_eq!(v["code"], code, "{what}: {v}");
            assert!(v["message"].is_string(), "{what}: {v}");
        }
    }
}

/// Runs every case from an unregistered peer and from a registered one, checking after each
/// batch that the relay still serves.
fn run_cases(r: &Relay, cases: &[Case]) {
    let stranger = Peer::new(r);
    let member = Peer::new(r);
    member.register("member");
    let peers = r.metric("udp_relay_peers_registered");
    for c in cases {
        check(r, &stranger, c, c.stranger, "stranger");
        // A registered sender is answered whatever the request's size: errors are paid from the
        // budgets (lifted here), not cut to the request.
        check(r, &member, c, c.member.or(code_of(c.reason)), "member");
    }
    // Nobody was registered, moved or removed by any of it.
    member.send(json!({"type": "lookup", "name": "member"}));
    assert_eq!(member.expect("peer_info")["online"], true);
    assert_eq!(r.metric("udp_relay_peers_registered"), peers);
    assert_serves(r);
}

/// A deterministic byte soup starting with `first`.
fn garbage(first: u8, len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    let mut v = vec![first];
    v.extend((1..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x >> 24) as u8
    }));
    v
}

/// A STUN Binding request header (RFC 8489): type 0x0001, length 0, cookie, transaction id.
fn stun_binding_request() -> Vec<u8> {
    let mut d = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    d.extend_from_slice(b"txn-id-12345");
    d
}

/// A STUN Binding success response: what a relay sends, never answered.
fn stun_response() -> Vec<u8> {
    let mut d = stun_binding_request();
    d[0..2].copy_from_slice(&[0x01, 0x01]);
    d
}

#[test]
fn other_families_and_non_json_first_bytes() {
    let r = Relay::start(NO_ERROR_LIMIT);
    let stun = stun_binding_request();
    let mut no_cookie = stun.clone();
    no_cookie[4] = 0x22;
    let stun_response = stun_response();
    let mut stun_with_attr = stun.clone();
    stun_with_attr[2..4].copy_from_slice(&[0x00, 0x08]);
    stun_with_attr.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]);
    let mut stun_indication = stun.clone();
    stun_indication[0..2].copy_from_slice(&[0x00, 0x11]);
    let mut stun_odd_length = stun.clone();
    stun_odd_length[2..4].copy_from_slice(&[0x00, 0x02]);
    stun_odd_length.extend_from_slice(&[0, 0]);
    let mut stun_overrun = stun.clone();
    stun_overrun[2..4].copy_from_slice(&[0x00, 0x08]);
    stun_overrun.extend_from_slice(&[0x80, 0x22, 0x00, 0x10]);
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(br#"{"type":"ping"}"#);
    let mut tls = vec![0x16, 0xFE, 0xFD, 0x00, 0x00];
    tls.extend(garbage(0x01, 60));
    let cases = [
        case("empty datagram", b"".to_vec(), "unknown_family"),
        case(
            "JSON whitespace only",
            b" \t\r\n ".to_vec(),
            "unknown_family",
        ),
        case(
            "a JSON array",
            br#"[{"type":"ping"}]"#.to_vec(),
            "unknown_family",
        ),
        case(
            "a JSON string",
            br#""{\"type\":\"ping\"}""#.to_vec(),
            "unknown_family",
        ),
        case("a JSON number", b"12345".to_vec(), "unknown_family"),
        case("JSON null", b"null".to_vec(), "unknown_family"),
        case("JSON true", b"true".to_vec(), "unknown_family"),
        case(
            "vertical tab (not JSON whitespace) before {",
            b"\x0b{\"type\":\"ping\"}".to_vec(),
            "unknown_family",
        ),
        case(
            "form feed before {",
            b"\x0c{\"type\":\"ping\"}".to_vec(),
            "unknown_family",
        ),
        case("UTF-8 BOM before {", bom, "unknown_family"),
        case("NUL byte", vec![0u8], "unknown_family"),
        case("binary garbage", garbage(0xAB, 300), "unknown_family"),
        case(
            "binary garbage, high bit",
            garbage(0x80, 1200),
            "unknown_family",
        ),
        case(
            "an HTTP request",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "unknown_family",
        ),
        case("a DTLS record", tls, "unknown_family"),
        case(
            "STUN header cut to 19 bytes",
            stun[..19].to_vec(),
            "unknown_family",
        ),
        case(
            "STUN-like header without the magic cookie",
            no_cookie,
            "unknown_family",
        ),
        // A well-formed Binding request is answered (tests/stun.rs); these are not.
        case(
            "STUN Binding request with a wrong FINGERPRINT",
            stun_with_attr,
            "stun_bad_fingerprint",
        ),
        case(
            "STUN Binding success response",
            stun_response,
            "stun_not_binding_request",
        ),
        case(
            "STUN Binding indication",
            stun_indication,
            "stun_not_binding_request",
        ),
        case(
            "STUN length not a multiple of four",
            stun_odd_length,
            "stun_malformed",
        ),
        case(
            "STUN length beyond the datagram",
            stun_overrun,
            "stun_malformed",
        ),
        case(
            "channel frame for a channel nobody bound",
            vec![0xD1, 0x00, 0x12, 0x34, 0x56, 0x78, b'h', b'i'],
            "channel_gone",
        ),
        case(
            "channel frame for channel zero",
            vec![0xD1, 0x00, 0, 0, 0, 0, b'h', b'i'],
            "channel_gone",
        ),
        case("channel frame header only", vec![0xD1], "frame_short"),
        case(
            "channel frame cut inside its number",
            vec![0xD1, 0, 0x12, 0x34, 0x56],
            "frame_short",
        ),
        case(
            "channel frame with flags",
            vec![0xD1, 0x80, 0x12, 0x34, 0x56, 0x78],
            "frame_flags",
        ),
    ];
    run_cases(&r, &cases);
    stop_cleanly(r);
}

#[test]
fn broken_utf8_and_json() {
    let r = Relay::start(NO_ERROR_LIMIT);
    let utf8 = |tail: &[u8]| {
        let mut d = format!(r#"{{"type":"ping",{PAD},"x":""#).into_bytes();
        d.extend_from_slice(tail);
        d.extend_from_slice(b"\"}");
        d
    };
    let mut ws_then_bad = b" \r\n\t{\"type\":\"ping\",".to_vec();
    ws_then_bad.extend_from_slice(PAD.as_bytes());
    ws_then_bad.extend_from_slice(b",\"x\":\"\xff\"}");
    let mut cut_multibyte = format!(r#"{{"type":"ping",{PAD},"x":""#).into_bytes();
    cut_multibyte.extend_from_slice(b"\xe2\x82");
    let p = |s: &str| s.replace("PAD", PAD).into_bytes();
    let cases = [
        case("0xFF in a string", utf8(b"\xff"), "not_utf8").member("bad_request"),
        case("bad continuation", utf8(b"\xc3\x28"), "not_utf8").member("bad_request"),
        case("overlong '/'", utf8(b"\xc0\xaf"), "not_utf8").member("bad_request"),
        case("UTF-8-encoded surrogate", utf8(b"\xed\xa0\x80"), "not_utf8").member("bad_request"),
        case("beyond U+10FFFF", utf8(b"\xf4\x90\x80\x80"), "not_utf8").member("bad_request"),
        case("after leading whitespace", ws_then_bad, "not_utf8").member("bad_request"),
        case("cut multi-byte at end", cut_multibyte, "not_utf8").member("bad_request"),
        // Too short for any error reply to fit: refused silently.
        case("lone {", b"{".to_vec(), "malformed_json"),
        case("{{}", b"{{}".to_vec(), "malformed_json"),
        case(
            "truncated relay",
            p(r#"{"type":"relay",PAD,"target":"member","source":"member","payload":"abc"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "truncated after a colon",
            p(r#"{PAD,"type":"relay","payload":"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "truncated inside an escape",
            p(r#"{"type":"ping",PAD,"x":"\u00"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "trailing garbage",
            p(r#"{"type":"ping",PAD} x"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "two objects",
            p(r#"{"type":"ping",PAD}{"type":"ping"}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "trailing NUL",
            p("{\"type\":\"ping\",PAD}\0"),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "trailing comma",
            p(r#"{"type":"ping",PAD,}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "single quotes",
            p(r#"{'type':'ping',PAD}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case("unquoted key", p(r#"{type:"ping",PAD}"#), "malformed_json").member("bad_request"),
        case("NaN", p(r#"{"type":"ping",PAD,"x":NaN}"#), "malformed_json").member("bad_request"),
        case(
            "leading zero",
            p(r#"{"type":"ping",PAD,"x":01}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "bare minus",
            p(r#"{"type":"ping",PAD,"x":-}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "comment",
            p(r#"{"type":"ping",PAD /* hi */}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "raw newline inside a string",
            p("{\"type\":\"register\",PAD,\"name\":\"a\nb\"}"),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "invalid escape",
            p(r#"{"type":"ping",PAD,"x":"\x41"}"#),
            "malformed_json",
        )
        .member("bad_request"),
        // Well-formed JSON, but the control-message parser cannot decode the key into a string.
        case(
            "lone surrogate in a key",
            p(r#"{"\ud800":1,"type":"ping",PAD}"#),
            "bad_request",
        )
        .member("bad_request"),
        case(
            "lone surrogate in type",
            p(r#"{"type":"\udc00",PAD}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "missing colon",
            p(r#"{"type" "ping",PAD}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "malformed payload",
            p(r#"{"type":"relay","target":"member","source":"member",PAD,"payload":{"a":}}"#),
            "malformed_json",
        )
        .member("bad_request"),
        case(
            "unclosed payload array",
            p(r#"{"type":"relay","target":"member","source":"member",PAD,"payload":[1,2}"#),
            "malformed_json",
        )
        .member("bad_request"),
    ];
    run_cases(&r, &cases);
    stop_cleanly(r);
}

#[test]
fn wrong_types_missing_and_duplicate_fields() {
    let r = Relay::start(NO_ERROR_LIMIT);
    let p = |s: &str| s.replace("PAD", PAD).into_bytes();
    let relay = |fields: &str| p(&format!(r#"{{"type":"relay",PAD,{fields}}}"#));
    let cases = [
        // Routing fields of the wrong JSON type.
        case("type a number", p(r#"{"type":1,PAD}"#), "wrong_field_type").member("bad_request"),
        case("type null", p(r#"{"type":null,PAD}"#), "wrong_field_type").member("bad_request"),
        case(
            "type an array",
            p(r#"{"type":["relay"],PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "type an object",
            p(r#"{"type":{"type":"ping"},PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "target a number",
            relay(r#""target":5,"source":"member","payload":"x""#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "source an object",
            relay(r#""target":"member","source":{"name":"member"},"payload":"x""#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "target true",
            relay(r#""target":true,"source":"member","payload":"x""#),
            "wrong_field_type",
        )
        .member("bad_request"),
        // Fields of control messages of the wrong type (simd-json refuses the struct).
        case(
            "register name a number",
            p(r#"{"type":"register","name":5,PAD}"#),
            "wrong_field_type",
        )
        .anyone("bad_request"),
        case(
            "register name null",
            p(r#"{"type":"register","name":null,PAD}"#),
            "wrong_field_type",
        )
        .anyone("bad_request"),
        case(
            "register name an array",
            p(r#"{"type":"register","name":["a"],PAD}"#),
            "wrong_field_type",
        )
        .anyone("bad_request"),
        case(
            "register session a number",
            p(r#"{"type":"register","name":"x","session":5,PAD}"#),
            "wrong_field_type",
        )
        .anyone("bad_request"),
        case(
            "keepalive name a number",
            p(r#"{"type":"keepalive","name":5,PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "ping name a number",
            p(r#"{"type":"ping","name":5,PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "watch names a string",
            p(r#"{"type":"watch","names":"member",PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "watch names holding a number",
            p(r#"{"type":"watch","names":["member",1],PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "lookup name an object",
            p(r#"{"type":"lookup","name":{},PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "connect target a number",
            p(r#"{"type":"connect","target":7,PAD}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        // Missing fields.
        case("empty object", b"{}".to_vec(), "missing_field"),
        case("no type", p(r#"{"name":"x",PAD}"#), "missing_field").member("bad_request"),
        case(
            "no type, escaped look-alike key",
            p(r#"{"typ\u0065s":"ping",PAD}"#),
            "missing_field",
        )
        .member("bad_request"),
        case(
            "relay without payload",
            relay(r#""target":"member","source":"member""#),
            "missing_field",
        )
        .member("bad_request"),
        case(
            "relay without target",
            relay(r#""source":"member","payload":"x""#),
            "missing_field",
        )
        .member("bad_request"),
        case(
            "relay without source",
            relay(r#""target":"member","payload":"x""#),
            "missing_field",
        )
        .member("bad_request"),
        // A control message without its required field is counted like a routing field's.
        case(
            "register without name",
            p(r#"{"type":"register",PAD}"#),
            "missing_field",
        )
        .anyone("bad_request"),
        case(
            "lookup without name",
            p(r#"{"type":"lookup",PAD}"#),
            "missing_field",
        )
        .member("bad_request"),
        // Repeated fields.
        case(
            "type twice",
            p(r#"{"type":"ping","type":"ping",PAD}"#),
            "duplicate_field",
        )
        .member("bad_request"),
        case(
            "type twice, once escaped",
            p(r#"{"type":"ping",PAD,"\u0074ype":"ping"}"#),
            "duplicate_field",
        )
        .member("bad_request"),
        case(
            "target twice",
            relay(r#""target":"member","source":"member","target":"member","payload":1"#),
            "duplicate_field",
        )
        .member("bad_request"),
        case(
            "source twice",
            relay(r#""source":"member","target":"member","source":"other","payload":1"#),
            "duplicate_field",
        )
        .member("bad_request"),
        case(
            "payload twice",
            relay(r#""target":"member","source":"member","payload":1,"payload":{"a":2}"#),
            "duplicate_field",
        )
        .member("bad_request"),
        case(
            "payload twice, once escaped",
            relay(r#""target":"member","source":"member","payload":1,"p\u0061yload":2"#),
            "duplicate_field",
        )
        .member("bad_request"),
        case(
            "register name twice",
            p(r#"{"type":"register","name":"n1","name":"n2",PAD}"#),
            "duplicate_field",
        )
        .anyone("bad_request"),
    ];
    run_cases(&r, &cases);
    stop_cleanly(r);
}

#[test]
fn bad_names_and_unknown_types() {
    let r = Relay::start(NO_ERROR_LIMIT);
    let reg = |name: &str| format!(r#"{{"type":"register",{PAD},"name":{name}}}"#).into_bytes();
    let long = format!("\"{}\"", "x".repeat(65));
    let emoji = format!("\"{}\"", "🙂".repeat(17)); // 17 chars, 68 bytes
    let escaped_long = format!("\"{}\"", r"\u0078".repeat(65));
    let cases = [
        case("65-byte name", reg(&long), "invalid_name").anyone("invalid_name"),
        case("68-byte name of 17 chars", reg(&emoji), "invalid_name").anyone("invalid_name"),
        case(
            "65-byte name written with escapes",
            reg(&escaped_long),
            "invalid_name",
        )
        .anyone("invalid_name"),
        case("empty name", reg(r#""""#), "invalid_name").anyone("invalid_name"),
        case("name with NUL", reg(r#""a\u0000b""#), "invalid_name").anyone("invalid_name"),
        case("name with newline", reg(r#""a\nb""#), "invalid_name").anyone("invalid_name"),
        case("name with tab", reg(r#""a\tb""#), "invalid_name").anyone("invalid_name"),
        case(
            "name with an ANSI escape",
            reg(r#""\u001b[31mred""#),
            "invalid_name",
        )
        .anyone("invalid_name"),
        case("name with raw DEL", reg("\"a\u{7f}\""), "invalid_name").anyone("invalid_name"),
        case("name with raw U+0085", reg("\"a\u{85}\""), "invalid_name").anyone("invalid_name"),
        case("name with raw U+009F", reg("\"\u{9f}\""), "invalid_name").anyone("invalid_name"),
        // simd-json refuses a lone surrogate while building the name.
        case("name a lone surrogate", reg(r#""\ud800""#), "bad_request").anyone("bad_request"),
        case(
            "keepalive with a 65-byte name",
            format!(r#"{{"type":"keepalive",{PAD},"name":{long}}}"#),
            "invalid_name",
        )
        .member("invalid_name"),
        case(
            "lookup of a name with a control character",
            format!(r#"{{"type":"lookup",{PAD},"name":"a\u0001"}}"#),
            "invalid_name",
        )
        .member("invalid_name"),
        case(
            "unknown type",
            format!(r#"{{"type":"nope",{PAD}}}"#),
            "unknown_type",
        )
        .member("bad_request"),
        case("short unknown type", r#"{"type":"nope"}"#, "unknown_type"),
        case(
            "empty type",
            format!(r#"{{"type":"",{PAD}}}"#),
            "unknown_type",
        )
        .member("bad_request"),
        case(
            "type in upper case",
            format!(r#"{{"type":"REGISTER","name":"x",{PAD}}}"#),
            "unknown_type",
        )
        .member("bad_request"),
        case(
            "type with a trailing NUL",
            format!(r#"{{"type":"ping\u0000",{PAD}}}"#),
            "unknown_type",
        )
        .member("bad_request"),
        case(
            "long escaped type",
            format!(r#"{{"type":"{}",{PAD}}}"#, r"\u0072".repeat(40)),
            "unknown_type",
        )
        .member("bad_request"),
        // Never answered: a forger could otherwise set two relays answering each other.
        case(
            "a relay's own message type sent back",
            format!(r#"{{"type":"relayed_packet","from_peer":"member","payload":1,{PAD}}}"#),
            "relay_message",
        ),
        case(
            "an error sent back",
            format!(r#"{{"type":"error","code":"bad_request","message":"",{PAD}}}"#),
            "relay_message",
        ),
        case(
            "bind_ack sent back",
            format!(r#"{{"type":"bind_ack","target":"x","channel":1,{PAD}}}"#),
            "relay_message",
        ),
        case(
            "channel_closed sent back",
            format!(r#"{{"type":"channel_closed","channel":1,{PAD}}}"#),
            "relay_message",
        ),
    ];
    run_cases(&r, &cases);
    stop_cleanly(r);
}

#[test]
fn deep_nesting() {
    let r = Relay::start(NO_ERROR_LIMIT);
    let relay = |payload: &str| {
        format!(
            r#"{{"type":"relay","target":"member","source":"member",{PAD},"payload":{payload}}}"#
        )
    };
    let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    let cases = [
        case(
            "60000 unclosed [ in payload",
            relay(&"[".repeat(60_000)),
            "too_deep",
        )
        .member("bad_request"),
        case(
            "30000 balanced [] in payload",
            relay(&arrays(30_000)),
            "too_deep",
        )
        .member("bad_request"),
        case(
            "128 levels of [] in payload (129 with the message)",
            relay(&arrays(128)),
            "too_deep",
        )
        .member("bad_request"),
        case("10000 nested objects", relay(&objects(10_000)), "too_deep").member("bad_request"),
        case(
            "deep unknown field of a register",
            format!(
                r#"{{"type":"register","name":"x","extra":{},{PAD}}}"#,
                arrays(500)
            ),
            "too_deep",
        )
        .member("bad_request"),
        case(
            "deep value in place of target",
            format!(r#"{{"type":"relay",{PAD},"target":{}}}"#, arrays(200)),
            "too_deep",
        )
        .member("bad_request"),
        case(
            "deep before the type",
            format!(r#"{{"x":{},"type":"ping",{PAD}}}"#, "[".repeat(50_000)),
            "too_deep",
        )
        .member("bad_request"),
    ];
    run_cases(&r, &cases);

    // Just under the limit is fine, and the payload arrives byte for byte.
    let a = Peer::new(&r);
    let b = Peer::new(&r);
    a.register("deep-a");
    b.register("deep-b");
    a.expect("peer_joined"); // b's join, sent by another worker: not ordered with a ping
    let payload = arrays(127);
    let d =
        format!(r#"{{"type":"relay","target":"deep-b","source":"deep-a","payload":{payload}}}"#);
    a.send_raw(d.as_bytes());
    let got = b.recv_raw();
    let want = format!(
        r#"{{"type":"relayed_packet","from_peer":"deep-a","via_relay":true,"payload":{payload}}}"#
    );
    assert_eq!(String::from_utf8(got).unwrap(), want);
    stop_cleanly(r);
}

#[test]
fn oversized_datagrams() {
    let r = Relay::start(&[
        "--max-datagram",
        "512",
        "--error-rate",
        "1000000",
        "--reply-credit",
        "0",
        "--reply-prefix-credit",
        "0",
    ]);
    let a = Peer::new(&r);
    let b = Peer::new(&r);
    a.register("big-a");
    b.register("big-b");
    a.expect("peer_joined"); // b's join, sent by another worker: not ordered with a ping
    let relay_of = |len: usize| {
        let head = r#"{"type":"relay","target":"big-b","source":"big-a","payload":""#;
        let d = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
        assert_eq!(d.len(), len);
        d.into_bytes()
    };

    // Exactly the limit is served.
    let d = relay_of(512);
    a.send_raw(&d);
    let got = b.expect("relayed_packet");
    let sent: serde_json::Value = serde_json::from_slice(&d).unwrap();
    assert_eq!(got["payload"], sent["payload"]);

    let mut big_json = relay_of(512);
    big_json.truncate(big_json.len() - 2);
    big_json.extend(std::iter::repeat_n(b'y', 60_000 - big_json.len() - 2));
    big_json.extend_from_slice(b"\"}");
    let cases = [
        case("513 bytes", relay_of(513), "too_large").member("too_large"),
        case("600 bytes", relay_of(600), "too_large").member("too_large"),
        case("60000 bytes of JSON", big_json, "too_large").member("too_large"),
        case("65507 bytes (UDP maximum)", relay_of(65_507), "too_large").member("too_large"),
        // Size is checked before anything else: garbage and empty-looking datagrams too.
        case("10000 bytes of garbage", garbage(0xAB, 10_000), "too_large").member("too_large"),
        case("513 spaces", vec![b' '; 513], "too_large").member("too_large"),
    ];
    run_cases(&r, &cases);
    // Nothing of the refused datagrams reached the target (only presence news did).
    assert_no_relayed(&b);
    assert_no_relayed(&a);
    stop_cleanly(r);
}

#[test]
fn relayed_packet_beyond_the_udp_maximum_is_refused() {
    // The incoming datagram fits, but `relayed_packet` around its payload would not.
    let r = Relay::start(NO_ERROR_LIMIT);
    let a = Peer::new(&r);
    let b = Peer::new(&r);
    a.register("A");
    b.register("B");
    a.expect("peer_joined"); // b's join, sent by another worker: not ordered with a ping
    let head = r#"{"type":"relay","target":"B","source":"A","payload":""#;
    let of = |len: usize| format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
    // relayed_packet adds 16 bytes for these names: 65491 in makes 65507 out.
    a.send_raw(of(65_491).as_bytes());
    assert_eq!(b.recv_raw().len(), 65_507);
    let before = r.refusals();
    let d = of(65_492);
    a.send_raw(d.as_bytes());
    let got = drain_raw(&a);
    expect_refused(&r, &before, &[("too_large", 1)], "relayed packet too large");
    assert_eq!(got.len(), 1, "{got:?}");
    let v: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
    assert_eq!(v["code"], "too_large");
    b.expect_nothing();
    assert_serves(&r);
    stop_cleanly(r);
}

#[test]
fn routing_refusals_answer_only_registered_senders() {
    let r = Relay::start(NO_ERROR_LIMIT);
    let a = Peer::new(&r);
    let b = Peer::new(&r);
    let stranger = Peer::new(&r);
    a.register("route-a");
    b.register("route-b");
    a.expect("peer_joined"); // b's join, sent by another worker: not ordered with a ping
    let long_target = format!(r#""target":"{}""#, r"\u0078".repeat(70));
    let stranger_cases = [
        // Spoofing a registered source from another address.
        case(
            "relay naming another address's source",
            format!(
                r#"{{"type":"relay","target":"route-b","source":"route-a",{PAD},"payload":"hi"}}"#
            ),
            "not_registered",
        ),
        case(
            "relay from nobody to nobody",
            format!(r#"{{"type":"relay","target":"x","source":"y",{PAD},"payload":"hi"}}"#),
            "not_registered",
        ),
        case(
            "keepalive for a live name held elsewhere",
            format!(r#"{{"type":"keepalive","name":"route-a",{PAD}}}"#),
            "name_in_use",
        ),
        case(
            "register of a live name held elsewhere",
            format!(r#"{{"type":"register","name":"route-a",{PAD}}}"#),
            "name_in_use",
        )
        .anyone("name_in_use"),
        case(
            "register with a wrong session token",
            format!(
                r#"{{"type":"register","name":"route-a","session":"{}",{PAD}}}"#,
                "0".repeat(32)
            ),
            "name_in_use",
        )
        .anyone("name_in_use"),
        case(
            "watch before registering",
            format!(r#"{{"type":"watch","names":["route-a"],{PAD}}}"#),
            "not_registered",
        ),
        case(
            "connect before registering",
            format!(r#"{{"type":"connect","target":"route-a",{PAD}}}"#),
            "not_registered",
        ),
        case(
            "unregister of a name held elsewhere",
            format!(r#"{{"type":"unregister","name":"route-a",{PAD}}}"#),
            "not_registered",
        ),
    ];
    for c in &stranger_cases {
        check(&r, &stranger, c, c.stranger, "stranger");
    }
    let member_cases = [
        case(
            "relay naming a source held elsewhere",
            format!(
                r#"{{"type":"relay","target":"route-a","source":"route-b",{PAD},"payload":"hi"}}"#
            ),
            "not_registered",
        )
        .member("not_registered"),
        case(
            "relay to an unknown target",
            format!(
                r#"{{"type":"relay","target":"nobody","source":"route-a",{PAD},"payload":"hi"}}"#
            ),
            "unknown_target",
        )
        .member("unknown_target"),
        case(
            "relay to an over-long escaped target",
            format!(r#"{{"type":"relay",{long_target},"source":"route-a","payload":"hi"}}"#),
            "unknown_target",
        )
        .member("unknown_target"),
        case(
            "connect without a session",
            format!(r#"{{"type":"connect","target":"nobody",{PAD}}}"#),
            "session_required",
        )
        .member("session_required"),
        case(
            "bind without a session",
            format!(r#"{{"type":"bind","target":"nobody",{PAD}}}"#),
            "session_required",
        )
        .member("session_required"),
        case(
            "unbind without a session",
            format!(r#"{{"type":"unbind","channel":1,{PAD}}}"#),
            "session_required",
        )
        .member("session_required"),
        case(
            "unbind of a channel number that is not a u32",
            format!(r#"{{"type":"unbind","channel":-1,{PAD}}}"#),
            "wrong_field_type",
        )
        .member("bad_request"),
        case(
            "watch without a session",
            format!(
                r#"{{"type":"watch","names":["ok","{}"],{PAD}}}"#,
                "x".repeat(65)
            ),
            "session_required",
        )
        .member("session_required"),
    ];
    for c in &member_cases {
        check(&r, &a, c, c.member, "member");
    }
    // The spoofed and refused relays reached nobody; the registrations are untouched.
    b.expect_nothing();
    a.send(json!({"type": "lookup", "name": "route-a"}));
    assert_eq!(a.expect("peer_info")["online"], true);
    a.send(json!({"type": "relay", "target": "route-b", "source": "route-a", "payload": 7}));
    let got = b.expect("relayed_packet");
    assert_eq!(got["from_peer"], "route-a");
    assert_eq!(r.metric("udp_relay_peers_registered"), 2);
    assert_serves(&r);
    stop_cleanly(r);
}

#[test]
fn tiny_bad_datagrams_are_answered_within_what_they_pay() {
    // Default budgets: an unauthenticated sender is answered from its host's credit and what it
    // sends, so errors to tiny datagrams stop once the credit is spent. One worker serves every
    // datagram in arrival order, so another peer's authenticated ping, sent after the flood, is
    // a barrier for it: the flooder's own pong would be paid from the same spent credit.
    let r = Relay::start(&["--workers", "1", "--error-rate", "1000000"]);
    // The barrier peer first: its registration costs 127.0.0.1 more than it sends, so it leaves
    // the flooder less than the credit, never more.
    let barrier = Peer::new(&r);
    barrier.register("barrier");
    // The flooder is an old peer: it registers (as `register_old` does) and never authenticates.
    let member = Peer::new(&r);
    let register = br#"{"type":"register","name":"tiny"}"#;
    member.send_raw(register);
    let mut sent = register.len();
    let mut got = 0;
    for ty in ["register_ack", "peer_list"] {
        let d = member.recv_raw();
        let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
        assert_eq!(v["type"], ty, "{v}");
        got += d.len();
    }
    member.sock.set_nonblocking(true).unwrap();
    let cases: &[&[u8]] = &[
        b"{",
        b"{}",
        b"{\"type\":1}",
        b"{\"type\":\"x\"}",
        b"{\"type\":\"relay\"}",
        b"{\"type\":\"ping\"\xff}",
        b"{\"type\":\"register\"}",
        b"{\"type\":\"register\",\"name\":\"\"}",
    ];
    let (mut answered, mut flood) = (0, 0);
    let mut buf = vec![0u8; 2048];
    for _ in 0..20 {
        for &d in cases {
            member.send_raw(d);
            sent += d.len();
            flood += 1;
        }
        barrier.drain();
        loop {
            let n = match member.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            };
            let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(v["type"], "error", "{v}");
            assert!(ERROR_CODES.contains(&v["code"].as_str().unwrap()), "{v}");
            assert!(v["message"].is_string(), "{v}");
            got += n;
            answered += 1;
        }
    }
    println!("{answered} of {flood} answered: {got} bytes back for {sent} bytes sent");
    assert!(answered > 0, "the credit pays for some errors");
    assert!(answered < flood, "every tiny datagram was answered");
    // Each request pays for its own answer up to three times its size; beyond, the host's
    // credit.
    assert!(got <= 3 * sent + 2048, "{got} bytes back for {sent} sent");
    assert!(r.metric("udp_relay_sends_withheld_total{kind=\"reply\"}") > 0);
    // 127.0.0.1 has spent its credit (its next registrations are answered by what they pay
    // themselves); peers on another network are served as ever.
    assert_serves_from(&r, "127.0.9.1");
    stop_cleanly(r);
}

#[test]
fn error_replies_are_rate_limited_per_source() {
    // One worker, so that one limiter sees every datagram; 1 error a second, bursts of 2.
    let r = Relay::start(&["--workers", "1", "--error-rate", "1"]);
    let member = Peer::new(&r);
    member.register("limited");
    let d = format!(r#"{{"type":"nope",{PAD}}}"#);
    let before = r.refusals();
    let start = Instant::now();
    let n = 30;
    for _ in 0..n {
        member.send_raw(d.as_bytes());
    }
    let got = drain_raw(&member);
    let secs = start.elapsed().as_secs();
    assert!(
        got.len() as u64 <= 2 + secs + 1,
        "{} error replies in {secs}s at 1/s with bursts of 2",
        got.len()
    );
    assert!(!got.is_empty(), "the first errors are answered");
    expect_refused(&r, &before, &[("unknown_type", n)], "error flood");
    assert_eq!(
        r.metric("udp_relay_error_replies_suppressed_total"),
        n - got.len() as u64
    );
    assert_serves(&r);
    stop_cleanly(r);
}

#[test]
fn a_burst_of_every_kind_from_many_sources_leaves_the_relay_serving() {
    // Every kind of bad datagram, from several sockets at once; then count them all.
    // The pong barriers to these strangers would outrun their credit: no credit limit here.
    let r = Relay::start(&args(&["--max-datagram", "2048"], NO_BUDGETS));
    let kinds: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        garbage(0xAB, 700),
        stun_response(),
        vec![0xD1, 0, 0, 0, 0, 1, 2, 3],
        b"{".to_vec(),
        vec![b'{'; 2048],
        b"{\"type\":\"x\xff\"}".to_vec(),
        format!(r#"{{"type":"relay","payload":{}}}"#, "[".repeat(1500)).into_bytes(),
        br#"{"type":"a","type":"b"}"#.to_vec(),
        br#"{"type":7}"#.to_vec(),
        br#"{"name":"x"}"#.to_vec(),
        br#"{"type":"nope"}"#.to_vec(),
        br#"{"type":"register","name":5}"#.to_vec(),
        format!(r#"{{"type":"register","name":"{}"}}"#, "x".repeat(65)).into_bytes(),
        vec![b'x'; 2049],
    ];
    let want = [
        ("unknown_family", 2),
        ("stun_not_binding_request", 1),
        ("channel_gone", 1),
        ("malformed_json", 2),
        ("not_utf8", 1),
        ("too_deep", 1),
        ("duplicate_field", 1),
        ("wrong_field_type", 2),
        ("missing_field", 1),
        ("unknown_type", 1),
        ("invalid_name", 1),
        ("too_large", 1),
    ];
    assert_eq!(want.iter().map(|w| w.1).sum::<u64>(), kinds.len() as u64);
    let peers: Vec<Peer> = (0..6).map(|_| Peer::new(&r)).collect();
    let rounds = 20u64;
    let before = r.refusals();
    std::thread::scope(|s| {
        for p in &peers {
            let kinds = &kinds;
            s.spawn(move || {
                for _ in 0..rounds {
                    for d in kinds {
                        p.send_raw(d);
                    }
                    // A barrier per round keeps the socket buffers from overflowing.
                    p.drain();
                }
            });
        }
    });
    let n = rounds * peers.len() as u64;
    let want: Vec<(&str, u64)> = want.iter().map(|&(k, m)| (k, m * n)).collect();
    expect_refused(&r, &before, &want, "burst");
    assert_eq!(r.metric("udp_relay_peers_registered"), 0);
    assert_serves(&r);
    stop_cleanly(r);
}
