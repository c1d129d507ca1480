//! The datagrams the virtual peers send and the fields they read back.
//!
//! A relay message's payload is a JSON string `lt <seq> <send time> <padding>` with fixed-width
//! hex numbers, so a template is built once per flow and each send only rewrites 32 digits.

use std::net::SocketAddr;

const MARK: &[u8] = b"\"payload\":\"lt ";
/// Bytes of the payload string before the padding: `lt ` + 16 hex + ` ` + 16 hex + ` `.
pub const MIN_PAYLOAD: usize = 3 + 16 + 1 + 16 + 1;

/// A reusable relay datagram from `source` to `target` whose payload string is `size` bytes.
pub struct Template {
    /// The datagram.
    pub bytes: Vec<u8>,
    seq_at: usize,
}

impl Template {
    /// Builds the template; `size` is raised to [`MIN_PAYLOAD`] if smaller.
    pub fn new(source: &str, target: &str, size: usize) -> Template {
        let size = size.max(MIN_PAYLOAD);
        let head =
            format!(r#"{{"type":"relay","target":"{target}","source":"{source}","payload":"lt "#);
        let seq_at = head.len();
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&[b'0'; 16]);
        bytes.push(b' ');
        bytes.extend_from_slice(&[b'0'; 16]);
        bytes.push(b' ');
        bytes.resize(bytes.len() + size - MIN_PAYLOAD, b'x');
        bytes.extend_from_slice(b"\"}");
        Template { bytes, seq_at }
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

/// The sequence number and send time carried by a relayed (or echoed) datagram.
pub fn read_stamp(d: &[u8]) -> Option<(u64, u64)> {
    let at = d.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let seq = unhex16(&d[at..])?;
    let ns = unhex16(d.get(at + 17..)?)?;
    Some((seq, ns))
}

/// A `register` message for `name`.
pub fn register(name: &str) -> Vec<u8> {
    format!(r#"{{"type":"register","name":"{name}"}}"#).into_bytes()
}

/// The `type` and `peer_name` of a reply, if it is JSON.
pub fn reply_kind(d: &[u8]) -> Option<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_slice(d).ok()?;
    let ty = v.get("type")?.as_str()?.to_owned();
    let name = v
        .get("peer_name")
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    Some((ty, name))
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
    }
}
