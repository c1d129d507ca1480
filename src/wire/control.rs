//! Control messages (everything but `relay`), parsed with simd-json into typed structs.
//!
//! Each struct ignores unknown fields, `type` included: the scanner has already read it.

use serde::Deserialize;

/// `register`: claim a name at the source address.
#[derive(Debug, Deserialize)]
pub struct Register {
    /// The name to claim.
    pub name: String,
    /// The token of an earlier registration, proving a moved peer is the same one.
    pub session: Option<String>,
}

/// `keepalive`: mark a name live (registering it if unknown).
pub type Keepalive = Register;

/// `ping`: ask for `pong`.
#[derive(Debug, Deserialize)]
pub struct Ping {
    /// The sender's name, if it says.
    pub name: Option<String>,
}

/// `watch`: subscribe to presence of names.
#[derive(Debug, Deserialize)]
pub struct Watch {
    /// Names to watch.
    pub names: Vec<String>,
    /// Which of the sender's names watches, when several share its address.
    pub name: Option<String>,
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
    /// The registration's token, when sent from another address.
    pub session: Option<String>,
}

/// `connect`: ask for an introduction to `target`.
#[derive(Debug, Deserialize)]
pub struct Connect {
    /// The peer to be introduced to.
    pub target: String,
    /// Which of the sender's names asks, when several share its address.
    pub name: Option<String>,
}

/// Parses a control message from a scratch copy of the datagram (simd-json parses in place).
pub fn parse<'de, T: Deserialize<'de>>(scratch: &'de mut [u8]) -> Option<T> {
    simd_json::serde::from_slice(scratch).ok()
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

    #[test]
    fn refuses_wrong_types_and_duplicates() {
        let mut d = br#"{"type":"register","name":5}"#.to_vec();
        assert!(parse::<Register>(&mut d).is_none());
        let mut d = br#"{"type":"register","name":"a","name":"b"}"#.to_vec();
        assert!(parse::<Register>(&mut d).is_none());
        let mut d = br#"{"type":"watch","names":["a",1]}"#.to_vec();
        assert!(parse::<Watch>(&mut d).is_none());
    }
}
