//! A peer address's keys: the address it stands for (IPv4 written inside IPv6 is that IPv4
//! address) and the host, customer and network it belongs to, by which every limit, budget and
//! share is kept. One definition, so that every table agrees on who a party is.

use std::net::{IpAddr, Ipv4Addr};

/// The address `ip` stands for: an IPv4 address written in IPv6 (mapped,
/// compatible, the well-known NAT64 prefix 64:ff9b::/96, or 6to4's 2002::/16) is the IPv4
/// address it reaches.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(a) = ip else { return ip };
    let s = a.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // Mapped, and SIIT's translated form (::ffff:0:0/96).
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => IpAddr::V4(low),
        // `::` and `::1` are themselves, not 0.0.0.0 and 0.0.0.1.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => ip,
        [0, 0, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => IpAddr::V4(low),
        [0x2002, hi, lo, ..] => IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => ip,
    }
}

/// The key of limits per host: an IPv4 address, or an IPv6 /64 (one subscriber's network: a
/// host there picks any of 2^64 addresses).
pub fn host_key(ip: IpAddr) -> [u8; 9] {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], o[3], 0, 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [6, o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
        }
    }
}

/// The key of limits per customer: an IPv4 address, or an IPv6 /56 (what a provider commonly
/// delegates to one subscriber: a forger there picks any of 256 /64s).
pub fn customer_key(ip: IpAddr) -> [u8; 8] {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], o[3], 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [6, o[0], o[1], o[2], o[3], o[4], o[5], o[6]]
        }
    }
}

/// The network a source belongs to, the one key of every limit and share per network: its /24
/// (IPv4) or /48 (IPv6, what a site is commonly assigned: a host of it picks any of 2^16 /64s).
pub fn prefix(ip: IpAddr) -> [u8; 7] {
    // An IPv4 network reached through IPv6 (6to4, NAT64) is that network: each of its
    // addresses must not bring a /48 and a credit of its own.
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [6, o[0], o[1], o[2], o[3], o[4], o[5]]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_24_and_48_bits() {
        let p = |s: &str| prefix(s.parse().unwrap());
        assert_eq!(p("192.0.2.1"), p("192.0.2.200"));
        assert_ne!(p("192.0.2.1"), p("192.0.3.1"));
        assert_eq!(p("2001:db8:0:1::1"), p("2001:db8:0:ffff::2"));
        assert_ne!(p("2001:db8:1::1"), p("2001:db8:0:1::1"));
        // An IPv4 network reached through IPv6 is that network (red team: each address of a
        // /24 had a 6to4 /48 and a credit of its own).
        assert_eq!(p("2002:c000:201::1"), p("192.0.2.9"));
        assert_eq!(p("2002:c000:2ff::1"), p("192.0.2.9"));
        assert_eq!(p("64:ff9b::c000:201"), p("192.0.2.9"));
        assert_eq!(p("::ffff:192.0.2.1"), p("192.0.2.9"));
    }
}
