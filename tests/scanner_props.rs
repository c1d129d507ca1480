//! Property tests of the header scanner (`wire::scan`) and of the relay's byte-for-byte payload
//! forwarding (PROTOCOL.md, Part 2, "Forwarding without re-serializing").
//!
//! - Any JSON payload, in any field order and with any whitespace and escaping, is forwarded in
//!   `relayed_packet` exactly as its bytes arrived.
//! - On arbitrary mutations of datagrams the scanner never panics and accepts exactly what an
//!   independent reference (serde_json plus the protocol's rules) accepts.
//! - Nesting far beyond [`MAX_DEPTH`] is refused without exhausting the stack.

mod common;

use common::addr;
use std::fmt;
use std::ops::Range;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use relay_core::refusal::Reason;
use relay_core::wire::scan::MAX_DEPTH;
use relay_core::wire::scan::{self, ScanError};
use relay_core::wire::valid_name;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use udp_relay::config::Settings;

/// Fixed, so that CI runs the same cases every time; fuzzing (cargo fuzz) is where new inputs
/// are explored. Change it locally to explore with proptest.
const SEED: u64 = 0x5eed_2026;

// ---------------------------------------------------------------------------------------------
// A router with two registered peers, driven the way the I/O loop drives it.

use relay_core::testing::Harness as Relay;

/// A relay with `a` registered at `addr(1)` and `b` at `addr(2)`.
fn with_peers(a: &str, b: &str) -> Relay {
    let mut r = Relay::new(Settings::default());
    for (name, from) in [(a, addr(1)), (b, addr(2))] {
        let reg = serde_json::json!({"type": "register", "name": name}).to_string();
        let sends = r.run(reg.as_bytes(), from, 0);
        let ack: Value = serde_json::from_slice(&sends[0].1).expect("register reply is JSON");
        assert_eq!(ack["type"], "register_ack", "registering {name:?}: {ack}");
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Writing JSON text: compact (serde_json's own output) or with random whitespace and escapes.

/// SplitMix64: the randomness of one serialization, drawn from a proptest-generated seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Writer {
    /// `None`: compact, as serde_json writes it.
    rng: Option<Rng>,
    out: String,
}

impl Writer {
    fn new(seed: Option<u64>) -> Writer {
        Writer {
            rng: seed.map(Rng),
            out: String::new(),
        }
    }

    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// Optional JSON whitespace between tokens.
    fn ws(&mut self) {
        let Some(r) = &mut self.rng else { return };
        if r.chance(40) {
            for _ in 0..=r.below(3) {
                self.out.push([' ', '\t', '\n', '\r'][r.below(4) as usize]);
            }
        }
    }

    fn hex_escape(&mut self, c: char) {
        let upper = self.rng.as_mut().is_some_and(|r| r.chance(50));
        let mut units = [0u16; 2];
        for u in c.encode_utf16(&mut units) {
            let e = if upper {
                format!("\\u{u:04X}")
            } else {
                format!("\\u{u:04x}")
            };
            self.out.push_str(&e);
        }
    }

    fn string(&mut self, s: &str) {
        let Some(r) = &mut self.rng else {
            self.out.push_str(&serde_json::to_string(s).unwrap());
            return;
        };
        let mut picks = Vec::with_capacity(s.len());
        for _ in s.chars() {
            picks.push(r.below(10));
        }
        self.out.push('"');
        for (c, pick) in s.chars().zip(picks) {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let must_escape = matches!(c, '"' | '\\' | '\0'..='\u{1f}');
            match short {
                _ if !must_escape && pick < 6 => self.out.push(c),
                Some(e) if pick < 8 => self.out.push_str(e),
                _ => self.hex_escape(c),
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, v: &Value) {
        if self.rng.is_none() {
            self.out.push_str(&serde_json::to_string(v).unwrap());
            return;
        }
        match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => self.out.push_str(&v.to_string()),
            Value::String(s) => self.string(s),
            Value::Array(a) => {
                self.raw("[");
                self.ws();
                for (i, e) in a.iter().enumerate() {
                    if i > 0 {
                        self.ws();
                        self.raw(",");
                        self.ws();
                    }
                    self.value(e);
                }
                self.ws();
                self.raw("]");
            }
            Value::Object(m) => {
                self.raw("{");
                self.ws();
                for (i, (k, e)) in m.iter().enumerate() {
                    if i > 0 {
                        self.ws();
                        self.raw(",");
                        self.ws();
                    }
                    self.member(k, e);
                }
                self.ws();
                self.raw("}");
            }
        }
    }

    /// `"key": value`; returns the byte range of the value.
    fn member(&mut self, key: &str, v: &Value) -> Range<usize> {
        self.string(key);
        self.ws();
        self.raw(":");
        self.ws();
        let start = self.out.len();
        self.value(v);
        start..self.out.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.

fn arb_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        3 => proptest::char::range('a', 'z'),
        3 => prop::sample::select(vec![
            '"', '\\', '/', '\n', '\r', '\t', '\u{8}', '\u{c}', '\0', '\u{1f}', '\u{7f}', ' ',
            'é', '☕', '😀', '\u{10FFFF}', '\u{2028}', '\u{FEFF}', '\u{FFFF}', '\u{D7FF}',
            '\u{E000}', '{', '}', '[', ']', ':', ',',
        ]),
    ]
}

fn arb_string() -> impl Strategy<Value = String> {
    prop::collection::vec(arb_char(), 0..12).prop_map(|cs| cs.into_iter().collect())
}

/// Finite floats that serde_json reads back exactly as it writes them (it parses floats on a
/// best-effort basis without the `float_roundtrip` feature).
fn arb_float() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>(),
        (-1000i32..1000).prop_map(|n| f64::from(n) / 8.0),
    ]
    .prop_filter_map("float that survives a JSON round trip", |f| {
        let v = Value::from(serde_json::Number::from_f64(f)?);
        (serde_json::from_str::<Value>(&v.to_string()).ok()? == v).then_some(v)
    })
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        arb_float(),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z][A-Za-z0-9_.-]{0,11}", "\\PC{1,16}"]
        .prop_filter("valid peer name", |n| valid_name(n))
}

