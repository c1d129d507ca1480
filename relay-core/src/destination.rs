//! What kind of address a peer address is, and whether the relay may serve it: the one rule
//! that ingress (`Router::run`, before admission) and egress (`relay_udp::Headers::add`, which asks the
//! binary's `Served` of every send of both backends) apply.
//!
//! An address nothing can be sent to (unspecified, multicast, broadcast, port 0) is never a
//! peer: a datagram "from" it is forged, and a reply to `0.0.0.0` or `::` goes to the relay's
//! own host. Loopback is served only by a relay that itself listens there (the kernel delivers
//! loopback sources only from `lo`). Private and internal ranges are denied unless the operator
//! allows them (`--allowed-peer-ip`; `--denied-peer-ip` adds ranges), so that a forged
//! registration cannot carry an outsider's bytes into the relay's own networks; the range of the
//! relay's own `--host`, if it is in one, is allowed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::addr::canonical;
use crate::refusal::Reason;

/// What kind of address a peer address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Never a destination: unspecified, multicast, limited broadcast (or port 0).
    Never,
    /// The host itself (127.0.0.0/8, `::1`).
    Loopback,
    /// A private or internal range (RFC 1918, CGNAT, link-local, ULA, metadata, reserved).
    Internal,
    /// Anything else.
    Public,
}

/// An address range: an IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    v4: bool,
    /// The prefix's bits, an IPv4 one in the low 32.
    bits: u128,
    mask: u128,
    len: u8,
}

impl Net {
    const fn new(v4: bool, bits: u128, len: u8) -> Net {
        let width = if v4 { 32 } else { 128 };
        let mask = if len == 0 {
            0
        } else {
            (u128::MAX >> (128 - width)) & !((1u128 << (width - len as u32)) - 1)
        };
        Net {
            v4,
            bits: bits & mask,
            mask,
            len,
        }
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Net {
        Net::new(true, u32::from_be_bytes([a, b, c, d]) as u128, len)
    }

    const fn v6(hi: u64, len: u8) -> Net {
        Net::new(false, (hi as u128) << 64, len)
    }

    /// Whether `ip` (as `canonical` gives it) is in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4 && u128::from(u32::from(a)) & self.mask == self.bits,
            IpAddr::V6(a) => !self.v4 && u128::from(a) & self.mask == self.bits,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v4 {
            write!(f, "{}/{}", Ipv4Addr::from(self.bits as u32), self.len)
        } else {
            write!(f, "{}/{}", Ipv6Addr::from(self.bits), self.len)
        }
    }
}

/// `a.b.c.d/n`, `x::/n`, or a bare address (one host). An IPv4-mapped IPv6 range is its IPv4
/// one, as the addresses it is matched against are.
impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Net, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address range (try 10.0.0.0/8 or fd00::/8)"))?;
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => width,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= width)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {width}"))?,
        };
        let (ip, len) = match ip {
            IpAddr::V6(a) if len >= 96 && a.to_ipv4_mapped().is_some() => {
                (IpAddr::V4(a.to_ipv4_mapped().expect("mapped")), len - 96)
            }
            ip => (ip, len),
        };
        let net = match ip {
            IpAddr::V4(a) => Net::new(true, u128::from(u32::from(a)), len),
            IpAddr::V6(a) => Net::new(false, u128::from(a), len),
        };
        // Addresses there stand for IPv4 ones and are judged as those: the range must be
        // written as the IPv4 one, or it would deny (or allow) nothing.
        if let IpAddr::V6(a) = ip {
            if canonical(ip).is_ipv4() {
                return Err(format!(
                    "`{s}` lies where IPv6 addresses stand for IPv4 ones ({a} is {}: 6to4, \
                     NAT64 or IPv4-compatible): give the IPv4 range",
                    canonical(ip)
                ));
            }
        }
        // Bits past the prefix are most likely a typo for another range.
        if !net.contains(ip) || net.bits != ip_bits(ip) {
            return Err(format!(
                "`{s}` has bits set past its /{len} prefix (did you mean {net}?)"
            ));
        }
        Ok(net)
    }
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The private and internal ranges denied by default.
pub const INTERNAL: &[Net] = &[
    // RFC 1918.
    Net::v4(10, 0, 0, 0, 8),
    Net::v4(172, 16, 0, 0, 12),
    Net::v4(192, 168, 0, 0, 16),
    // Carrier-grade NAT (RFC 6598): the provider's network, not the internet.
    Net::v4(100, 64, 0, 0, 10),
    // Link-local, with the cloud metadata service at 169.254.169.254.
    Net::v4(169, 254, 0, 0, 16),
    // IETF protocol assignments (RFC 6890), benchmarking (RFC 2544), reserved (RFC 1112).
    Net::v4(192, 0, 0, 0, 24),
    Net::v4(198, 18, 0, 0, 15),
    Net::v4(240, 0, 0, 0, 4),
    // Unique local (RFC 4193), with AWS's metadata service at fd00:ec2::254.
    Net::v6(0xfc00 << 48, 7),
    // Link-local, and the deprecated site-local (RFC 3879).
    Net::v6(0xfe80 << 48, 10),
    Net::v6(0xfec0 << 48, 10),
    // Local-use NAT64 (RFC 8215): translated into the operator's own IPv4 networks.
    Net::v6(0x0064_ff9b_0001 << 16, 48),
];

