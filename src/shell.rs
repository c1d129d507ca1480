//! Where the core meets the sockets: the router as `relay_udp` runs it ([`Shell`]), the
//! core's sends as `relay_udp` sends them ([`Decided`]), and the core's peer-address policy as
//! the senders' filter of destinations ([`Served`]). Neither side knows the other.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use relay_udp::{Decide, Destinations, Sends};

use relay_core::clock::Now;

use crate::clock::Clock;
use relay_core::destination::{Boundary, View};
use relay_core::metrics::Counters;
use relay_core::out::Out;
use relay_core::router::Router;
use relay_core::shared::Shared;

/// The core's sends of a batch, as the backends send them.
#[derive(Debug, Default)]
pub struct Decided(pub Out);

impl Deref for Decided {
    type Target = Out;
    fn deref(&self) -> &Out {
        &self.0
    }
}

impl DerefMut for Decided {
    fn deref_mut(&mut self) -> &mut Out {
        &mut self.0
    }
}

impl Sends for Decided {
    fn count(&self) -> usize {
        self.0.sends.len()
    }

    fn to(&self, i: usize) -> SocketAddr {
        self.0.sends[i].to
    }

    fn input(&self, i: usize) -> usize {
        self.0.sends[i].input
    }

    fn segments<'a>(&'a self, i: usize, input: &'a [u8]) -> [&'a [u8]; 3] {
        self.0.segments(&self.0.sends[i], input)
    }

    fn wire_len(&self, i: usize) -> usize {
        self.0.sends[i].wire_len()
    }

    fn set_input(&mut self, i: usize) {
        self.0.input = i;
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A worker's router, with the clock it decides by and the counters its readiness is read
/// from.
pub struct Shell {
    /// The router.
    pub router: Router,
    /// The relay's clock.
    pub clock: Clock,
    /// The worker's counters.
    pub counters: Arc<Counters>,
    /// The peer addresses served.
    pub boundary: Arc<Boundary>,
    /// The relay's state, whose cluster's mesh addresses are sent to beside the peers.
    pub shared: Arc<Shared>,
    /// The time of this loop turn.
    now: Now,
}

impl Shell {
    /// The shell of `router`.
    pub fn new(
        router: Router,
        clock: Clock,
        counters: Arc<Counters>,
        shared: Arc<Shared>,
    ) -> Shell {
        Shell {
            router,
            now: clock.now(),
            clock,
            counters,
            boundary: shared.boundary.clone(),
            shared,
        }
    }
}

impl Decide for Shell {
    type Out = Decided;

    fn turn(&mut self) {
        self.now = self.clock.now();
        self.counters.turned(self.now.ms);
    }

    fn datagram(&mut self, d: &mut [u8], from: SocketAddr, out: &mut Decided) {
        self.router.handle(d, from, self.now, out);
    }

    fn truncated(&mut self, len: usize, from: SocketAddr, out: &mut Decided) {
        self.router.truncated(len, from, self.now, out);
    }

    fn mapped_source(&mut self, len: usize) {
        self.router.mapped_source(len);
    }

    fn destinations(&self) -> Box<dyn Destinations> {
        Box::new(Served {
            peers: self.boundary.view(),
            shared: Some(self.shared.clone()),
        })
    }
}

/// The peer addresses the relay serves, as a sender's filter: a send to any other (never a
/// destination, or not served by `--allowed-peer-ip`/`--denied-peer-ip`) is dropped, but for
/// the mesh addresses of the cluster's relays, which its directory names (the operator's own
/// network, which the peer policy rightly refuses to peers).
pub struct Served {
    /// The peer-address policy.
    pub peers: View,
    /// The relay's state, for its cluster's nodes.
    pub shared: Option<Arc<Shared>>,
}

impl Destinations for Served {
    fn serves(&mut self, to: SocketAddr) -> bool {
        self.peers.policy().check(to).is_ok()
            || self
                .shared
                .as_ref()
                .and_then(|s| s.cluster.get())
                .is_some_and(|c| c.nodes.is_mesh(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::destination::Policy;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The senders' filter is the core's policy, and a reload of it reaches a filter
    /// made before the reload (as the workers' and the egress's are).
    #[test]
    fn served_is_the_boundary_and_follows_a_reload() {
        let boundary = Boundary::new(Policy::new("127.0.0.1".parse().unwrap(), &[], &[]));
        let mut served = Served {
            peers: boundary.view(),
            shared: None,
        };
        for never in [
            "0.0.0.0:9",
            "127.0.0.1:0",
            "224.0.0.1:9",
            "255.255.255.255:9",
            "[::]:9",
            "[::ffff:0.0.0.0]:9",
            "[ff02::1]:9",
            "10.0.0.1:9",
        ] {
            assert!(!served.serves(sa(never)), "{never}");
        }
        assert!(served.serves(sa("127.0.0.1:9")));
        assert!(served.serves(sa("192.0.2.1:9")));
        boundary.set(Policy::new(
            "127.0.0.1".parse().unwrap(),
            &["10.0.0.0/8".parse().unwrap()],
            &[],
        ));
        assert!(
            served.serves(sa("10.0.0.1:9")),
            "the reload reached the filter"
        );
        assert!(!served.serves(sa("0.0.0.0:9")));
        boundary.set(Policy::new("127.0.0.1".parse().unwrap(), &[], &[]));
        assert!(!served.serves(sa("10.0.0.1:9")), "and its undoing too");
    }

    /// A cluster's mesh addresses, internal as they are, pass the filter: exactly those the
    /// directory lists, no other port or host of their network.
    #[test]
    fn the_clusters_mesh_addresses_are_served_and_nothing_beside_them() {
        use relay_core::cluster::Cluster;
        use relay_core::mesh::Keys;
        let settings = relay_core::Settings {
            peers: Policy::new("203.0.113.1".parse().unwrap(), &[], &[]),
            ..relay_core::Settings::default()
        };
        let shared = Shared::new(settings, 1);
        let mut served = Served {
            peers: shared.boundary.view(),
            shared: Some(shared.clone()),
        };
        assert!(!served.serves(sa("10.0.0.5:8001")), "no cluster yet");
        let cluster = Cluster::new("a", Keys::new(&[1; 32]).unwrap(), 10, Box::new(|| {}));
        cluster.nodes.add("b", sa("10.0.0.5:8001"), 0);
        assert!(shared.cluster.set(cluster).is_ok());
        assert!(served.serves(sa("10.0.0.5:8001")));
        for not in ["10.0.0.5:8002", "10.0.0.6:8001", "127.0.0.1:8001"] {
            assert!(!served.serves(sa(not)), "{not}");
        }
        shared.cluster.get().unwrap().nodes.remove("b");
        assert!(
            !served.serves(sa("10.0.0.5:8001")),
            "a node gone is not served"
        );
    }
}