const ROUTING: [&str; 4] = ["type", "target", "source", "payload"];

#[derive(Debug, Clone)]
enum Member {
    Type,
    Source,
    Target,
    Payload,
    Extra(usize),
}

/// A well-formed `relay` datagram from `source` to `target`.
#[derive(Debug, Clone)]
struct RelayCase {
    source: String,
    target: String,
    payload: Value,
    extras: Vec<(String, Value)>,
    order: Vec<Member>,
    /// `None`: compact; otherwise the seed of random whitespace and escaping.
    style: Option<u64>,
}

fn relay_case() -> impl Strategy<Value = RelayCase> {
    let extras = prop::collection::btree_map(arb_string(), arb_value(), 0..3).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !ROUTING.contains(&k.as_str()))
            .collect::<Vec<_>>()
    });
    (
        (arb_name(), arb_name()).prop_filter("distinct peers", |(a, b)| a != b),
        arb_value(),
        extras,
        prop_oneof![1 => Just(None), 3 => any::<u64>().prop_map(Some)],
    )
        .prop_flat_map(|((source, target), payload, extras, style)| {
            let mut order = vec![
                Member::Type,
                Member::Source,
                Member::Target,
                Member::Payload,
            ];
            order.extend((0..extras.len()).map(Member::Extra));
            let case = RelayCase {
                source,
                target,
                payload,
                extras,
                order: Vec::new(),
                style,
            };
            (Just(case), Just(order).prop_shuffle())
        })
        .prop_map(|(mut case, order)| {
            case.order = order;
            case
        })
}