/// What kind of address `ip` is (its port aside).
pub fn kind(ip: IpAddr) -> Kind {
    let ip = canonical(ip);
    match ip {
        IpAddr::V4(a) => {
            let [first, ..] = a.octets();
            if first == 0 || a.is_multicast() || a.is_broadcast() {
                return Kind::Never;
            }
            if first == 127 {
                return Kind::Loopback;
            }
        }
        IpAddr::V6(a) => {
            if a.is_unspecified() || a.is_multicast() {
                return Kind::Never;
            }
            if a.is_loopback() {
                return Kind::Loopback;
            }
        }
    }
    if INTERNAL.iter().any(|n| n.contains(ip)) {
        Kind::Internal
    } else {
        Kind::Public
    }
}

/// Which peer addresses the relay serves: the same answer for a datagram's source and for a
/// send's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    serves_loopback: bool,
    /// Whether the [`INTERNAL`] ranges are denied.
    deny_internal: bool,
    /// Ranges denied beyond them (`--denied-peer-ip`).
    denied: Vec<Net>,
    /// Ranges served even so (`--allowed-peer-ip`).
    allowed: Vec<Net>,
    /// The internal range the relay's own host is in, not denied as internal for that reason
    /// (`--denied-peer-ip` may still deny it).
    own: Option<Net>,
}

impl Policy {
    /// Serves every address but those that are never one: for the sans-IO tests and benches,
    /// whose peers are anywhere.
    pub fn open() -> Policy {
        Policy {
            serves_loopback: true,
            deny_internal: false,
            denied: Vec::new(),
            allowed: Vec::new(),
            own: None,
        }
    }

    /// The policy of a relay listening on `host`: loopback served if `host` is loopback or
    /// unspecified; the internal ranges (but the one `host` is in) and `denied` refused, but for
    /// `allowed`.
    pub fn new(host: IpAddr, allowed: &[Net], denied: &[Net]) -> Policy {
        let host_kind = kind(host);
        let serves_loopback = matches!(host_kind, Kind::Loopback | Kind::Never);
        let own = (host_kind == Kind::Internal)
            .then(|| {
                let ip = canonical(host);
                INTERNAL.iter().copied().find(|n| n.contains(ip))
            })
            .flatten();
        Policy {
            serves_loopback,
            deny_internal: true,
            denied: denied.to_vec(),
            allowed: allowed.to_vec(),
            own,
        }
    }

    /// The internal range allowed because the relay's own host is in it.
    pub fn own_range(&self) -> Option<Net> {
        self.own
    }

    /// Whether the relay serves `a`: `BadSource` for an address that is never a peer's (or
    /// loopback on a relay that does not listen there), `DeniedAddress` for a denied range.
    pub fn check(&self, a: SocketAddr) -> Result<(), Reason> {
        if a.port() == 0 {
            return Err(Reason::BadSource);
        }
        let k = kind(a.ip());
        match k {
            Kind::Never => return Err(Reason::BadSource),
            Kind::Loopback if !self.serves_loopback => return Err(Reason::BadSource),
            Kind::Loopback | Kind::Public if self.denied.is_empty() => return Ok(()),
            _ => {}
        }
        let ip = canonical(a.ip());
        let internal =
            k == Kind::Internal && self.deny_internal && !self.own.is_some_and(|n| n.contains(ip));
        let denied = internal || self.denied.iter().any(|n| n.contains(ip));
        if denied && !self.allowed.iter().any(|n| n.contains(ip)) {
            return Err(Reason::DeniedAddress);
        }
        Ok(())
    }
}

/// The policy in force, shared by the routers and every sender; a reload replaces it. A reader
/// holds a [`View`], which costs one atomic load a use while nothing changed.
#[derive(Debug)]
pub struct Boundary {
    generation: AtomicU64,
    policy: Mutex<Arc<Policy>>,
}

impl Boundary {
    /// `policy` in force.
    pub fn new(policy: Policy) -> Arc<Boundary> {
        Arc::new(Boundary {
            generation: AtomicU64::new(0),
            policy: Mutex::new(Arc::new(policy)),
        })
    }

