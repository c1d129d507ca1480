//! The direct path to one peer: its candidate addresses (introduced by the relay, advertised
//! by the peer, or seen as a probe's source), paced checks to each, the path chosen when a
//! check is answered, heartbeats on it, consent that lapses after silence (ICE's 30 s), and
//! hysteresis: a path lost is not taken again before a hold-down and two answered checks.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The path timers.
#[derive(Debug, Clone)]
pub struct PathTimers {
    /// Between two checks of one candidate.
    pub check_every: Duration,
    /// Checks per candidate in one round.
    pub checks: u32,
    /// Between heartbeats on the direct path (which keep the NATs' mappings too).
    pub heartbeat: Duration,
    /// Silence after which the direct path's consent lapses and traffic falls back to the relay.
    pub consent: Duration,
    /// Between rounds of checks while on the relay (upgrade probes).
    pub reprobe: Duration,
    /// After a direct path is lost, how long before one is taken again.
    pub hold_down: Duration,
}

impl Default for PathTimers {
    fn default() -> Self {
        PathTimers {
            check_every: Duration::from_millis(50),
            checks: 40,
            heartbeat: Duration::from_secs(5),
            consent: Duration::from_secs(30),
            reprobe: Duration::from_secs(60),
            hold_down: Duration::from_secs(10),
        }
    }
}

/// Most candidates kept per peer.
pub const MAX_CANDIDATES: usize = 16;
/// Probe ids remembered per candidate (answers to older ones are ignored).
const REMEMBERED: usize = 8;
/// Most checks sent per `check_every`, over all candidates: however many addresses a peer names,
/// what we send to them stays at ICE's order (one check per Ta), while a peer's usual few
/// candidates are all checked at full pace.
const CHECKS_PER_TICK: usize = 4;

#[derive(Debug, Clone)]
struct Candidate {
    addr: SocketAddr,
    checks_left: u32,
    next_check: Instant,
    sent: Vec<(u64, Instant)>,
    /// Checks answered in a row.
    streak: u32,
    last_heard: Option<Instant>,
    /// When a check of ours to it was last answered: its consent (RFC 7675 refreshes consent
    /// only so, so that a path blocked our way is dropped even while the peer's packets come).
    consented: Option<Instant>,
    rtt: Option<Duration>,
}

/// A change of path to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// Now direct, at this address, with this round-trip time.
    Direct(SocketAddr, Duration),
    /// Back to the relay.
    Relay,
}

/// One peer's candidates and chosen direct path.
#[derive(Debug)]
pub struct Paths {
    timers: PathTimers,
    cands: Vec<Candidate>,
    direct: Option<SocketAddr>,
    lost_at: Option<Instant>,
    next_heartbeat: Option<Instant>,
    next_round: Option<Instant>,
    /// Whether checks may go out (the session is open: probes are sealed).
    active: bool,
    /// Addresses never checked: the relay's (its port takes only the relay's protocol).
    never: Vec<SocketAddr>,
    /// Whether loopback addresses are checked: only when we are on loopback too.
    loopback: bool,
    /// When the checks of the last `check_every` went (at most CHECKS_PER_TICK).
    recent: Vec<Instant>,
}

impl Paths {
    /// No candidates yet; checks never go to `never`, nor to loopback unless `loopback`.
    pub fn new(timers: PathTimers, never: Vec<SocketAddr>, loopback: bool) -> Paths {
        Paths {
            timers,
            cands: Vec::new(),
            direct: None,
            lost_at: None,
            next_heartbeat: None,
            next_round: None,
            active: false,
            never,
            loopback,
            recent: Vec::new(),
        }
    }

    /// Whether `addr` can be a peer's. A peer names its candidates freely, and each is a place
    /// it makes us send to: never an address no host has (unspecified, port 0, multicast,
    /// broadcast), nor a link-local one (no scope to reach it by; 169.254.169.254 is a cloud's
    /// metadata service), nor loopback from afar, nor the relay. An IPv4-mapped address is
    /// judged as the IPv4 one it reaches.
    fn usable(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        let special = match ip {
            IpAddr::V4(v4) => v4.is_broadcast() || v4.is_link_local() || v4.octets()[0] == 0,
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        addr.port() != 0
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && !special
            && (self.loopback || !ip.is_loopback())
            && !self.never.contains(&SocketAddr::new(ip, addr.port()))
    }

    /// The direct path, if one is chosen.
    pub fn direct(&self) -> Option<SocketAddr> {
        self.direct
    }

    /// The chosen path's round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        let d = self.direct?;
        self.cands.iter().find(|c| c.addr == d)?.rtt
    }

