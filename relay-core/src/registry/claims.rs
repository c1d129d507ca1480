//! Who may hold a name: claims, moves and removals, and the links they keep in step.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use crate::auth::Key;
use crate::shards::Entry as Slot;

use super::entry::Entry;
use super::packed::{AtAddr, Packed};
use super::{Name, Registry, Session};

/// What a claim on a name shows: a session token (or none), or a verified signature by a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Unsigned: the session token of the registration, if the peer sent one.
    Token(Option<Session>),
    /// Signed (Part 5): the key whose signature over a fresh cookie was verified, and when that
    /// cookie was issued (Unix seconds).
    Key(Key, u64),
}

/// What `claim` does with a live or stale entry.
enum Decision {
    Refresh { trusted: bool },
    Move { trusted: bool },
    Replace,
    Refuse,
}

/// What became of a claim on a name (`register` or `keepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name was free and is now registered here.
    Joined(Session),
    /// The name was held by a stale registration, which a new one here replaces.
    Replaced(Session),
    /// The name was already registered at this address; it is refreshed.
    Refreshed(Session),
    /// The name moved here from another address, proven by its session token.
    Moved(Session),
    /// The name is live at another address.
    InUse,
    /// The registry holds `max_peers` names.
    Full,
    /// The address holds `--max-names-per-address` names already.
    AddressFull,
}

/// A removed registration, for announcing.
#[derive(Debug)]
pub struct Removed {
    /// The name.
    pub name: Name,
    /// Its last address.
    pub addr: SocketAddr,
    /// Whether it had ever proven itself there (so that its leaving is not forged news).
    pub proven: bool,
}

/// What a change to the registry did to a name, reported to what keeps state per name
/// elsewhere (channels), so that the registry calls into none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The name was free and is now held.
    Joined(&'a str),
    /// A stale holder of the name was replaced by a new registration.
    Replaced(&'a str),
    /// The name moved, with its session or signature, to this address.
    Moved(&'a str, SocketAddr),
    /// The registration is gone (unregistered or reaped).
    Removed(&'a str),
}

impl Claim {
    /// What this claim of `name` at `addr` did, if it changed who holds the name or where.
    pub fn event<'a>(&self, name: &'a str, addr: SocketAddr) -> Option<Event<'a>> {
        match self {
            Claim::Joined(_) => Some(Event::Joined(name)),
            Claim::Replaced(_) => Some(Event::Replaced(name)),
            Claim::Moved(_) => Some(Event::Moved(name, addr)),
            _ => None,
        }
    }
}

impl Removed {
    /// The event of this removal.
    pub fn event(&self) -> Event<'_> {
        Event::Removed(&self.name)
    }
}

impl Registry {
    /// Claims `name` for `addr`, following the rules of Part 2 (live names stay with their address
    /// unless the session token is shown; stale ones are free).
    pub fn claim(
        &self,
        name: &str,
        addr: SocketAddr,
        proof: Proof,
        now_ms: u64,
        max_peers: usize,
    ) -> Claim {
        let here = Packed::from(addr);
        let signed = matches!(proof, Proof::Key(..));
        // The secondary maps are updated while the name's entry is held (lock order: `peers`
        // first), so a concurrent reap or claim of the same name cannot interleave with them.
        self.peers.entry(name, |slot| match slot {
            Slot::Occupied(mut o) => {
                let key = o.get().0.clone();
                let live = self.live(&o.get().1, now_ms);
                let bound = self.keys.get(&key, |_, b| *b);
                let e = &mut o.get_mut().1;
                let session = e.session(&self.tokens);
                let decision = if !live {
                    Decision::Replace
                } else {
                    match (proof, bound) {
                        // A refresh from the name's own address needs no proof; one that carries
                        // the token sent there is authenticated.
                        (Proof::Token(t), _) if e.addr == here => Decision::Refresh {
                            trusted: t == Some(session),
                        },
                        (Proof::Token(t), None) if t == Some(session) => {
                            Decision::Move { trusted: false }
                        }
                        // A signature over a cookie older than the last one is a replay (of a
                        // move back to an address the peer has left, say).
                        (Proof::Key(k, t), Some((b, bt))) if k == b && t < bt => Decision::Refuse,
                        (Proof::Key(k, _), Some((b, _))) if k == b && e.addr == here => {
                            Decision::Refresh { trusted: true }
                        }
                        (Proof::Key(k, _), Some((b, _))) if k == b => {
                            Decision::Move { trusted: true }
                        }
                        // A live unsigned name is bound to the key that signs for it there.
                        (Proof::Key(..), None) if e.addr == here => {
                            Decision::Refresh { trusted: true }
                        }
                        _ => Decision::Refuse,
                    }
                };
                let arrives = matches!(decision, Decision::Move { .. } | Decision::Replace);
                if arrives && self.address_full(here) {
                    return Claim::AddressFull;
                }
                let claim = match decision {
                    Decision::Refuse => return Claim::InUse,
                    Decision::Refresh { trusted } => {
                        e.touch(now_ms);
                        if trusted {
                            e.trust(now_ms);
                        }
                        if let Proof::Key(k, t) = proof {
                            self.keys.insert(key, (k, t));
                        }
                        return Claim::Refreshed(session);
                    }
                    Decision::Move { trusted } => {
                        let old = e.addr;
                        // A new number, so a new token, sent only to the new address; the new
                        // address is trusted only once it shows that token (or a cookie).
                        let seq = self.next_seq.fetch_add(1, Relaxed);
                        *e = Entry::new(here, now_ms, seq, trusted);
                        self.unlink_addr(&key, old);
                        Claim::Moved(e.session(&self.tokens))
                    }
                    Decision::Replace => {
                        let seq = self.next_seq.fetch_add(1, Relaxed);
                        let old = std::mem::replace(e, Entry::new(here, now_ms, seq, signed));
                        self.unlink(&key, &old);
                        Claim::Replaced(self.tokens.of(seq))
                    }
                };
                self.link(key, here, proof);
                claim
            }
            Slot::Vacant(v) => {
                // A signature proves the claimant is the key's holder; no key was bound to a
                // displaced name (only unproven registrations are displaced).
                if !signed && self.reservations.elsewhere(name, addr, now_ms) {
                    return Claim::InUse;
                }
                if self.count.load(Relaxed) >= max_peers {
                    return Claim::Full;
                }
                if self.address_full(here) {
                    return Claim::AddressFull;
                }
                let key = Name::from(name);
                let seq = self.next_seq.fetch_add(1, Relaxed);
                let _held = v.insert((key.clone(), Entry::new(here, now_ms, seq, signed)));
                self.count.fetch_add(1, Relaxed);
                self.link(key, here, proof);
                Claim::Joined(self.tokens.of(seq))
            }
        })
    }

