//! The readers against their writers, against serde_json, and against every truncation and
//! byte flip of what the relay sends.

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