    /// The session opened: checks may go out, starting now.
    pub fn activate(&mut self, now: Instant) {
        self.active = true;
        for c in &mut self.cands {
            c.next_check = now;
        }
    }

    /// Adds candidate `addr` (or restarts its checks if idle and it answered before: an address
    /// that never answered had its round, and a peer naming it again and again must not make
    /// us check it for ever).
    pub fn add(&mut self, addr: SocketAddr, now: Instant) {
        if !self.usable(addr) {
            return;
        }
        if let Some(c) = self.cands.iter_mut().find(|c| c.addr == addr) {
            if c.checks_left == 0 && self.direct != Some(addr) && c.rtt.is_some() {
                c.checks_left = self.timers.checks;
                c.next_check = now;
            }
            return;
        }
        if self.cands.len() >= MAX_CANDIDATES {
            // The oldest that is not the direct path makes room.
            let Some(i) = self.cands.iter().position(|c| Some(c.addr) != self.direct) else {
                return;
            };
            self.cands.remove(i);
        }
        self.cands.push(Candidate {
            addr,
            checks_left: self.timers.checks,
            next_check: now,
            sent: Vec::new(),
            streak: 0,
            last_heard: None,
            consented: None,
            rtt: None,
        });
    }

    /// Whether `addr` is a candidate.
    pub fn knows(&self, addr: SocketAddr) -> bool {
        self.cands.iter().any(|c| c.addr == addr)
    }

    /// An authentic packet came from `addr` (a candidate). One that never answered a check is
    /// checked again, idle: the peer is there now (its NAT may not have been open to our first
    /// round). A round per packet, which only the peer can seal.
    pub fn heard(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(c) = self.cands.iter_mut().find(|c| c.addr == addr) {
            c.last_heard = Some(now);
            if c.checks_left == 0 && c.rtt.is_none() && self.direct != Some(addr) {
                c.checks_left = self.timers.checks;
                c.next_check = now;
            }
        }
    }

    /// The probes due at `now`, as (address, id): checks, and the heartbeat on the direct path.
    pub fn due(&mut self, now: Instant, mut id: impl FnMut() -> u64) -> Vec<(SocketAddr, u64)> {
        let mut out = Vec::new();
        if !self.active {
            return out;
        }
        if self.direct.is_none() && self.next_round.is_some_and(|t| now >= t) {
            self.next_round = None;
            // Only addresses that answered before: upgrade probes for a path that worked. One
            // that never answered was a peer's guess, or a victim's address it named.
            for c in self.cands.iter_mut().filter(|c| c.rtt.is_some()) {
                c.checks_left = self.timers.checks;
                c.next_check = now;
            }
        }
        // The longest waiting first, as many as the pace allows; the others stay due.
        let every = self.timers.check_every;
        self.recent.retain(|&t| now < t + every);
        let mut waiting: Vec<usize> = (0..self.cands.len())
            .filter(|&i| self.cands[i].checks_left > 0 && now >= self.cands[i].next_check)
            .collect();
        waiting.sort_by_key(|&i| self.cands[i].next_check);
        for i in waiting
            .into_iter()
            .take(CHECKS_PER_TICK - self.recent.len())
        {
            let c = &mut self.cands[i];
            c.checks_left -= 1;
            c.next_check = now + every;
            let i = id();
            if c.sent.len() >= REMEMBERED {
                c.sent.remove(0);
            }
            c.sent.push((i, now));
            out.push((c.addr, i));
            self.recent.push(now);
        }
        if let Some(d) = self.direct
            && self.next_heartbeat.is_some_and(|t| now >= t)
        {
            self.next_heartbeat = Some(now + self.timers.heartbeat);
            if let Some(c) = self.cands.iter_mut().find(|c| c.addr == d)
                && !out.iter().any(|(a, _)| *a == d)
            {
                let i = id();
                if c.sent.len() >= REMEMBERED {
                    c.sent.remove(0);
                }
                c.sent.push((i, now));
                out.push((d, i));
            }
        }
        if self.direct.is_none()
            && self.next_round.is_none()
            && self.cands.iter().all(|c| c.checks_left == 0)
            && !self.cands.is_empty()
        {
            self.next_round = Some(now + self.timers.reprobe);
        }
        out
    }