    /// Whether `here` holds as many names as an address may.
    fn address_full(&self, here: Packed) -> bool {
        let max = self.bounds.names_per_address.load(Relaxed);
        self.by_addr
            .get(&here, |_, at| at.names().len() >= max)
            .unwrap_or(false)
    }

    /// Links a name just claimed at `here` into the secondary maps; how many names `here`
    /// holds now.
    fn link(&self, key: Name, here: Packed, proof: Proof) -> usize {
        if let Proof::Key(k, t) = proof {
            self.keys.insert(key.clone(), (k, t));
        }
        self.by_addr.entry(&here, |slot| match slot {
            Slot::Occupied(mut o) => {
                let at = &mut o.get_mut().1;
                at.push(key);
                at.names().len()
            }
            Slot::Vacant(v) => {
                v.insert((here, AtAddr::One(key)));
                1
            }
        })
    }

    /// Drops the secondary-map links of a registration that is gone from `peers`.
    fn unlink(&self, name: &Name, old: &Entry) {
        self.unlink_addr(name, old.addr);
        self.keys.remove(name);
        let Some((_, watched)) = self.watching.remove(name) else {
            return;
        };
        self.uncount_watches(&watched, watched.names.len());
        for n in watched.names {
            self.drop_watcher(n, name);
        }
    }

    fn unlink_addr(&self, name: &Name, addr: Packed) {
        self.by_addr.entry(&addr, |slot| {
            if let Slot::Occupied(mut o) = slot {
                if !o.get_mut().1.remove(name) {
                    o.remove();
                }
            }
        });
    }

    /// Removes `name` if `may(entry)` allows it.
    pub(super) fn remove_if(
        &self,
        name: &str,
        may: impl FnOnce(&Entry) -> bool,
    ) -> Option<Removed> {
        self.peers.entry(name, |slot| {
            let Slot::Occupied(o) = slot else {
                return None;
            };
            if !may(&o.get().1) {
                return None;
            }
            // Unlinked while the entry is held, as in `claim`.
            let (key, old) = o.get();
            self.unlink(key, old);
            let ((key, old), _) = o.remove();
            self.count.fetch_sub(1, Relaxed);
            Some(Removed {
                name: key,
                addr: old.addr.get(),
                proven: old.proven(),
            })
        })
    }

    /// Removes `name` if it is live at `addr` and `token` is its session: an address alone can
    /// be forged, and a token alone may have been seen on the path.
    pub fn unregister(
        &self,
        name: &str,
        addr: SocketAddr,
        token: Option<Session>,
        now_ms: u64,
    ) -> Option<Removed> {
        self.remove_if(name, |e| {
            e.addr == Packed::from(addr)
                && token == Some(e.session(&self.tokens))
                && self.live(e, now_ms)
        })
    }
}
