//! The udp-relay wire format, both directions and nothing else (no I/O, no state): the datagram
//! families and their demultiplexer, the JSON header scanner, what the relay writes (`reply`) and
//! a peer's readers of it (`read`), what a peer writes (`peer`), the channel frame and STUN
//! Binding. The relay, `loadtest` and any peer client share it.

pub mod frame;
pub mod mesh;
pub mod peer;
pub mod read;
pub mod reply;
pub mod scan;
pub mod stun;

/// Longest name, in bytes of UTF-8.
pub const MAX_NAME: usize = 64;

/// Which of the protocol's datagram families a datagram belongs to, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A JSON message (Parts 1 and 2).
    Json,
    /// A STUN Binding request (Part 3).
    Stun,
    /// A channel data frame (Part 4).
    Channel,
    /// None of the above.
    Unknown,
}

/// The STUN magic cookie, at bytes 4..8 of every RFC 5389/8489 message.
const STUN_COOKIE: [u8; 4] = stun::COOKIE.to_be_bytes();

/// Tells the datagram families apart without reading past the first bytes (the demultiplexer).
pub fn classify(d: &[u8]) -> Family {
    match d.first() {
        Some(0x00 | 0x01) if d.len() >= 20 && d[4..8] == STUN_COOKIE => Family::Stun,
        Some(&frame::MARK) => Family::Channel,
        Some(_) => {
            let first = d
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
            if first == Some(&b'{') {
                Family::Json
            } else {
                Family::Unknown
            }
        }
        None => Family::Unknown,
    }
}

/// Whether `name` is a valid peer name: 1–64 bytes of UTF-8 with no control characters.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_families() {
        assert_eq!(classify(b"{}"), Family::Json);
        assert_eq!(classify(b" \r\n\t{"), Family::Json);
        assert_eq!(classify(b""), Family::Unknown);
        assert_eq!(classify(b"   "), Family::Unknown);
        assert_eq!(classify(b"[1]"), Family::Unknown);
        let mut stun = [0u8; 20];
        stun[1] = 1;
        stun[4..8].copy_from_slice(&STUN_COOKIE);
        assert_eq!(classify(&stun), Family::Stun);
        assert_eq!(classify(&stun[..19]), Family::Unknown);
        assert_eq!(classify(&[0xD1, 0, 0, 0, 0, 1]), Family::Channel);
    }

    #[test]
    fn name_rules() {
        assert!(valid_name("Alice"));
        assert!(valid_name("zoë 🙂"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(!valid_name(&"x".repeat(65)));
        assert!(!valid_name(""));
        assert!(!valid_name("a\nb"));
        assert!(!valid_name("a\u{7f}"));
        assert!(!valid_name("a\u{85}"));
    }
}