    /// Puts `policy` in force for every reader's next use.
    pub fn set(&self, policy: Policy) {
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A reader of the policy in force.
    pub fn view(self: &Arc<Boundary>) -> View {
        let generation = self.generation.load(Ordering::Acquire);
        let policy = self
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        View {
            boundary: self.clone(),
            generation,
            policy,
        }
    }
}

/// One thread's reader of a [`Boundary`].
#[derive(Debug)]
pub struct View {
    boundary: Arc<Boundary>,
    generation: u64,
    policy: Arc<Policy>,
}

impl View {
    /// The policy in force.
    pub fn policy(&mut self) -> &Policy {
        if self.boundary.generation.load(Ordering::Acquire) != self.generation {
            *self = self.boundary.view();
        }
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn kinds() {
        for (a, k) in [
            ("0.0.0.0", Kind::Never),
            ("0.1.2.3", Kind::Never),
            ("::", Kind::Never),
            ("224.0.0.1", Kind::Never),
            ("239.255.255.250", Kind::Never),
            ("255.255.255.255", Kind::Never),
            ("ff02::1", Kind::Never),
            ("::ffff:0.0.0.0", Kind::Never),
            ("::ffff:255.255.255.255", Kind::Never),
            ("::ffff:224.0.0.1", Kind::Never),
            ("127.0.0.1", Kind::Loopback),
            ("127.16.3.1", Kind::Loopback),
            ("::1", Kind::Loopback),
            ("::ffff:127.0.0.1", Kind::Loopback),
            ("::127.0.0.1", Kind::Loopback),
            ("10.0.0.1", Kind::Internal),
            ("172.16.0.1", Kind::Internal),
            ("172.31.255.255", Kind::Internal),
            ("192.168.1.2", Kind::Internal),
            ("100.64.0.1", Kind::Internal),
            ("100.127.255.255", Kind::Internal),
            ("169.254.169.254", Kind::Internal),
            ("192.0.0.9", Kind::Internal),
            ("198.18.0.1", Kind::Internal),
            ("198.19.255.255", Kind::Internal),
            ("240.0.0.1", Kind::Internal),
            ("255.255.255.254", Kind::Internal),
            ("fd00::1", Kind::Internal),
            ("fd00:ec2::254", Kind::Internal),
            ("fc00::1", Kind::Internal),
            ("fe80::1", Kind::Internal),
            ("fec0::1", Kind::Internal),
            ("64:ff9b:1::a", Kind::Internal),
            ("::ffff:10.0.0.1", Kind::Internal),
            ("64:ff9b::10.0.0.1", Kind::Internal),
            ("64:ff9b::169.254.169.254", Kind::Internal),
            ("2002:a00:1::1", Kind::Internal),
            ("2002:7f00:1::1", Kind::Loopback),
            ("64:ff9b::127.0.0.1", Kind::Loopback),
            ("1.1.1.1", Kind::Public),
            ("172.32.0.1", Kind::Public),
            ("100.128.0.1", Kind::Public),
            ("192.0.2.1", Kind::Public),
            ("2001:db8::1", Kind::Public),
            ("2606:4700::1111", Kind::Public),
            ("64:ff9b::1.1.1.1", Kind::Public),
            ("::ffff:8.8.8.8", Kind::Public),
        ] {
            assert_eq!(kind(ip(a)), k, "{a}");
        }
    }

    #[test]
    fn ranges_parse_and_say_what_is_wrong() {
        let n: Net = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.255.0.1")) && !n.contains(ip("11.0.0.1")));
        assert!(!n.contains(ip("::a00:1")), "families apart");
        assert_eq!(n.to_string(), "10.0.0.0/8");
        let one: Net = "192.168.1.2".parse().unwrap();
        assert_eq!(one.to_string(), "192.168.1.2/32");
        let all: Net = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")) && !all.contains(ip("1.2.3.4")));
        let mapped: Net = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, n);
        assert_eq!("fd00::/8".parse::<Net>().unwrap().to_string(), "fd00::/8");
        assert!("0.0.0.0/0".parse::<Net>().unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "ten/8",
            "10.0.0.1/8",
            "",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
        assert!(
            "10.0.0.1/8"
                .parse::<Net>()
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
    }

    #[test]
    fn a_public_relay_refuses_what_is_never_a_peer_and_the_internal_ranges() {
        let p = Policy::new(ip("203.0.113.5"), &[], &[]);
        for a in [
            "0.0.0.0:5",
            "[::]:5",
            "224.0.0.1:5",
            "255.255.255.255:5",
            "[ff02::1]:5",
        ] {
            assert_eq!(p.check(sa(a)), Err(Reason::BadSource), "{a}");
        }
        assert_eq!(p.check(sa("1.2.3.4:0")), Err(Reason::BadSource));
        assert_eq!(p.check(sa("127.0.0.1:5")), Err(Reason::BadSource));
        assert_eq!(p.check(sa("[::1]:5")), Err(Reason::BadSource));
        for a in [
            "10.0.0.1:5",
            "169.254.169.254:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:5",
        ] {
            assert_eq!(p.check(sa(a)), Err(Reason::DeniedAddress), "{a}");
        }
        assert_eq!(
            p.check(sa("[::ffff:10.0.0.1]:5")),
            Err(Reason::DeniedAddress)
        );
        assert_eq!(p.check(sa("1.2.3.4:5")), Ok(()));
        assert_eq!(p.own_range(), None);
    }

    #[test]
    fn allowed_ranges_exempt_and_denied_ones_add() {
        let nets = |s: &[&str]| s.iter().map(|n| n.parse().unwrap()).collect::<Vec<Net>>();
        let p = Policy::new(
            ip("::"),
            &nets(&["10.0.0.0/8", "fd00::/8"]),
            &nets(&["203.0.113.0/24", "10.1.0.0/16"]),
        );
        assert_eq!(p.check(sa("10.1.2.3:5")), Ok(()), "allowed wins");
        assert_eq!(p.check(sa("[fd00::1]:5")), Ok(()));
        assert_eq!(p.check(sa("[fc00::1]:5")), Err(Reason::DeniedAddress));
        assert_eq!(p.check(sa("203.0.113.9:5")), Err(Reason::DeniedAddress));
        assert_eq!(p.check(sa("192.168.0.1:5")), Err(Reason::DeniedAddress));
        assert_eq!(p.check(sa("127.0.0.1:5")), Ok(()), "`::` serves loopback");
        assert_eq!(
            p.check(sa("0.0.0.0:5")),
            Err(Reason::BadSource),
            "never exempt"
        );
        assert_eq!(p.own_range(), None, "`::` allows no range of its own");
        let lo: Net = "127.30.0.0/16".parse().unwrap();
        let p = Policy::new(ip("127.0.0.1"), &[], &[lo]);
        assert_eq!(p.check(sa("127.30.0.1:5")), Err(Reason::DeniedAddress));
        assert_eq!(p.check(sa("127.0.0.1:5")), Ok(()));
    }

    /// Red team, round 2: ranges written where IPv6 stands for IPv4 denied nothing (peers are
    /// judged by the IPv4 address), and SIIT's form of 10.0.0.1 passed as public.
    #[test]
    fn ranges_where_ipv6_stands_for_ipv4_are_refused_and_siit_is_judged_as_ipv4() {
        for range in [
            "2002::/16",
            "64:ff9b::/96",
            "2002:c633:6400::/40",
            "::2/128",
        ] {
            let e = range.parse::<Net>().unwrap_err();
            assert!(e.contains("give the IPv4 range"), "{range}: {e}");
        }
        assert!("2001:db8::/32".parse::<Net>().is_ok());
        let ip: IpAddr = "::ffff:0:a00:1".parse().unwrap();
        assert_eq!(canonical(ip), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(kind(ip), Kind::Internal);
    }

    #[test]
    fn a_relay_inside_an_internal_range_serves_that_range() {
        let p = Policy::new(ip("10.0.0.5"), &[], &[]);
        assert_eq!(p.own_range().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(p.check(sa("10.9.9.9:5")), Ok(()));
        assert_eq!(p.check(sa("192.168.1.2:5")), Err(Reason::DeniedAddress));
        assert_eq!(p.check(sa("127.0.0.1:5")), Err(Reason::BadSource));
        let p = Policy::new(ip("192.168.1.2"), &[], &[]);
        assert_eq!(p.check(sa("192.168.77.1:5")), Ok(()));
        let no: Net = "192.168.0.0/16".parse().unwrap();
        let p = Policy::new(ip("192.168.1.2"), &[], &[no]);
        assert_eq!(
            p.check(sa("192.168.77.1:5")),
            Err(Reason::DeniedAddress),
            "the operator's denial stands"
        );
        let p = Policy::new(ip("127.0.0.1"), &[], &[]);
        assert_eq!(p.check(sa("127.16.0.1:5")), Ok(()));
        assert_eq!(p.check(sa("10.0.0.1:5")), Err(Reason::DeniedAddress));
    }

    #[test]
    fn a_view_follows_the_policy_in_force() {
        let b = Boundary::new(Policy::open());
        let mut v = b.view();
        assert_eq!(v.policy().check(sa("10.0.0.1:5")), Ok(()));
        b.set(Policy::new(ip("127.0.0.1"), &[], &[]));
        assert_eq!(
            v.policy().check(sa("10.0.0.1:5")),
            Err(Reason::DeniedAddress)
        );
    }
}
