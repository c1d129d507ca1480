//! What claiming names may cost a source: new names, displacements and signature checks.

use std::net::{IpAddr, SocketAddr};

use crate::addr::{customer_key, prefix};

use super::Budgets;

impl Budgets {
    /// Whether `from` (IP and port) may register one more new name at `now_ms`.
    pub fn register(&self, from: SocketAddr, now_ms: u64) -> bool {
        self.registrations.take(from, 1, now_ms)
    }

    /// Whether `from`'s network (/24, /48) may displace one more registration from a full
    /// registry at `now_ms`.
    pub fn displace(&self, from: IpAddr, now_ms: u64) -> bool {
        self.displacements.take(prefix(from), 1, now_ms)
    }

    /// Whether `from`'s /56 (IPv4 address), its /48 (IPv4 /24) and the relay may pay one more
    /// signature check at `now_ms`; charged only once the request's cookie, which costs a hash
    /// to check, showed that it receives where it claims to be.
    pub fn check_signature(&self, from: IpAddr, now_ms: u64) -> bool {
        let [small, large, all] = &self.signatures;
        small.take(customer_key(from), 1, now_ms)
            && large.take(prefix(from), 1, now_ms)
            && all.take((), 1, now_ms)
    }
}
