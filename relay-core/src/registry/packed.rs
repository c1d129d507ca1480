//! Addresses packed small, and an address's names kept inline: a million peers pay per byte.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::Name;

/// A socket address in 18 bytes (IPv4 as IPv4-mapped IPv6). IPv6 flow labels and scope ids are
/// not kept: peers reach the relay at global addresses, where the relay sets neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Packed {
    ip: [u8; 16],
    port: [u8; 2],
}

impl From<SocketAddr> for Packed {
    fn from(a: SocketAddr) -> Packed {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Packed {
            ip: ip.octets(),
            port: a.port().to_be_bytes(),
        }
    }
}

impl Packed {
    pub(super) fn get(self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        SocketAddr::new(ip, u16::from_be_bytes(self.port))
    }
}

/// The names registered at one address, oldest first. Nearly every address holds one, kept
/// inline; more are kept in a list of their own, behind a thin pointer so that this is as small
/// as a name (16 bytes: the list's variant takes one of the name's spare length values).
#[derive(Debug)]
pub(super) enum AtAddr {
    One(Name),
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer: with a Vec's three words inline, an address's bucket is 48 bytes, not 40"
    )]
    Many(Box<Vec<Name>>),
}

impl AtAddr {
    pub(super) fn names(&self) -> &[Name] {
        match self {
            AtAddr::One(n) => std::slice::from_ref(n),
            AtAddr::Many(ns) => ns,
        }
    }

    pub(super) fn push(&mut self, n: Name) {
        match self {
            AtAddr::One(first) => *self = AtAddr::Many(Box::new(vec![first.clone(), n])),
            // Grown one at a time: an address holds at most --max-names-per-address names, and
            // a list's spare room would be paid for at every address that holds several.
            AtAddr::Many(ns) => {
                ns.reserve_exact(1);
                ns.push(n);
            }
        }
    }

    /// Removes `n`; whether any name is left.
    pub(super) fn remove(&mut self, n: &Name) -> bool {
        match self {
            AtAddr::One(only) => only != n,
            AtAddr::Many(ns) => {
                ns.retain(|x| x != n);
                match &ns[..] {
                    [] => false,
                    [only] => {
                        *self = AtAddr::One(only.clone());
                        true
                    }
                    _ => true,
                }
            }
        }
    }
}