impl RelayCase {
    /// The datagram and the byte range of its payload value.
    fn datagram(&self) -> (Vec<u8>, Range<usize>) {
        let mut w = Writer::new(self.style);
        let mut span = 0..0;
        w.ws();
        w.raw("{");
        w.ws();
        for (i, m) in self.order.iter().enumerate() {
            if i > 0 {
                w.ws();
                w.raw(",");
                w.ws();
            }
            let str_value = |s: &str| Value::String(s.to_owned());
            match m {
                Member::Type => {
                    w.member("type", &str_value("relay"));
                }
                Member::Source => {
                    w.member("source", &str_value(&self.source));
                }
                Member::Target => {
                    w.member("target", &str_value(&self.target));
                }
                Member::Payload => span = w.member("payload", &self.payload),
                Member::Extra(j) => {
                    w.member(&self.extras[*j].0, &self.extras[*j].1);
                }
            }
        }
        w.ws();
        w.raw("}");
        w.ws();
        (w.out.into_bytes(), span)
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Byte-for-byte forwarding.

const PREFIX: &[u8] = br#"{"type":"relayed_packet","from_peer":"#;
const BEFORE_PAYLOAD: &[u8] = br#","via_relay":true,"payload":"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: RngSeed::Fixed(SEED), ..ProptestConfig::default() })]

    #[test]
    fn relay_forwards_any_payload_byte_for_byte(case in relay_case()) {
        let (d, span) = case.datagram();
        let text = String::from_utf8(d.clone()).unwrap();
        let sent_payload = &d[span.clone()];

        // The datagram is what it claims to be (a check of the generator itself).
        let sent: Value = serde_json::from_slice(&d).unwrap();
        prop_assert_eq!(&sent["payload"], &case.payload, "datagram: {}", text);
        prop_assert_eq!(&sent["source"], &case.source.as_str());

        // The scanner finds exactly the span that was written.
        let h = scan::scan(&d).unwrap_or_else(|e| panic!("{e:?} on {text}"));
        prop_assert_eq!(h.payload.map(|p| p.start..p.end), Some(span.clone()));

        let mut relay = with_peers(&case.source, &case.target);
        let sends = relay.run(&d, addr(1), 1);
        prop_assert_eq!(sends.len(), 1, "datagram: {}", text);
        let (to, fwd) = &sends[0];
        prop_assert_eq!(*to, addr(2));

        // {"type":"relayed_packet","from_peer":<name>,"via_relay":true,"payload":<span>}
        let mut tail = BEFORE_PAYLOAD.to_vec();
        tail.extend_from_slice(sent_payload);
        tail.push(b'}');
        prop_assert!(fwd.starts_with(PREFIX), "{}", String::from_utf8_lossy(fwd));
        prop_assert!(fwd.ends_with(&tail), "{}", String::from_utf8_lossy(fwd));
        let from_peer = &fwd[PREFIX.len()..fwd.len() - tail.len()];
        prop_assert_eq!(serde_json::from_slice::<String>(from_peer).ok(), Some(case.source.clone()));

        let v: Value = serde_json::from_slice(fwd).expect("relayed_packet is JSON");
        prop_assert_eq!(v.as_object().map(Map::len), Some(4));
        prop_assert_eq!(&v["type"], "relayed_packet");
        prop_assert_eq!(&v["from_peer"], case.source.as_str());
        prop_assert_eq!(&v["via_relay"], true);
        prop_assert_eq!(&v["payload"], &case.payload);
        prop_assert_eq!(relay.shared.metrics.block(0).forwarded.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) The reference: serde_json plus the protocol's rules, independent of the scanner's code.

/// What the scanner reports, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    ty: String,
    target: Option<String>,
    source: Option<String>,
    payload: bool,
}

/// A top-level object key: routing field or not. Read as bytes so that a member name holding a
/// lone surrogate escape (well-formed per RFC 8259, not valid Unicode) is accepted, as the
/// grammar says; it cannot equal a routing field's name.
enum Key {
    Type,
    Target,
    Source,
    Payload,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key, E> {
                Ok(match v {
                    b"type" => Key::Type,
                    b"target" => Key::Target,
                    b"source" => Key::Source,
                    b"payload" => Key::Payload,
                    _ => Key::Other,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                self.visit_bytes(v.as_bytes())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The top-level object: `type` required; `type`, `target`, `source` strings (valid Unicode:
/// the router compares them with names) and never repeated; `payload` any value, never repeated;
/// any other member any value, repeats allowed. Values are validated with `IgnoredAny`, which
/// checks the RFC 8259 grammar without building anything (and without a depth limit: depth is
/// checked separately).
struct Top(Option<Fields>);

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Top, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Top, A::Error> {
                let (mut ty, mut target, mut source, mut payload) = (None, None, None, false);
                while let Some(key) = m.next_key::<Key>()? {
                    let slot = match key {
                        Key::Type => &mut ty,
                        Key::Target => &mut target,
                        Key::Source => &mut source,
                        Key::Payload => {
                            m.next_value::<IgnoredAny>()?;
                            if std::mem::replace(&mut payload, true) {
                                return Err(de::Error::custom("duplicate payload"));
                            }
                            continue;
                        }
                        Key::Other => {
                            m.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let s: String = m.next_value()?;
                    if slot.replace(s).is_some() {
                        return Err(de::Error::custom("duplicate routing field"));
                    }
                }
                Ok(Top(ty.map(|ty| Fields {
                    ty,
                    target,
                    source,
                    payload,
                })))
            }
        }
        d.deserialize_map(V)
    }
}

/// Nesting depth of a well-formed JSON text (the top-level object counts 1).
fn max_depth(d: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in d {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The reference verdict per PROTOCOL.md (RFC 8259 JSON, UTF-8, routing-field rules, depth).
fn reference(d: &[u8]) -> Option<Fields> {
    let text = std::str::from_utf8(d).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = Top::deserialize(&mut de).ok()?;
    de.end().ok()?;
    // Member names are read as bytes (to let lone surrogates through), which serde_json does
    // not check for control characters: the whole text is checked as well.
    if max_depth(d) > MAX_DEPTH || !well_formed(d) {
        return None;
    }
    top.0
}

/// The scanner's verdict, as the router takes it: UTF-8 first, then the scan.
fn scanned(d: &[u8]) -> Option<Fields> {
    // Never panics, even on bytes the router would not hand it.
    let result = scan::scan(d);
    std::str::from_utf8(d).ok()?;
    let h = result.ok()?;
    let decode = |s: scan::RawStr| {
        let mut tmp = vec![0u8; d.len()];
        scan::text(d, s, &mut tmp)
            .expect("an accepted routing field decodes")
            .to_owned()
    };
    Some(Fields {
        ty: decode(h.ty),
        target: h.target.map(decode),
        source: h.source.map(decode),
        payload: h.payload.is_some(),
    })
}

/// RFC 8259 well-formedness, with the relay's depth limit.
fn well_formed(d: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(d) else {
        return false;
    };
    let mut de = serde_json::Deserializer::from_str(text);
    IgnoredAny::deserialize(&mut de).is_ok() && de.end().is_ok() && max_depth(d) <= MAX_DEPTH
}

#[test]
fn reference_agrees_with_known_cases() {
    let ok = |s: &str| reference(s.as_bytes()).is_some();
    assert!(ok(
        r#" {"type":"relay","payload":[1,-0,1E+400,0.5e-3,{"a":"\ud800"}]} "#
    ));
    assert!(ok(r#"{"type":"a","x":1,"x":2,"\ud800":3}"#));
    assert!(ok(r#"{"\u0074ype":"a","target":"\ud83d\ude00"}"#));
    for bad in [
        "",
        "[]",
        r#"{"type":"a"} x"#,
        r#"{"type":"a",}"#,
        r#"{"type":"a","p":01}"#,
        r#"{"type":"a","p":1.}"#,
        r#"{"type":"a","p":.5}"#,
        r#"{"type":"a","p":+1}"#,
        r#"{"type":"a","p":NaN}"#,
        r#"{"type":"a","p":"\x"}"#,
        "{\"type\":\"a\u{1}\"}",
        "{\"\u{14}arget\":\"a\",\"type\":\"a\"}",
        "\u{FEFF}{\"type\":\"a\"}",
        r#"{"type":1}"#,
        r#"{"type":"a","source":null}"#,
        r#"{"type":"\ud800"}"#,
        r#"{"type":"a","target":"\udc00\ud800"}"#,
        r#"{"payload":1}"#,
        r#"{"type":"a","type":"a"}"#,
        r#"{"type":"a","\u0074ype":"a"}"#,
        r#"{"type":"a","payload":1,"payload":1}"#,
    ] {
        assert!(!ok(bad), "{bad}");
    }
    let deep = |n: usize| format!(r#"{{"type":"a","p":{}{}}}"#, "[".repeat(n), "]".repeat(n));
    assert!(ok(&deep(MAX_DEPTH - 1)));
    assert!(!ok(&deep(MAX_DEPTH)));
}

/// RFC 8259 (section 7 grammar; section 8.2 only warns that such names behave unpredictably)
/// allows `"\ud800"` as a member name, and PROTOCOL.md refuses only payloads that are not
/// well-formed JSON: the scanner accepts one at any depth, and at the top level it is simply not
/// a routing field.
#[test]
fn lone_surrogate_in_member_name_is_well_formed() {
    for d in [
        r#"{"type":"relay","payload":{"\ud800":1}}"#,
        r#"{"type":"relay","\udc00":1}"#,
    ] {
        assert!(reference(d.as_bytes()).is_some(), "{d}");
        assert!(scan::scan(d.as_bytes()).is_ok(), "{d}");
    }
}

#[test]
fn scanner_lone_surrogate_policy() {
    // Accepted in string values (payload or unknown fields), as the grammar says.
    for d in [
        r#"{"type":"relay","payload":"\ud800"}"#,
        r#"{"type":"relay","payload":["\udfff\ud800"]}"#,
        r#"{"type":"relay","x":{"k":"\ud83d"}}"#,
    ] {
        assert!(scan::scan(d.as_bytes()).is_ok(), "{d}");
        assert!(reference(d.as_bytes()).is_some(), "{d}");
    }
    // Refused in routing fields (by protocol: they are compared with names).
    for d in [
        r#"{"type":"relay","source":"\ud800"}"#,
        r#"{"type":"relay","target":"a\ud83d\u0041"}"#,
    ] {
        assert_eq!(scan::scan(d.as_bytes()), Err(ScanError::Syntax), "{d}");
        assert!(reference(d.as_bytes()).is_none(), "{d}");
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte.
    Flip(Index, u8),
    /// Replace a byte with a JSON-significant one.
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    Append(Vec<u8>),
    Prepend(Vec<u8>),
    /// Copy `len` bytes from the first index and insert them at the second.
    Duplicate(Index, usize, Index),
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(
            b"{}[]\":,\\/u0123456789abcdefABCDEF.eE+-tnrl \t\r\n".to_vec()
        ),
        1 => prop::sample::select(vec![0x00, 0x08, 0x1f, 0x7f, 0x80, 0xc3, 0xa9, 0xed, 0xa0, 0xff]),
        1 => any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (
            any::<Index>(),
            prop::collection::vec(interesting_byte(), 1..4)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1..8usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec(interesting_byte(), 1..3).prop_map(Mutation::Append),
        prop::collection::vec(interesting_byte(), 1..3).prop_map(Mutation::Prepend),
        (any::<Index>(), 1..24usize, any::<Index>())
            .prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
    ]
}

fn apply(mut d: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = d.len();
        let at = |i: &Index| if n == 0 { 0 } else { i.index(n) };
        let at_or_end = |i: &Index| i.index(n + 1);
        match m {
            Mutation::Flip(i, x) if n > 0 => d[at(i)] ^= x,
            Mutation::Set(i, b) if n > 0 => d[at(i)] = *b,
            Mutation::Insert(i, b) => {
                let p = at_or_end(i);
                d.splice(p..p, b.iter().copied());
            }
            Mutation::Delete(i, k) if n > 0 => {
                let p = at(i);
                d.drain(p..(p + k).min(n));
            }
            Mutation::Truncate(i) => d.truncate(at_or_end(i)),
            Mutation::Append(b) => d.extend_from_slice(b),
            Mutation::Prepend(b) => {
                d.splice(0..0, b.iter().copied());
            }
            Mutation::Duplicate(a, k, b) if n > 0 => {
                let p = at(a);
                let span = d[p..(p + k).min(n)].to_vec();
                let q = at_or_end(b);
                d.splice(q..q, span);
            }
            _ => {}
        }
    }
    d
}

/// Values (well-formed or not) spliced into a valid datagram: numbers, literals, strings with
/// odd escapes, containers with misplaced punctuation.
const TOKENS: &[&str] = &[
    // Numbers.
    "0",
    "-0",
    "1E+400",
    "-1e-400",
    "0.000",
    "1.0E+2",
    "123456789012345678901234567890",
    "-0.0e-0",
    "01",
    "-",
    "1.",
    ".5",
    "1e",
    "1e+",
    "+1",
    "0x10",
    "NaN",
    "-Infinity",
    "1_0",
    "--1",
    "-01",
    "1.e5",
    "0e",
    "2E-",
    "1e5.0",
    "1 2",
    // Literals.
    "true",
    "false",
    "null",
    "tru",
    "nul",
    "True",
    "NULL",
    "falsey",
    "nulll",
    // Strings.
    r#""""#,
    r#""\u004g""#,
    r#""\u12""#,
    r#""\u00e9\u00E9""#,
    r#""\ud800""#,
    r#""\udc00x""#,
    r#""\x""#,
    r#""\'""#,
    r#""\U0041""#,
    r#""\u+123""#,
    r#""\u 123""#,
    r#""\/\b\f\n\r\t""#,
    "\"a\tb\"",
    "\"\u{7f}\u{80}\u{10FFFF}\"",
    r#""\""#,
    r#""\\""#,
    r#""a"#,
    r#"'a'"#,
    // Containers.
    "[]",
    "{}",
    "[ ]",
    "{ }",
    "[,]",
    "[1,]",
    "[,1]",
    "[1,,2]",
    "[1 2]",
    r#"{"a":1,}"#,
    r#"{"a"}"#,
    r#"{"a":}"#,
    r#"{1:2}"#,
    r#"{"a":1 "b":2}"#,
    r#"{"a" 1}"#,
    r#"{"a"::1}"#,
    r#"{"a":1]"#,
    "[1}",
    "[[]",
    "[]]",
    r#"{"a":{}"#,
    r#"{,"a":1}"#,
    r#"{"a":1,"a":2}"#,
    r#"{"\ud800":1}"#,
    r#"[{"type":1,"payload":[]}]"#,
];

/// Starting points for mutation: well-formed relay datagrams, datagrams with missing, repeated or
/// mistyped routing fields, odd numbers, and nesting at the depth limit.
fn base_doc() -> impl Strategy<Value = Vec<u8>> {
    let routing_value = prop_oneof![
        6 => arb_name().prop_map(Value::String),
        1 => arb_value(),
    ];
    let member = prop_oneof![
        3 => (Just("type".to_owned()), prop_oneof![3 => Just(Value::from("relay")), 1 => routing_value.clone()]),
        2 => (Just("target".to_owned()), routing_value.clone()),
        2 => (Just("source".to_owned()), routing_value),
        2 => (Just("payload".to_owned()), arb_value()),
        1 => (arb_string(), arb_value()),
    ];
    let loose = (prop::collection::vec(member, 0..7), any::<u64>()).prop_map(|(ms, seed)| {
        let mut w = Writer::new(Some(seed));
        w.raw("{");
        for (i, (k, v)) in ms.iter().enumerate() {
            if i > 0 {
                w.raw(",");
            }
            w.ws();
            w.member(k, v);
        }
        w.raw("}");
        w.out.into_bytes()
    });
    let tokens = (prop::sample::select(TOKENS), relay_case()).prop_map(|(num, case)| {
        let (d, span) = case.datagram();
        let mut d = d;
        d.splice(span.start..span.start, format!("[{num},").into_bytes());
        let end = span.end + num.len() + 2;
        d.insert(end, b']');
        d
    });
    let deep = (
        MAX_DEPTH - 3..=MAX_DEPTH + 1,
        prop::collection::vec(any::<bool>(), MAX_DEPTH + 1),
    )
        .prop_map(|(n, objs)| {
            let mut s = String::from(r#"{"type":"relay","source":"A","target":"B","payload":"#);
            for &o in &objs[..n] {
                s.push_str(if o { r#"{"k":"# } else { "[" });
            }
            s.push('1');
            for &o in objs[..n].iter().rev() {
                s.push(if o { '}' } else { ']' });
            }
            s.push('}');
            s.into_bytes()
        });
    prop_oneof![
        2 => relay_case().prop_map(|c| c.datagram().0),
        2 => relay_case().prop_map(|mut c| {
            c.source = "A".to_owned();
            c.target = "B".to_owned();
            c.datagram().0
        }),
        3 => loose,
        2 => tokens,
        1 => deep,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, rng_seed: RngSeed::Fixed(SEED), ..ProptestConfig::default() })]

    #[test]
    fn scanner_accepts_exactly_what_the_reference_accepts(
        d in (base_doc(), prop::collection::vec(mutation(), 0..4))
            .prop_map(|(d, ms)| apply(d, &ms)),
    ) {
        let got = scanned(&d);
        let want = reference(&d);
        prop_assert_eq!(got, want, "datagram: {:?}", String::from_utf8_lossy(&d));

        // Whatever the router makes of it, everything it sends is well-formed JSON.
        let mut relay = with_peers("A", "B");
        for (to, bytes) in relay.run(&d, addr(1), 1) {
            prop_assert!(
                well_formed(&bytes),
                "to {}: {:?} for {:?}",
                to,
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&d)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Deep nesting.

/// Runs `f` on a thread with a small stack: a recursive descent over the inputs below would need
/// far more than this.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

const MILLION: usize = 1_000_000;

#[test]
fn a_million_open_brackets_are_refused_without_recursion() {
    on_small_stack(|| {
        let head = r#"{"type":"relay","source":"A","target":"B","payload":"#;
        let cases: Vec<(Vec<u8>, ScanError)> = vec![
            (
                format!("{head}{}", "[".repeat(MILLION)).into_bytes(),
                ScanError::TooDeep,
            ),
            (
                format!("{head}{}1{}}}", "[".repeat(MILLION), "]".repeat(MILLION)).into_bytes(),
                ScanError::TooDeep,
            ),
            (
                format!("{head}{}", r#"{"k":"#.repeat(MILLION)).into_bytes(),
                ScanError::TooDeep,
            ),
            (
                format!(r#"{{"x":{},"type":"relay"}}"#, "[{\"a\":".repeat(MILLION)).into_bytes(),
                ScanError::TooDeep,
            ),
            // Not an object at the top: refused before any nesting is followed.
            ("[".repeat(MILLION).into_bytes(), ScanError::Syntax),
            ("{".repeat(MILLION).into_bytes(), ScanError::Syntax),
        ];
        for (d, err) in cases {
            assert_eq!(
                scan::scan(&d),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(&d[..80])
            );
        }
    });
}

#[test]
fn depth_limit_is_exact_for_arrays_objects_and_mixtures() {
    let doc = |n: usize, open: &str, close: &str| {
        format!(
            r#"{{"type":"relay","payload":{}null{}}}"#,
            open.repeat(n),
            close.repeat(n)
        )
    };
    for (open, close, per) in [("[", "]", 1), (r#"{"k":"#, "}", 1), (r#"[{"k":"#, "}]", 2)] {
        let fits = (MAX_DEPTH - 1) / per;
        let ok = doc(fits, open, close);
        assert!(scan::scan(ok.as_bytes()).is_ok(), "{ok}");
        assert!(reference(ok.as_bytes()).is_some(), "{ok}");
        let over = doc(MAX_DEPTH / per + 1, open, close);
        assert_eq!(scan::scan(over.as_bytes()), Err(ScanError::TooDeep));
        assert!(reference(over.as_bytes()).is_none());
    }
}

#[test]
fn router_refuses_deep_nesting_as_too_deep() {
    on_small_stack(|| {
        let settings = Settings {
            max_datagram: 4 * MILLION,
            ..Settings::default()
        };
        let mut relay = Relay::new(settings);
        for name in ["A", "B"] {
            let from = if name == "A" { addr(1) } else { addr(2) };
            let reg = format!(r#"{{"type":"register","name":"{name}"}}"#);
            assert!(!relay.run(reg.as_bytes(), from, 0).is_empty());
        }
        let deep = format!(
            r#"{{"type":"relay","source":"A","target":"B","payload":{}{}}}"#,
            "[".repeat(MILLION),
            "]".repeat(MILLION)
        );
        let sends = relay.run(deep.as_bytes(), addr(1), 1);
        assert!(
            sends.iter().all(|(to, _)| *to == addr(1)),
            "nothing forwarded"
        );
        assert_eq!(relay.shared.metrics.refused(Reason::TooDeep), 1);

        // Within the default datagram size limit too.
        let mut relay = with_peers("A", "B");
        let deep = format!(
            r#"{{"type":"relay","source":"A","target":"B","payload":{}}}"#,
            "[".repeat(60_000)
        );
        let sends = relay.run(deep.as_bytes(), addr(1), 1);
        assert!(
            sends.iter().all(|(to, _)| *to == addr(1)),
            "nothing forwarded"
        );
        assert_eq!(relay.shared.metrics.refused(Reason::TooDeep), 1);
    });
}
