//! The link's STUN client (RFC 8489 Binding, Part 3): requests to the relay and to a second
//! server, answers matched to the latest request to each, and the NAT's mapping type from the
//! two (RFC 5780's test, in short).

use std::net::SocketAddr;

use relay_wire::stun;

/// The NAT's mapping, from STUN to two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not measured: no second server configured, or no answer yet.
    Unknown,
    /// The same public address towards both servers: a cone NAT, or none.
    EndpointIndependent,
    /// A different public address per server: a symmetric NAT; hole punching mostly fails.
    EndpointDependent,
}

/// Requests outstanding, and what the second server said.
#[derive(Debug, Default)]
pub struct Stun {
    second: Option<SocketAddr>,
    public2: Option<SocketAddr>,
    /// The latest request to each server: its transaction id is all that tells the server's
    /// answer from a forged one, so it comes from the OS's random numbers (RFC 8489 wants it
    /// unguessable), not from the endpoint's seeded ones.
    transactions: Vec<([u8; 12], SocketAddr)>,
}

impl Stun {
    /// A Binding request to `server`, replacing any earlier one to it (whose answer is stale).
    pub fn request(&mut self, server: SocketAddr) -> Vec<u8> {
        let mut t = [0u8; 12];
        getrandom::getrandom(&mut t).expect("the OS's random numbers");
        self.transactions.retain(|(_, s)| *s != server);
        self.transactions.push((t, server));
        let mut d = Vec::new();
        stun::request(&mut d, &t, true);
        d
    }

    /// The second server, if one is configured.
    pub fn second(&self) -> Option<SocketAddr> {
        self.second
    }

    /// Sets the second server.
    pub fn set_second(&mut self, server: SocketAddr) {
        self.second = Some(server);
    }

    /// The address `d`, from `from`, maps us to, if it answers our latest request to `from`; an
    /// answer of the second server is kept for [`Stun::mapping`].
    pub fn answer(&mut self, from: SocketAddr, d: &[u8]) -> Option<SocketAddr> {
        let i = self
            .transactions
            .iter()
            .position(|(t, s)| *s == from && d.get(8..20) == Some(&t[..]))?;
        self.transactions.swap_remove(i);
        let mapped = stun::mapped_address(d)?;
        if Some(from) == self.second {
            self.public2 = Some(mapped);
        }
        Some(mapped)
    }

    /// The mapping type, given what the relay said (`public`).
    pub fn mapping(&self, public: Option<SocketAddr>) -> Mapping {
        match (public, self.public2) {
            (Some(a), Some(b)) if a == b => Mapping::EndpointIndependent,
            (Some(_), Some(_)) => Mapping::EndpointDependent,
            _ => Mapping::Unknown,
        }
    }
}
