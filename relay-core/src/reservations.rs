//! Names displaced from a full registry, each kept for the address it was displaced from until a
//! peer timeout has passed: that address (an old peer's next keepalive) takes it back, nobody
//! else can take it meanwhile, and so nobody else receives what is relayed to it.
//!
//! Bounded: at most [`MAX`] names. Every reservation lasts the same time, so they expire in the
//! order they were made, from the front of a queue; when all are still standing, the oldest,
//! the next to expire, is given up first. A flood of displacements therefore frees a name only
//! after [`MAX`] more, and [`crate::budget`] holds each network (/24, /48) to a sixteenth of
//! that a peer timeout.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Most names kept at once (about 100 bytes each: 6.5 MB).
pub const MAX: usize = 65_536;

/// The reservations, of names of type `N` (the registry's: this module knows no registry).
pub struct Reservations<N> {
    held: Mutex<Held<N>>,
    /// How many names are held, read without the lock by every new claim.
    len: AtomicUsize,
}

struct Held<N> {
    /// Name → the address it is kept for, and until when (ms of the relay's clock).
    by_name: HashMap<N, (SocketAddr, u64)>,
    /// The names in the order they were reserved, with their ends.
    order: VecDeque<(N, u64)>,
}

impl<N> Default for Reservations<N> {
    fn default() -> Reservations<N> {
        Reservations {
            held: Mutex::new(Held {
                by_name: HashMap::new(),
                order: VecDeque::new(),
            }),
            len: AtomicUsize::new(0),
        }
    }
}

impl<N: Hash + Eq> Held<N> {
    /// Drops the front of the queue, and its name unless a later reservation renewed it.
    fn pop(&mut self) {
        if let Some((name, until)) = self.order.pop_front() {
            if self.by_name.get(&name).is_some_and(|&(_, u)| u == until) {
                self.by_name.remove(&name);
            }
        }
    }
}

impl<N: Hash + Eq + Clone + Borrow<str>> Reservations<N> {
    /// Keeps `name` for `addr` until `until_ms`, at `now_ms`.
    pub fn keep(&self, name: &N, addr: SocketAddr, until_ms: u64, now_ms: u64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held
            .order
            .front()
            .is_some_and(|&(_, until)| until <= now_ms)
        {
            held.pop();
        }
        if held.order.len() >= MAX {
            held.pop();
        }
        held.by_name.insert(name.clone(), (addr, until_ms));
        held.order.push_back((name.clone(), until_ms));
        self.len.store(held.order.len(), Relaxed);
    }

    /// Gives up `name`'s reservation (its displacement did not happen).
    pub fn release(&self, name: &N) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.by_name.remove(name.borrow());
    }

    /// Whether `name` is kept for an address other than `here` at `now_ms`. A reservation
    /// stands until it ends, also once its address took the name back: a claim there that
    /// finds the registry full, or a displacement of the name again, leaves no moment in which
    /// another address could take it.
    pub fn elsewhere(&self, name: &str, here: SocketAddr, now_ms: u64) -> bool {
        if self.len.load(Relaxed) == 0 {
            return false;
        }
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.by_name
            .get(name)
            .is_some_and(|&(addr, until)| until > now_ms && addr != here)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_name_is_kept_for_its_address_until_its_end() {
        let r = Reservations::default();
        let alice = String::from("alice");
        r.keep(&alice, a(1), 60_000, 0);
        assert!(r.elsewhere("alice", a(2), 59_999));
        assert!(!r.elsewhere("alice", a(1), 30_000), "its own address");
        assert!(!r.elsewhere("alice", a(2), 60_000), "ended");
        assert!(!r.elsewhere("bob", a(2), 0));
        r.release(&alice);
        assert!(!r.elsewhere("alice", a(2), 0));
    }

    /// Red team: the set was cleared whole once full, so a flood of displacements freed a name
    /// kept a moment before; now only the oldest is given up, one per new reservation.
    #[test]
    fn a_full_set_gives_up_its_oldest_only() {
        let r = Reservations::default();
        r.keep(&String::from("first"), a(1), 60_000, 0);
        r.keep(&String::from("alice"), a(1), 60_001, 1);
        for i in 0..MAX - 2 {
            r.keep(&format!("n{i}"), a(2), 60_002, 2);
        }
        r.keep(&String::from("one-more"), a(2), 60_003, 3);
        assert!(!r.elsewhere("first", a(3), 4), "the oldest given up");
        assert!(r.elsewhere("alice", a(3), 4), "the next still kept");
        // Expired ones go first, from the front.
        r.keep(&String::from("later"), a(2), 120_002, 60_002);
        assert!(!r.elsewhere("alice", a(3), 60_002));
        assert_eq!(r.held.lock().unwrap().order.len(), 2);
    }

    /// A name kept again (displaced again) stays kept when its first reservation's turn comes.
    #[test]
    fn a_renewed_reservation_outlives_its_first() {
        let r = Reservations::default();
        let alice = String::from("alice");
        r.keep(&alice, a(1), 10, 0);
        r.keep(&alice, a(1), 20, 5);
        r.keep(&String::from("x"), a(2), 30, 15);
        assert!(r.elsewhere("alice", a(3), 15));
    }
}