    /// Probe `id`, sent to `addr`, was answered: the candidate is valid; returns a switch to it
    /// if it is taken.
    pub fn answered(&mut self, addr: SocketAddr, id: u64, now: Instant) -> Option<Switch> {
        let t = &self.timers;
        let c = self.cands.iter_mut().find(|c| c.addr == addr)?;
        let at = c.sent.iter().position(|(i, _)| *i == id)?;
        let (_, sent) = c.sent.remove(at);
        let rtt = now.saturating_duration_since(sent);
        c.rtt = Some(c.rtt.map_or(rtt, |r| (r * 7 + rtt) / 8));
        c.streak += 1;
        c.last_heard = Some(now);
        c.consented = Some(now);
        let (streak, rtt) = (c.streak, c.rtt.unwrap_or(rtt));
        match self.direct {
            Some(d) if d == addr => None,
            Some(d) => {
                // Another path answers while the chosen one is silent: the peer (or we) moved.
                let silent = self
                    .cands
                    .iter()
                    .find(|c| c.addr == d)
                    .and_then(|c| c.last_heard)
                    .is_none_or(|h| now.saturating_duration_since(h) > t.heartbeat);
                silent.then(|| self.take(addr, rtt, now))
            }
            None => {
                let held = self
                    .lost_at
                    .is_some_and(|l| now < l + t.hold_down || streak < 2);
                (!held).then(|| self.take(addr, rtt, now))
            }
        }
    }

    fn take(&mut self, addr: SocketAddr, rtt: Duration, now: Instant) -> Switch {
        self.direct = Some(addr);
        self.next_heartbeat = Some(now + self.timers.heartbeat);
        self.next_round = None;
        // Checks of the others stop: one direct path is enough.
        for c in &mut self.cands {
            c.checks_left = 0;
        }
        Switch::Direct(addr, rtt)
    }

    /// Lapses consent on a silent direct path; returns the fall back to the relay.
    pub fn expire(&mut self, now: Instant) -> Option<Switch> {
        let d = self.direct?;
        let c = self.cands.iter_mut().find(|c| c.addr == d)?;
        let consented = c.consented.unwrap_or(now);
        if now.saturating_duration_since(consented) < self.timers.consent {
            return None;
        }
        // Answers before the loss do not count towards taking a path again.
        for c in &mut self.cands {
            c.streak = 0;
        }
        self.direct = None;
        self.lost_at = Some(now);
        self.next_heartbeat = None;
        // Upgrade probes after the hold-down.
        self.next_round = Some(now + self.timers.hold_down);
        Some(Switch::Relay)
    }

    /// When [`Paths::due`] or [`Paths::expire`] next has work.
    pub fn timeout(&self) -> Option<Instant> {
        if !self.active {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        // With the pace's share taken, the next check waits for the oldest to age out.
        let paced = (self.recent.len() >= CHECKS_PER_TICK)
            .then(|| self.recent[0] + self.timers.check_every);
        for c in &self.cands {
            if c.checks_left > 0 {
                at(paced.map_or(c.next_check, |p| p.max(c.next_check)));
            }
        }
        if let Some(h) = self.next_heartbeat {
            at(h);
        }
        if let Some(r) = self.next_round {
            at(r);
        }
        if let Some(d) = self.direct
            && let Some(h) = self
                .cands
                .iter()
                .find(|c| c.addr == d)
                .and_then(|c| c.consented)
        {
            at(h + self.timers.consent);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_path_answered_is_taken_lapses_after_silence_and_comes_back_only_after_the_hold_down() {
        let t0 = Instant::now();
        let mut p = Paths::new(PathTimers::default(), Vec::new(), false);
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        p.add(a, t0);
        assert!(p.due(t0, || 1).is_empty(), "no checks before the session");
        p.activate(t0);
        let mut n = 0;
        let probes = p.due(t0, || {
            n += 1;
            n
        });
        assert_eq!(probes, [(a, 1)]);
        assert_eq!(p.answered(a, 99, ms(t0, 5)), None, "an id never sent");
        assert_eq!(
            p.answered(a, 1, ms(t0, 10)),
            Some(Switch::Direct(a, Duration::from_millis(10)))
        );
        assert_eq!(p.expire(ms(t0, 29_000)), None);
        assert_eq!(p.expire(ms(t0, 30_010)), Some(Switch::Relay));
        // Within the hold-down, an answer does not bring it back.
        p.add(a, ms(t0, 30_020));
        let probes = p.due(ms(t0, 30_020), || 7);
        assert_eq!(probes, [(a, 7)]);
        assert_eq!(p.answered(a, 7, ms(t0, 30_030)), None, "held down");
        let probes = p.due(ms(t0, 41_000), || 8);
        assert_eq!(probes, [(a, 8)]);
        assert_eq!(
            p.answered(a, 8, ms(t0, 41_010)),
            Some(Switch::Direct(a, Duration::from_millis(10)))
        );
    }
}
