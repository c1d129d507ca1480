//! Control messages (everything but `relay`), parsed with simd-json into typed structs.
//!
//! Each struct ignores unknown fields, `type` included: the scanner has already read it.

use serde::Deserialize;
use simd_json::ErrorType;

/// `register`: claim a name at the source address.
#[derive(Debug, Deserialize)]
pub struct Register {
    /// The name to claim.
    pub name: String,
    /// The token of an earlier registration, proving a moved peer is the same one.
    pub session: Option<String>,
    /// Signed registration (Part 5): the peer's Ed25519 public key, base64.
    pub pubkey: Option<String>,
    /// The relay's challenge cookie, echoed.
    pub cookie: Option<String>,
    /// The signature over the name and cookie, base64.
    pub sig: Option<String>,
}

/// `keepalive`: mark a name live (registering it if unknown).
pub type Keepalive = Register;

/// `ping`: ask for `pong`.
#[derive(Debug, Deserialize)]
pub struct Ping {
    /// The sender's name, if it says (a `ping` naming it keeps it live).
    pub name: Option<String>,
    /// That name's session, which makes the request authenticated.
    pub session: Option<String>,
}

/// `watch` or `unwatch`: subscribe to, or stop hearing of, the presence of names.
#[derive(Debug, Deserialize)]
pub struct Watch {
    /// Names to watch or stop watching.
    pub names: Vec<String>,
    /// Which of the sender's names watches, when several share its address.
    pub name: Option<String>,
    /// That name's session: required.
    pub session: Option<String>,
}

/// `lookup`: is a name online?
#[derive(Debug, Deserialize)]
pub struct Lookup {
    /// The name asked about.
    pub name: String,
}

/// `unregister`: give up a name.
#[derive(Debug, Deserialize)]
pub struct Unregister {
    /// The name to give up.
    pub name: String,
    /// The registration's session: required.
    pub session: Option<String>,
}

/// `connect`: ask for an introduction to `target`.
#[derive(Debug, Deserialize)]
pub struct Connect {
    /// The peer to be introduced to.
    pub target: String,
    /// Which of the sender's names asks, when several share its address.
    pub name: Option<String>,
    /// That name's session: required.
    pub session: Option<String>,
}

/// `bind`: ask for a channel to `target` (Part 4).
#[derive(Debug, Deserialize)]
pub struct Bind {
    /// The peer at the other end.
    pub target: String,
    /// Which of the sender's names binds, when several share its address.
    pub name: Option<String>,
    /// That name's session: required.
    pub session: Option<String>,
}

/// `unbind`: end a channel (Part 4).
#[derive(Debug, Deserialize)]
pub struct Unbind {
    /// The sender's number of the channel.
    pub channel: u32,
    /// Which of the sender's names holds it, when several share its address.
    pub name: Option<String>,
    /// That name's session: required.
    pub session: Option<String>,
}

/// Why a control message does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A field the message needs is missing.
    MissingField,
    /// A field is given twice.
    Duplicate,
    /// A field is of the wrong JSON type.
    WrongType,
    /// Anything else.
    Malformed,
}

/// Parses a control message from a scratch copy of the datagram (simd-json parses in place);
/// an error says why, so that the refusal is counted under the right reason.
pub fn parse<'de, T: Deserialize<'de>>(scratch: &'de mut [u8]) -> Result<T, ParseError> {
    simd_json::serde::from_slice(scratch).map_err(|e| why(e.error()))
}

/// Why simd-json refused. serde reports missing and duplicate fields as messages, whose
/// wording is stable across serde releases (the tests below pin it).
fn why(e: &ErrorType) -> ParseError {
    match e {
        ErrorType::Serde(m) if m.starts_with("missing field") => ParseError::MissingField,
        ErrorType::Serde(m) if m.starts_with("duplicate field") => ParseError::Duplicate,
        ErrorType::Serde(m) if m.starts_with("invalid type") => ParseError::WrongType,
        ErrorType::ExpectedString
        | ErrorType::ExpectedArray
        | ErrorType::ExpectedMap
        | ErrorType::ExpectedBoolean
        | ErrorType::ExpectedNull
        | ErrorType::ExpectedSigned
        | ErrorType::ExpectedUnsigned
        | ErrorType::ExpectedFloat
        | ErrorType::ExpectedInteger
        | ErrorType::ExpectedNumber => ParseError::WrongType,
        _ => ParseError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_ignores_unknown_fields() {
        let mut d = br#"{"type":"register","name":"Al\u00efce","extra":[1,{"a":2}]}"#.to_vec();
        let r: Register = parse(&mut d).unwrap();
        assert_eq!(r.name, "Alïce");
        assert!(r.session.is_none());
    }

    fn refusal<'de, T: Deserialize<'de> + std::fmt::Debug>(d: &'de mut [u8]) -> ParseError {
        parse::<T>(d).unwrap_err()
    }

    #[test]
    fn refusals_name_their_reason() {
        let r = |d: &[u8]| refusal::<Register>(&mut d.to_vec());
        assert_eq!(r(br#"{"type":"register","name":5}"#), ParseError::WrongType);
        assert_eq!(
            r(br#"{"type":"register","name":"a","session":[]}"#),
            ParseError::WrongType
        );
        assert_eq!(
            r(br#"{"type":"register","name":"a","name":"b"}"#),
            ParseError::Duplicate
        );
        assert_eq!(r(br#"{"type":"register"}"#), ParseError::MissingField);
        let mut d = br#"{"type":"watch","names":["a",1]}"#.to_vec();
        assert_eq!(refusal::<Watch>(&mut d), ParseError::WrongType);
    }
}
