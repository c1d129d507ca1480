//! The datagrams the virtual peers send, written with the relay's own wire crate (`relay-wire`),
//! and the stamps of the load they read back. Replies are read with `relay_wire::read`.
//!
//! A datagram's payload carries `lt <seq> <send time> <padding>` with fixed-width hex numbers:
//! inside a JSON string for a `relay`, as the frame's payload for a channel, so a template is
//! built once per flow and each send only rewrites 32 digits.

use std::net::SocketAddr;

use relay_wire::{frame, peer};

use crate::turn;

const MARK: &[u8] = b"\"payload\":\"lt ";
/// Bytes of the payload before the padding: `lt ` + 16 hex + ` ` + 16 hex + ` `.
pub const MIN_PAYLOAD: usize = 3 + 16 + 1 + 16 + 1;

/// A reusable datagram of one flow whose payload is `size` bytes.
pub struct Template {
    /// The datagram.
    pub bytes: Vec<u8>,
    seq_at: usize,
}

/// The stamped payload: `lt `, two zeroed numbers, padding to `size`.
fn stamped(size: usize) -> Vec<u8> {
    let mut p = b"lt ".to_vec();
    p.extend_from_slice(&[b'0'; 16]);
    p.push(b' ');
    p.extend_from_slice(&[b'0'; 16]);
    p.push(b' ');
    p.resize(size.max(MIN_PAYLOAD), b'x');
    p
}

impl Template {
    /// A `relay` from `source` to `target`; `size` is raised to [`MIN_PAYLOAD`] if smaller.
    pub fn new(source: &str, target: &str, size: usize) -> Template {
        let mut payload = vec![b'"'];
        payload.extend_from_slice(&stamped(size));
        payload.push(b'"');
        let mut bytes = Vec::new();
        peer::relay(&mut bytes, source, target, &payload);
        let seq_at = bytes
            .windows(MARK.len())
            .position(|w| w == MARK)
            .expect("stamp")
            + MARK.len();
        Template { bytes, seq_at }
    }

    /// A channel frame under `channel`; `size` is raised to [`MIN_PAYLOAD`] if smaller.
    pub fn frame(channel: u32, size: usize) -> Template {
        let mut bytes = Vec::new();
        frame::write(&mut bytes, channel, &stamped(size));
        Template {
            bytes,
            seq_at: frame::HEADER + 3,
        }
    }

    /// A TURN ChannelData message on `channel`; `size` is raised to [`MIN_PAYLOAD`] if smaller.
    pub fn channel_data(channel: u16, size: usize) -> Template {
        let mut bytes = Vec::new();
        turn::channel_data(&mut bytes, channel, &stamped(size));
        Template {
            bytes,
            seq_at: turn::CHANNEL_HEADER + 3,
        }
    }

    /// Writes `seq` and the send time `ns` into the datagram.
    pub fn stamp(&mut self, seq: u64, ns: u64) {
        hex16(&mut self.bytes[self.seq_at..self.seq_at + 16], seq);
        hex16(&mut self.bytes[self.seq_at + 17..self.seq_at + 33], ns);
    }
}

fn hex16(dst: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, d) in dst.iter_mut().enumerate() {
        *d = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn unhex16(src: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(src.get(..16)?).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// The sequence number and send time carried by a relayed, framed (or echoed) datagram.
pub fn read_stamp(d: &[u8]) -> Option<(u64, u64)> {
    let (_, at) = stamp_at(d)?;
    let seq = unhex16(d.get(at..)?)?;
    let ns = unhex16(d.get(at + 17..)?)?;
    Some((seq, ns))
}

/// What a received datagram carries, read against the payload size sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A stamped payload, whole: its sequence number and send time.
    Intact {
        /// The flow's sequence number.
        seq: u64,
        /// The send time, ns since the run's start.
        ns: u64,
    },
    /// A stamp, but the payload around it is not what was sent (cut, grown or altered).
    Corrupt,
    /// No stamp: not load (a peer list, a keepalive).
    Other,
}

/// Reads datagram `d` whose stamped payload was sent `payload` bytes long: the stamp, then the
/// padding, whole, then the datagram's end (a frame) or the JSON string's closing quote.
pub fn check(d: &[u8], payload: usize) -> Received {
    let Some((kind, at)) = stamp_at(d) else {
        return Received::Other;
    };
    let Some((seq, ns)) = read_stamp(d) else {
        return Received::Corrupt;
    };
    let pad_start = at + 2 * 16 + 2;
    let pad_end = at - 3 + payload.max(MIN_PAYLOAD);
    let padded = d
        .get(pad_start..pad_end)
        .is_some_and(|p| p.iter().all(|&b| b == b'x'));
    let closed = match kind {
        Kind::Frame => d.len() == pad_end,
        // Its length field says the payload's, and a TURN server may pad the message to four
        // bytes (RFC 8656 §12.5).
        Kind::ChannelData => {
            usize::from(u16::from_be_bytes([d[2], d[3]])) == pad_end - turn::CHANNEL_HEADER
                && (d.len() == pad_end || d.len() == pad_end.next_multiple_of(4))
        }
        Kind::Json => d.get(pad_end) == Some(&b'"'),
    };
    if padded && closed {
        Received::Intact { seq, ns }
    } else {
        Received::Corrupt
    }
}

/// How a stamped payload is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A channel frame (Part 4).
    Frame,
    /// TURN ChannelData.
    ChannelData,
    /// A JSON string.
    Json,
}

