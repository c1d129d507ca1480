//! What the relay's answers do to the link: registration acknowledged or refused, the session
//! shown back, channels bound and closed, introductions, presence, errors. Each answer is taken
//! only where it fits what the link asked (a forged one can change no more than the relay could).

use std::time::Instant;

use relay_wire::read::{self, Message};
use relay_wire::reply::Presence;

use super::*;

impl Link {
    pub(super) fn on_message(&mut self, now: Instant, m: Message<'_>) {
        self.heard(now);
        match m {
            Message::Challenge { cookie }
                if self.key.is_some() && self.state == State::Registering =>
            {
                self.state = State::Signed {
                    cookie: cookie.into_owned(),
                };
                self.retry = Pending::at(now);
                self.handle_timeout(now);
            }
            Message::RegisterAck { your_address, full } => {
                if !matches!(self.state, State::Registering | State::Signed { .. }) {
                    return;
                }
                let Some(session) = full.and_then(|f| f.session) else {
                    // The short form: not paid in full; the next try is padded as this was,
                    // so wait for the relay's budget to allow.
                    return;
                };
                self.session = Some(session.into_owned());
                self.public.get_or_insert(your_address);
                self.state = State::Proving;
                self.retry = Pending::at(now);
                self.handle_timeout(now);
            }
            Message::Pong { your_address, .. } if self.state == State::Proving => {
                self.state = State::Ready;
                self.told_refused = None;
                self.unanswered = 0;
                self.next_keepalive = Some(now + self.keepalive_every());
                // The ack's address (or STUN's) stands: a pong is as easily forged as any
                // datagram from the relay's address, and this is the address our peers are told
                // to check.
                let public = self.public.or(your_address).unwrap_or(self.relay);
                self.public = Some(public);
                self.events.push_back(LinkEvent::Ready { public });
                for p in self
                    .connects
                    .values_mut()
                    .chain(self.binds.values_mut())
                    .chain(self.watches.values_mut())
                {
                    p.next = now;
                }
                self.handle_timeout(now);
            }
            Message::KeepaliveAck { session, .. } if self.state == State::Ready => {
                self.unanswered = 0;
                if let Some(s) = session
                    && self.session.as_deref() != Some(&s)
                {
                    if self.key.is_some() {
                        // Registered anew by our keepalive, unsigned (the relay restarted): a
                        // signed name registers again, signed.
                        self.reregister(now);
                        return;
                    }
                    // Registered anew by our keepalive (the relay restarted): a new session,
                    // to show back; channels are gone.
                    self.session = Some(s.into_owned());
                    self.state = State::Proving;
                    self.forgotten(now);
                    self.retry = Pending::at(now);
                    self.handle_timeout(now);
                }
            }
            // Only names the relay could have registered (anyone can write the relay's address
            // as a datagram's source): a control character would reach a terminal, a line
            // break would write a line of `known_peers`.
            Message::RelayedPacket { from_peer, payload } if valid_name(&from_peer) => {
                if let Ok(text) = read::payload_text(&payload)
                    && let Ok(data) = B64.decode(text.as_bytes())
                {
                    self.events.push_back(LinkEvent::FromPeer {
                        from: from_peer.into_owned(),
                        data,
                    });
                }
            }
            Message::Introduce { peer_name, address }
                if self.connects.remove(peer_name.as_ref()).is_some() =>
            {
                self.events.push_back(LinkEvent::Introduced {
                    name: peer_name.into_owned(),
                    address,
                });
            }
            Message::WatchAck { online, .. } => {
                self.watches.clear();
                for name in online {
                    if self.watched.contains(name.as_ref()) {
                        self.events.push_back(LinkEvent::Online {
                            name: name.into_owned(),
                        });
                    }
                }
            }
            Message::Presence {
                kind: Presence::Joined,
                peer_name,
                ..
            } if self.watched.contains(peer_name.as_ref()) => {
                self.events.push_back(LinkEvent::Joined {
                    name: peer_name.into_owned(),
                });
            }
            Message::ConnectRequest { peer_name } if valid_name(&peer_name) => {
                self.events.push_back(LinkEvent::ConnectRequest {
                    name: peer_name.into_owned(),
                });
            }
            Message::BindAck { target, channel } => self.bound(target.into_owned(), channel),
            Message::ChannelBound { peer_name, channel } => {
                self.bound(peer_name.into_owned(), channel);
            }
            Message::ChannelClosed { channel } => {
                if let Some(p) = self.channels.remove(&channel) {
                    self.channel_of.remove(&p);
                    // The peer is still wanted: bind again (refused while it is offline).
                    self.binds.insert(
                        p,
                        Pending {
                            next: now,
                            tries: 0,
                        },
                    );
                }
            }
            Message::Error { code, message } => self.on_error(now, &code, &message),
            _ => {}
        }
    }

    /// The relay gave `channel` for `peer`. Taken only for a peer bound or watched, with no
    /// number yet, and a number no other peer has: anyone can forge the relay's address, and a
    /// number taken wrongly would send our frames nowhere, or another peer's frames to the wrong
    /// connection. A live channel's number never changes; the one time numbers change unsaid, a
    /// relay restart, keepalives find, and every channel is then bound again.
    fn bound(&mut self, peer: String, channel: u32) {
        if !(self.binds.contains_key(&peer) || self.watched.contains(&peer))
            || self.channel_of.contains_key(&peer)
            || self.channels.contains_key(&channel)
        {
            return;
        }
        self.binds.remove(&peer);
        self.channel_of.insert(peer.clone(), channel);
        self.channels.insert(channel, peer.clone());
        self.events.push_back(LinkEvent::Bound { name: peer });
    }

    fn on_error(&mut self, now: Instant, code: &str, message: &str) {
        match code {
            "name_in_use" | "invalid_name" | "bad_signature" | "auth_required"
                if self.state != State::Ready =>
            {
                if code == "auth_required" && self.key.is_none() {
                    self.refused(
                        now,
                        code,
                        "the relay requires signed registration: give a key",
                    );
                } else {
                    self.refused(now, code, message);
                }
            }
            "not_registered" | "session_required" | "auth_required"
                if self.state == State::Ready =>
            {
                self.reregister(now);
            }
            "unknown_target" | "denied_address" => {
                // Errors name no request: every one waiting is told, and given up.
                let waiting: Vec<String> = self
                    .connects
                    .keys()
                    .chain(self.binds.keys())
                    .cloned()
                    .collect();
                for name in waiting {
                    self.connects.remove(&name);
                    self.binds.remove(&name);
                    self.events.push_back(LinkEvent::PeerRefused {
                        name,
                        code: code.to_string(),
                    });
                }
            }
            // Nothing for the link to do; its user may want to know.
            _ => self.events.push_back(LinkEvent::Error {
                code: code
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
            }),
        }
    }

    /// The registration was refused: told once per code, and tried again (from the start: a
    /// challenge may have been forged) at the slowest pace, never given up. A refusal is not
    /// authenticated; given up for good, one forged datagram would end the link, and every
    /// connection with it.
    fn refused(&mut self, now: Instant, code: &str, message: &str) {
        if self.told_refused.as_deref() != Some(code) {
            self.told_refused = Some(code.to_string());
            self.events.push_back(LinkEvent::Refused {
                code: code.to_string(),
                message: message
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
            });
        }
        self.state = State::Registering;
        self.retry = Pending {
            next: now + self.backoff(3),
            tries: 3,
        };
    }
}