/// How `d` carries a stamp and where its first digit is: after a frame's or ChannelData's
/// header and `lt `, or after the JSON mark.
fn stamp_at(d: &[u8]) -> Option<(Kind, usize)> {
    let after = |kind, header: usize| {
        (d.get(header..header + 3) == Some(b"lt ")).then_some((kind, header + 3))
    };
    match d.first()? {
        &frame::MARK => after(Kind::Frame, frame::HEADER),
        // Channel numbers begin 0x40..=0x7F, as `{` (0x7B) does: JSON has no `lt ` at offset 4.
        0x40..=0x7F if d.get(4..7) == Some(b"lt ") => {
            after(Kind::ChannelData, turn::CHANNEL_HEADER)
        }
        _ => Some((
            Kind::Json,
            d.windows(MARK.len()).position(|w| w == MARK)? + MARK.len(),
        )),
    }
}

/// A `register` message for `name`.
pub fn register(name: &str) -> Vec<u8> {
    let mut b = Vec::new();
    peer::register(&mut b, name, None);
    b
}

/// Parses `host:port`, naming the option on error.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips_and_has_the_asked_size() {
        let mut t = Template::new("a", "b", 100);
        t.stamp(0x1234, 0xdead_beef);
        let v: serde_json::Value = serde_json::from_slice(&t.bytes).unwrap();
        assert_eq!(v["payload"].as_str().unwrap().len(), 100);
        assert_eq!(read_stamp(&t.bytes), Some((0x1234, 0xdead_beef)));
        let relayed = format!(
            r#"{{"type":"relayed_packet","from_peer":"a","via_relay":true,"payload":{}}}"#,
            serde_json::to_string(&v["payload"]).unwrap()
        );
        assert_eq!(read_stamp(relayed.as_bytes()), Some((0x1234, 0xdead_beef)));
        let mut f = Template::frame(7, 100);
        f.stamp(9, 10);
        assert_eq!(f.bytes.len(), frame::HEADER + 100);
        assert_eq!(frame::channel(&f.bytes), Ok(7));
        assert_eq!(read_stamp(&f.bytes), Some((9, 10)));
    }

    #[test]
    fn a_payload_cut_grown_or_altered_is_corrupt() {
        let intact = Received::Intact { seq: 9, ns: 10 };
        let mut f = Template::frame(7, 100);
        f.stamp(9, 10);
        assert_eq!(check(&f.bytes, 100), intact);
        assert_eq!(check(&f.bytes[..f.bytes.len() - 1], 100), Received::Corrupt);
        let mut grown = f.bytes.clone();
        grown.push(b'x');
        assert_eq!(check(&grown, 100), Received::Corrupt);
        let mut altered = f.bytes.clone();
        altered[60] = b'y';
        assert_eq!(check(&altered, 100), Received::Corrupt);
        let mut digits = f.bytes.clone();
        digits[frame::HEADER + 5] = b'g';
        assert_eq!(check(&digits, 100), Received::Corrupt);
        let mut j = Template::new("a", "b", 1200);
        j.stamp(9, 10);
        assert_eq!(check(&j.bytes, 1200), intact);
        assert_eq!(check(&j.bytes, 1199), Received::Corrupt);
        let relayed = format!(
            r#"{{"type":"relayed_packet","from_peer":"a","payload":"lt {:016x} {:016x} {}"}}"#,
            9,
            10,
            "x".repeat(1200 - MIN_PAYLOAD)
        );
        assert_eq!(check(relayed.as_bytes(), 1200), intact);
        let mut c = Template::channel_data(turn::CHANNEL, 1200);
        c.stamp(9, 10);
        assert_eq!(c.bytes.len(), turn::CHANNEL_HEADER + 1200);
        assert_eq!(check(&c.bytes, 1200), intact);
        let mut odd = Template::channel_data(turn::CHANNEL, 101);
        odd.stamp(9, 10);
        let mut padded = odd.bytes.clone();
        padded.extend_from_slice(&[0; 3]);
        assert_eq!(check(&padded, 101), intact, "padded to four bytes");
        assert_eq!(
            check(&c.bytes[..c.bytes.len() - 1], 1200),
            Received::Corrupt
        );
        let mut long = c.bytes.clone();
        long[3] += 1;
        assert_eq!(
            check(&long, 1200),
            Received::Corrupt,
            "its length field grown"
        );
        assert_eq!(check(br#"{"type":"peer_list"}"#, 100), Received::Other);
        assert_eq!(
            check(&[frame::MARK, 0, 0, 0, 0, 1, b'z'], 100),
            Received::Other
        );
    }
}
