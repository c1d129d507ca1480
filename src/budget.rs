//! Budgets: who pays for each datagram the relay sends. Shared by every worker and the reaper,
//! so that no limit multiplies with the number of workers.
//!
//! Any source address can be forged, so what an unauthenticated request makes the relay send to
//! its source must be paid by that address's host, its /24 (/48) and the relay as a whole: each
//! starts with a small credit and earns what it sends in, never anything by the clock. Over any
//! flood forged in a victim's name, the victim's network gets at most what was sent in its name
//! beyond the prefix's credit. Announcements are paid by the host whose datagram caused them (it
//! earns twice what it sends, beyond a fixed allowance) and are capped per recipient by a rate.
//! News an unauthenticated datagram causes is not told to trusted peers of its own /24 (/48) at
//! all: whoever forges a neighbour's address forges in that network's name. It is told when the
//! registration proves itself (see [`crate::presence::announce_to_neighbours`]). Forwards are
//! paid by their sender's own admission limits ([`crate::ratelimit`]).
//!
//! Every table is a fixed array of atomics indexed by a keyed hash: memory is bounded whatever
//! the input, and state is never reset (a name going away changes nothing). Keys that share a
//! slot share its balance; with a random key per start-up, nobody can choose whom they share with.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::addr::{customer_key, host_key, prefix};
use crate::keyed::Keyed;
use crate::metrics::Counters;
use crate::out::{Kind, Out, Send};
use crate::settings::Settings;

/// A request's own bytes pay for replies to its source up to this many times its size: QUIC's
/// anti-amplification factor (RFC 9000 §8). Only what goes beyond is paid from the pools.
pub const ANSWER_FACTOR: usize = 3;
/// Bytes of a host's reply budget that announcements to an untrusted registration may not use,
/// so that a `peer_list` after a `register_ack` still finds them.
pub const RESERVE: i64 = 512;
/// Bytes that acks nobody needs and keepalives to an untrusted registration (an old peer
/// ignores both) may not use: what the host earns goes to its `register_ack` and its
/// announcements first.
pub const COURTESY_RESERVE: i64 = 1536;
/// A reply budget may bank at most this many times its credit from what its owner sent.
const CAP_CREDITS: i64 = 16;
/// A host's fan-out budget earns this many bytes per byte it sends.
const FANOUT_EARN: i64 = 2;
/// A recipient's presence budget allows bursts of this many seconds' worth of its rate.
const PRESENCE_BURST_S: u64 = 4;
/// Registrations and signature checks allow bursts of this many seconds' worth of their rate.
const REGISTRATION_BURST_S: u64 = 10;
/// Displacements allow bursts of this many seconds' worth of their rate.
const DISPLACEMENT_BURST_S: u64 = 10;

/// Displacements a second one network may cause: a sixteenth of the names kept for displaced
/// peers, spread over a peer timeout (68 a second at the default of 60 s).
fn displacement_rate(s: &Settings) -> u64 {
    let timeout_s = (s.peer_timeout_ms / 1000).max(1);
    ((crate::reservations::MAX / 16) as u64 / timeout_s).max(1)
}

/// A /48 (IPv4: /24) may cost this many times the signature checks of a /56 (an IPv4 address).
const SIGNATURE_NETWORK_FACTOR: u64 = 8;
/// A relay-originated send to a trusted peer this small (a `server_keepalive`) is free; a larger
/// one (a coalesced `peer_list`) is held to the recipient's presence rate.
const KEEPALIVE_FREE: usize = 256;
/// Most recipients owed a coalesced `peer_list` at once; beyond, they hear at their next change.
const OWED_MAX: usize = 65_536;

const HOST_SLOTS: usize = 1 << 18;
const PREFIX_SLOTS: usize = 1 << 16;
const LIMIT_SLOTS: usize = 1 << 16;

/// A fixed array of atomics indexed by a keyed hash.
struct Table<T> {
    slots: Box<[T]>,
    hasher: Keyed,
}

impl<T: Default> Table<T> {
    fn new(n: usize) -> Table<T> {
        Table {
            slots: (0..n).map(|_| T::default()).collect(),
            hasher: Keyed::random(),
        }
    }

    fn slot(&self, key: impl Hash) -> &T {
        let h = self.hasher.hash_one(key) as usize;
        &self.slots[h % self.slots.len()]
    }
}

/// Balances that start at a credit, earn what their owner sends and are spent by what it gets.
/// A slot holds what was used beyond the credit (zero: a fresh credit).
struct Earned {
    /// Full size whatever the credit: a reload may lift a credit of 0 (no limit) to one.
    table: Table<AtomicI64>,
    /// Bytes (0: no limit); a reload may change it, so every use reads it once.
    credit: AtomicI64,
    /// How many credits a balance may bank: its cap is this times the credit, derived from the
    /// one atomic so that a reload cannot pair a new credit with an old cap.
    cap_credits: i64,
}

impl Earned {
    fn new(slots: usize, credit: u64, cap_credits: i64) -> Earned {
        Earned {
            table: Table::new(slots),
            credit: AtomicI64::new(Earned::clamp(credit)),
            cap_credits,
        }
    }

    /// A credit as a balance holds it: bounded, so that no balance overflows.
    fn clamp(credit: u64) -> i64 {
        i64::try_from(credit).unwrap_or(i64::MAX).min(i64::MAX / 4)
    }

    /// Puts `credit` in force. What each balance used stays: lowered below it, a balance has
    /// nothing to spend until its owner earns it back.
    fn set_credit(&self, credit: u64) {
        self.credit.store(Earned::clamp(credit), Relaxed);
    }

    /// The credit in force (0: no limit).
    fn credit(&self) -> i64 {
        self.credit.load(Relaxed)
    }

    fn earn(&self, key: impl Hash, n: i64) {
        let credit = self.credit();
        if credit == 0 {
            return;
        }
        let floor = credit - credit.saturating_mul(self.cap_credits);
        let slot = self.table.slot(key);
        // A busy host's balance sits at its cap: reading it costs no cache line's ownership.
        if slot.load(Relaxed) <= floor {
            return;
        }
        let _ = slot.fetch_update(Relaxed, Relaxed, |used| Some((used - n).max(floor)));
    }

    /// What a balance of the credit in force holds: used at most the credit (`spend` keeps it
    /// there), banked at most its cap (`earn` stops there); nothing without a credit.
    fn bounds(&self) -> (i64, i64) {
        let credit = self.credit();
        (credit - credit.saturating_mul(self.cap_credits), credit)
    }

    fn available(&self, key: impl Hash) -> i64 {
        let credit = self.credit();
        if credit == 0 {
            return i64::MAX;
        }
        credit - self.table.slot(key).load(Relaxed)
    }

    /// Spends `n` if at least `n + reserve` is available.
    fn spend(&self, key: impl Hash, n: i64, reserve: i64) -> bool {
        self.spend_from(key, n, reserve).is_some()
    }

    /// Spends `n` if at least `n + reserve` is available; how much of it went beyond what the
    /// balance had earned (into its credit): all of it, without a limit.
    fn spend_from(&self, key: impl Hash, n: i64, reserve: i64) -> Option<i64> {
        let credit = self.credit();
        if credit == 0 {
            return Some(n);
        }
        let before = self
            .table
            .slot(key)
            .fetch_update(Relaxed, Relaxed, |used| {
                (credit - used - reserve >= n).then_some(used + n)
            })
            .ok()?;
        Some((before + n).max(0) - before.max(0))
    }

    /// What a balance has earned beyond its credit (a forger's networks have none).
    fn banked(&self, key: impl Hash) -> i64 {
        if self.credit() == 0 {
            return 0;
        }
        (-self.table.slot(key).load(Relaxed)).max(0)
    }

    /// Gives back `n` just spent (when another budget of the same send refused it). A reload
    /// between the two may leave one send's bytes on a balance, or give them: no more.
    fn refund(&self, key: impl Hash, n: i64) {
        if self.credit() != 0 {
            self.table.slot(key).fetch_sub(n, Relaxed);
        }
    }
}

/// Token buckets refilled by the clock: a slot packs the units used (high half) and when it was
/// last refilled (low half, in tenths of a second).
struct Clocked {
    table: Table<AtomicU64>,
    /// Tokens a second (0: no limit); a reload may change it, so the table is always full size.
    rate: AtomicU64,
    burst_s: u64,
}

impl Clocked {
    fn new(slots: usize, rate: u64, burst_s: u64) -> Clocked {
        Clocked {
            table: Table::new(slots),
            rate: AtomicU64::new(rate),
            burst_s,
        }
    }

    /// The most units a bucket of `rate` holds.
    fn burst_of(&self, rate: u64) -> u64 {
        rate.saturating_mul(self.burst_s)
            .clamp(1, u64::from(u32::MAX))
    }

    /// The most units a bucket of the rate in force holds (0: none, without a limit).
    fn burst(&self) -> u64 {
        match self.rate.load(Relaxed) {
            0 => 0,
            rate => self.burst_of(rate),
        }
    }

    fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Relaxed);
    }

    /// Gives back `n` units just taken from `key`'s bucket.
    fn give(&self, key: impl Hash, n: u64) {
        let _ = self
            .table
            .slot(key)
            .fetch_update(Relaxed, Relaxed, |state| {
                Some(((state >> 32).saturating_sub(n) << 32) | (state & u64::from(u32::MAX)))
            });
    }

    fn take(&self, key: impl Hash, cost: u64, now_ms: u64) -> bool {
        let rate = self.rate.load(Relaxed);
        if rate == 0 {
            return true;
        }
        let burst = self.burst_of(rate);
        let now_ds = (now_ms / 100) as u32;
        self.table
            .slot(key)
            .fetch_update(Relaxed, Relaxed, |state| {
                let (used, at) = (state >> 32, state as u32);
                let refill = u64::from(now_ds.saturating_sub(at)).saturating_mul(rate) / 10;
                let used = used.saturating_sub(refill);
                (used + cost <= burst).then(|| ((used + cost) << 32) | u64::from(now_ds.max(at)))
            })
            .is_ok()
    }
}

/// A bucket of misses holds this many seconds of its rate: at the default of 2 a second, 512,
/// two watches of `--max-watch` names none of which is online.
const MISS_BURST_S: u64 = 256;
/// A network's bucket of misses has this many times a host's rate.
const NETWORK_MISSES: u64 = 4;

/// Lookups and watches of names that are not online (misses), per host and per network (/24,
/// /48), so that nobody learns at speed which of many guessed names are registered; names that
/// are online (hits) cost nothing. A request takes as many tokens as it names (at most a
/// bucket's burst) before they are looked up, and gives the hits back: whether it is refused
/// depends on what it asks and on what earlier answers told, never on the names it asks
/// about. Authenticated and unauthenticated requests have buckets of their own, so that what a
/// forger spends in a host's name never refuses that host's authenticated requests. Not
/// handed over: a takeover gives each a burst again.
pub struct Misses {
    host: Clocked,
    network: Clocked,
}

impl Misses {
    /// The buckets of `s` (`--miss-rate`).
    pub fn new(s: &Settings) -> Misses {
        Misses {
            host: Clocked::new(LIMIT_SLOTS, s.miss_rate, MISS_BURST_S),
            network: Clocked::new(
                PREFIX_SLOTS,
                s.miss_rate.saturating_mul(NETWORK_MISSES),
                MISS_BURST_S,
            ),
        }
    }

    /// Puts the rate of `s` in force (a reload).
    pub fn retune(&self, s: &Settings) {
        self.host.set_rate(s.miss_rate);
        self.network
            .set_rate(s.miss_rate.saturating_mul(NETWORK_MISSES));
    }

    /// Takes `n` misses (at most a burst) from `from`'s host and network at `now_ms`; false
    /// (taking none) if either has fewer left.
    pub fn reserve(&self, from: IpAddr, authed: bool, n: usize, now_ms: u64) -> bool {
        let n = (n as u64).min(self.host.burst().max(1));
        let (host, net) = ((host_key(from), authed), (prefix(from), authed));
        if !self.host.take(host, n, now_ms) {
            return false;
        }
        if !self.network.take(net, n, now_ms) {
            self.host.give(host, n);
            return false;
        }
        true
    }

    /// Gives back what [`Misses::reserve`] took for `asked` names beyond their misses: the
    /// `hits` among them.
    pub fn hits(&self, from: IpAddr, authed: bool, asked: usize, hits: usize) {
        let taken = (asked as u64).min(self.host.burst().max(1));
        let misses = asked.saturating_sub(hits) as u64;
        let back = taken.saturating_sub(misses);
        if back > 0 {
            self.host.give((host_key(from), authed), back);
            self.network.give((prefix(from), authed), back);
        }
    }
}

/// A table of balances as a handover image holds it.
#[derive(Serialize, Deserialize)]
pub struct TableImage {
    slots: Vec<u64>,
    hasher: Keyed,
}

/// A slot of a table, as an image holds it: its bits.
trait Bits {
    fn bits(&self) -> u64;
    fn set_bits(&self, v: u64);
}

impl Bits for AtomicU64 {
    fn bits(&self) -> u64 {
        self.load(Relaxed)
    }
    fn set_bits(&self, v: u64) {
        self.store(v, Relaxed);
    }
}

impl Bits for AtomicI64 {
    fn bits(&self) -> u64 {
        self.load(Relaxed) as u64
    }
    fn set_bits(&self, v: u64) {
        self.store(v as i64, Relaxed);
    }
}

impl<T: Bits> Table<T> {
    fn export(&self) -> TableImage {
        TableImage {
            slots: self.slots.iter().map(Bits::bits).collect(),
            hasher: self.hasher,
        }
    }

    /// Takes up `image` if it is a table of this size, each slot made what `valid` makes it.
    fn restore(&mut self, image: TableImage, valid: impl Fn(u64) -> u64) {
        if image.slots.len() != self.slots.len() {
            return;
        }
        self.hasher = image.hasher;
        for (slot, v) in self.slots.iter().zip(image.slots) {
            slot.set_bits(valid(v));
        }
    }
}

/// Every budget's balances as a handover image holds them.
#[derive(Serialize, Deserialize)]
pub struct Image {
    reply_host: TableImage,
    reply_prefix: TableImage,
    reply_global: TableImage,
    fanout: TableImage,
    presence: TableImage,
    registrations: TableImage,
    owed: Vec<SocketAddr>,
}

impl Budgets {
    /// Every balance, for a relay that takes over (meant for a relay whose workers stopped).
    pub fn export(&self) -> Image {
        Image {
            reply_host: self.reply_host.table.export(),
            reply_prefix: self.reply_prefix.table.export(),
            reply_global: self.reply_global.table.export(),
            fanout: self.fanout.table.export(),
            presence: self.presence.table.export(),
            registrations: self.registrations.table.export(),
            owed: self
                .owed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect(),
        }
    }

    /// Takes up the balances of `image` at `now_ms`: tables of another size stay fresh, a
    /// bucket refilled later than `now_ms` is taken as refilled now, and no balance holds
    /// more (or less) than one of the credits and rates in force can: a crafted image, or a
    /// relay of higher limits, would otherwise leave a budget refusing for as long as these
    /// take to refill or earn that back (the relay-wide reply budget: for ever).
    pub fn restore(&mut self, image: Image, now_ms: u64) {
        let now_ds = (now_ms / 100) as u32;
        let within = |burst: u64| {
            move |state: u64| {
                let at = (state as u32).min(now_ds);
                ((state >> 32).min(burst) << 32) | u64::from(at)
            }
        };
        for (earned, image) in [
            (&mut self.reply_host, image.reply_host),
            (&mut self.reply_prefix, image.reply_prefix),
            (&mut self.reply_global, image.reply_global),
            (&mut self.fanout, image.fanout),
        ] {
            // What a balance of the credit in force can hold, within the bounds no arithmetic
            // on it overflows past.
            let (lo, hi) = earned.bounds();
            earned
                .table
                .restore(image, |v| (v as i64).clamp(lo, hi) as u64);
        }
        let burst = self.presence.burst();
        self.presence.table.restore(image.presence, within(burst));
        let burst = self.registrations.burst();
        self.registrations
            .table
            .restore(image.registrations, within(burst));
        self.keep_owed(image.owed);
    }
}

/// Whose datagram caused a batch of sends, which decides who pays for its announcements.
#[derive(Clone, Copy, Debug)]
pub enum Cause {
    /// The relay itself (keepalives, coalesced lists).
    Relay,
    /// A datagram from this host that carried its session.
    Authenticated(IpAddr),
    /// A datagram from this host that proved nothing (or a reaped registration it made).
    Unauthenticated(IpAddr),
}

impl Cause {
    fn host(self) -> Option<IpAddr> {
        match self {
            Cause::Relay => None,
            Cause::Authenticated(ip) | Cause::Unauthenticated(ip) => Some(ip),
        }
    }
}

/// What one unauthenticated request's own bytes pay for: replies to its source, up to
/// [`ANSWER_FACTOR`] times its size, whatever anyone else spent from the pools.
#[derive(Clone, Copy, Debug)]
pub struct Own {
    to: SocketAddr,
    bytes: usize,
    left: usize,
}

impl Own {
    /// The allowance of a request of `len` bytes from `from`.
    pub fn of(from: SocketAddr, len: usize) -> Own {
        let bytes = len.saturating_mul(ANSWER_FACTOR);
        Own {
            to: from,
            bytes,
            left: bytes,
        }
    }

    /// Whether a send of `len` bytes to `to` fits what is left of it.
    fn pays(&self, to: SocketAddr, len: usize) -> bool {
        to == self.to && len <= self.left
    }
}

/// Every budget of the relay.
pub struct Budgets {
    reply_host: Earned,
    reply_prefix: Earned,
    reply_global: Earned,
    fanout: Earned,
    presence: Clocked,
    /// New names per source address (IP and port: one NAT mapping, so that names forged at a
    /// host's other ports take nothing from its users).
    registrations: Clocked,
    /// Signature checks per /56 (IPv4 address), per /48 (IPv4 /24) and in the relay: CPU a
    /// source may cost. Not handed over: they refill within a burst's time.
    signatures: [Clocked; 3],
    /// Displacements from a full registry per network (/24, /48): a sixteenth of the names kept
    /// for displaced peers ([`crate::reservations::MAX`]) a peer timeout, so that it takes
    /// sixteen networks to cycle them. Not handed over.
    displacements: Clocked,
    /// Trusted recipients an announcement was withheld from: each gets one `peer_list` later.
    owed: Mutex<HashSet<SocketAddr>>,
}

/// What a settled send cost, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Sent,
    Withheld,
    /// Withheld, and the recipient is owed a `peer_list` for it.
    Owed,
}

impl Budgets {
    /// The budgets `s` configures.
    pub fn new(s: &Settings) -> Budgets {
        Budgets {
            reply_host: Earned::new(HOST_SLOTS, s.reply_credit, CAP_CREDITS),
            reply_prefix: Earned::new(PREFIX_SLOTS, s.reply_prefix_credit, CAP_CREDITS),
            reply_global: Earned::new(1, s.reply_global_credit, CAP_CREDITS),
            // A host's fan-out banks no more than its allowance.
            fanout: Earned::new(LIMIT_SLOTS, s.fanout_allowance, 1),
            presence: Clocked::new(LIMIT_SLOTS, s.presence_rate, PRESENCE_BURST_S),
            registrations: Clocked::new(LIMIT_SLOTS, s.registration_rate, REGISTRATION_BURST_S),
            signatures: [
                Clocked::new(LIMIT_SLOTS, s.registration_rate, REGISTRATION_BURST_S),
                Clocked::new(
                    LIMIT_SLOTS,
                    s.registration_rate.saturating_mul(SIGNATURE_NETWORK_FACTOR),
                    REGISTRATION_BURST_S,
                ),
                Clocked::new(1, s.signature_rate, REGISTRATION_BURST_S),
            ],
            displacements: Clocked::new(LIMIT_SLOTS, displacement_rate(s), DISPLACEMENT_BURST_S),
            owed: Mutex::default(),
        }
    }

    /// Puts in force the credits, the fan-out allowance and the rates of `s` (a reload).
    pub fn retune(&self, s: &Settings) {
        self.reply_host.set_credit(s.reply_credit);
        self.reply_prefix.set_credit(s.reply_prefix_credit);
        self.reply_global.set_credit(s.reply_global_credit);
        self.fanout.set_credit(s.fanout_allowance);
        self.presence.set_rate(s.presence_rate);
        self.registrations.set_rate(s.registration_rate);
        let [small, large, all] = &self.signatures;
        small.set_rate(s.registration_rate);
        large.set_rate(s.registration_rate.saturating_mul(SIGNATURE_NETWORK_FACTOR));
        all.set_rate(s.signature_rate);
        self.displacements.set_rate(displacement_rate(s));
    }

    /// The fan-out allowance in force (`--fanout-allowance`; 0: no limit), which sizes
    /// announcements to many recipients.
    pub fn fanout_allowance(&self) -> u64 {
        self.fanout.credit() as u64
    }

    /// Credits `len` bytes `from` sent to its host's fan-out budget, twice over: what it sends
    /// pays for the announcements it causes (settled after this). A forward is itself what it
    /// pays for, and earns nothing.
    pub fn earn_fanout(&self, from: IpAddr, len: usize) {
        self.fanout.earn(host_key(from), FANOUT_EARN * len as i64);
    }

    /// Credits what is left of an unauthenticated request of `len` bytes, once its replies used
    /// `used` of its own allowance, to its host's, prefix's and the relay's reply budgets: at
    /// most `len`, so that what the request paid for itself and what it banked together stay
    /// within [`ANSWER_FACTOR`] times its size. An authenticated request earns nothing here:
    /// its replies are free, and it must not bank credit a forger could spend.
    pub fn earn_replies(&self, from: IpAddr, len: usize, used: usize) {
        let n = len.min((len * ANSWER_FACTOR).saturating_sub(used)) as i64;
        if n > 0 {
            self.reply_host.earn(from, n);
            self.reply_prefix.earn(prefix(from), n);
            self.reply_global.earn((), n);
        }
    }

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

    /// How many bytes of replies `to` could be sent now (for choosing an error's short form).
    pub fn reply_available(&self, to: IpAddr) -> i64 {
        let a = self.reply_host.available(to);
        let net = prefix(to);
        let p = self.reply_prefix.available(net);
        let earned = self.reply_prefix.banked(net);
        a.min(p)
            .min(earned.saturating_add(self.reply_global.available(())))
    }

    /// Pays a reply of `n` bytes to `to` from the pools now, while its request is decided, so
    /// that its form can follow what was paid; the send then goes out as settled.
    pub fn prepay(&self, to: IpAddr, n: usize) -> bool {
        self.spend_reply(to, n as i64, 0)
    }

    /// Spends `n` bytes of `to`'s host and prefix reply budgets, keeping `reserve`, and of the
    /// relay's for what the prefix had not earned: what a network earned is its own, and only
    /// its credit, the part a forger can spend in its name, is drawn from the relay-wide pool,
    /// so that a flood forged from many networks cannot take what others paid for.
    fn spend_reply(&self, to: IpAddr, n: i64, reserve: i64) -> bool {
        if !self.reply_host.spend(to, n, reserve) {
            return false;
        }
        let Some(unearned) = self.reply_prefix.spend_from(prefix(to), n, reserve) else {
            self.reply_host.refund(to, n);
            return false;
        };
        if unearned > 0 && !self.reply_global.spend((), unearned, 0) {
            self.reply_host.refund(to, n);
            self.reply_prefix.refund(prefix(to), n);
            return false;
        }
        true
    }

    fn settle_one(
        &self,
        s: &Send,
        len: usize,
        cause: Cause,
        own: &mut Option<Own>,
        now_ms: u64,
    ) -> Verdict {
        let n = len as i64;
        let to = s.to.ip();
        let ok = match (s.kind, s.trusted) {
            (Kind::Forward, _) | (Kind::Reply | Kind::Courtesy, true) => true,
            // The request pays for its own answer, in whole sends while its bytes last.
            (Kind::Reply | Kind::Courtesy, false) if own.is_some_and(|o| o.pays(s.to, len)) => {
                if let Some(o) = own {
                    o.left -= len;
                }
                true
            }
            // A coalesced list (a keepalive's worth of presence) is held to the presence rate.
            (Kind::Keepalive, true) => {
                len <= KEEPALIVE_FREE || self.presence.take(s.to, len as u64, now_ms)
            }
            (Kind::Reply, false) => self.spend_reply(to, n, 0),
            (Kind::Courtesy | Kind::Keepalive, false) => self.spend_reply(to, n, COURTESY_RESERVE),
            (Kind::Announce, trusted) => {
                // Unproven news of a neighbour waits for its proof (it may be forged).
                if trusted
                    && matches!(cause, Cause::Unauthenticated(ip) if prefix(ip) == prefix(to))
                {
                    return Verdict::Withheld;
                }
                let key = cause.host().map(host_key);
                // A payer that cannot pay gets nothing sent, now or later: owing a list for it
                // would let anyone make the relay send lists at no cost.
                if let Some(k) = key {
                    if !self.fanout.spend(k, n, 0) {
                        return Verdict::Withheld;
                    }
                }
                if !trusted && !self.spend_reply(to, n, RESERVE) {
                    if let Some(k) = key {
                        self.fanout.refund(k, n);
                    }
                    return Verdict::Withheld;
                }
                if !self.presence.take(s.to, len as u64, now_ms) {
                    // Paid, but the recipient hears too much: it gets one list later instead,
                    // itself held to the presence rate.
                    return if trusted {
                        Verdict::Owed
                    } else {
                        Verdict::Withheld
                    };
                }
                true
            }
        };
        if ok { Verdict::Sent } else { Verdict::Withheld }
    }

    /// Withholds, among `out.sends[start..]`, what its payers cannot pay, and counts it;
    /// `cause` is whose datagram caused them, `own` what that datagram's own bytes pay for.
    /// Returns how many of those bytes its replies used.
    pub fn settle(
        &self,
        out: &mut Out,
        start: usize,
        cause: Cause,
        own: Option<Own>,
        now_ms: u64,
        c: &Counters,
    ) -> usize {
        if out.sends[start..].iter().all(|s| s.kind == Kind::Forward) {
            return 0;
        }
        let mut own = own;
        let mut i = 0;
        let mut owed = Vec::new();
        // A reply withheld makes the replies after it to the same address pointless (a
        // `peer_list` without its `register_ack`): they are withheld too.
        let mut cut = None;
        out.sends.retain(|s| {
            i += 1;
            if i <= start {
                return true;
            }
            let v = if s.kind == Kind::Reply && cut == Some(s.to) {
                Verdict::Withheld
            } else {
                self.settle_one(s, s.wire_len(), cause, &mut own, now_ms)
            };
            if v != Verdict::Sent && s.kind == Kind::Reply {
                cut = Some(s.to);
            }
            if v != Verdict::Sent {
                let counter = match s.kind {
                    Kind::Announce => &c.withheld_announcements,
                    Kind::Keepalive => &c.withheld_keepalives,
                    _ => &c.withheld_replies,
                };
                Counters::add(counter, 1);
            }
            if v == Verdict::Owed {
                owed.push(s.to);
            }
            v == Verdict::Sent
        });
        if !owed.is_empty() {
            self.keep_owed(owed);
        }
        own.map_or(0, |o| o.bytes - o.left)
    }

    /// Takes the recipients owed a coalesced `peer_list`.
    pub fn take_owed(&self) -> HashSet<SocketAddr> {
        std::mem::take(&mut *self.owed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back recipients whose list is not due yet.
    pub fn keep_owed(&self, keep: impl IntoIterator<Item = SocketAddr>) {
        let mut set = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        for to in keep {
            if set.len() < OWED_MAX {
                set.insert(to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            reply_credit: 2048,
            reply_prefix_credit: 4096,
            reply_global_credit: 1 << 20,
            fanout_allowance: 65_536,
            presence_rate: 4096,
            ..Settings::default()
        }
    }

    #[test]
    fn replies_beyond_the_credit_are_paid_by_what_the_host_sends() {
        let b = Budgets::new(&settings());
        let victim: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(b.spend_reply(victim, 2000, 0));
        assert!(!b.spend_reply(victim, 100, 0), "the credit is spent");
        b.earn_replies(victim, 60, 0);
        assert!(b.spend_reply(victim, 100, 0), "48 left and 60 earned");
        assert!(!b.spend_reply(victim, 10, 0));
        // Neighbours have credits of their own but share the /24's 4 KiB.
        let neighbour: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(b.spend_reply(neighbour, 2000, 0));
        let third: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(!b.spend_reply(third, 100, 0), "the prefix is spent");
        // A refusal by the prefix leaves the host's balance as it was.
        assert_eq!(b.reply_host.available(third), 2048);
        // Courtesies and announcements keep their reserves.
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(!b.spend_reply(other, 2048 - 1535, COURTESY_RESERVE));
        assert!(b.spend_reply(other, 2048 - 1536, COURTESY_RESERVE));
        assert!(!b.spend_reply(other, 1024 + 1, RESERVE));
        assert!(b.spend_reply(other, 1024, RESERVE));
    }

    #[test]
    fn the_relay_pool_pays_only_what_a_network_did_not_earn() {
        let s = Settings {
            reply_global_credit: 8192,
            ..settings()
        };
        let b = Budgets::new(&s);
        let earner: IpAddr = "198.51.100.1".parse().unwrap();
        b.earn_replies(earner, 3000, 0);
        // Forgers' networks spend their credits until the relay's pool is empty.
        let mut spent = 0;
        for net in 0..10u8 {
            let ip = IpAddr::from([203, 0, net, 1]);
            while b.spend_reply(ip, 1000, 0) {
                spent += 1000;
            }
        }
        // The pool's credit and what was earned in the relay (it earns what every network does).
        assert_eq!(spent, 11_000);
        let fresh: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!b.spend_reply(fresh, 200, 0), "nothing left for credit");
        assert!(b.reply_available(fresh) < 200);
        // What a network earned it spends whatever others did, taking nothing from the pool.
        let other: IpAddr = "198.51.100.2".parse().unwrap();
        b.earn_replies(other, 2000, 0);
        assert!(b.reply_available(other) >= 2000);
        let pool = b.reply_global.available(());
        assert!(b.spend_reply(other, 2000, 0));
        assert_eq!(b.reply_global.available(()), pool);
    }

    /// Settles one 100-byte announcement to `to` caused by `cause`; whether it was sent.
    fn announce(b: &Budgets, to: SocketAddr, cause: Cause, c: &Counters) -> bool {
        let mut out = Out::default();
        out.buf.extend_from_slice(&[b'x'; 100]);
        out.send_range(to, 0..100, Kind::Announce, true);
        b.settle(&mut out, 0, cause, None, 0, c);
        out.sends.len() == 1
    }

    #[test]
    fn unproven_news_of_a_neighbour_waits_for_its_proof() {
        let b = Budgets::new(&settings());
        let c = Counters::default();
        let victim: SocketAddr = "192.0.2.1:5".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.2".parse().unwrap();
        let same_host: IpAddr = "192.0.2.1".parse().unwrap();
        let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
        for from in [neighbour, same_host] {
            assert!(!announce(&b, victim, Cause::Unauthenticated(from), &c));
        }
        assert_eq!(
            b.fanout.available(host_key(neighbour)),
            65_536,
            "nothing spent"
        );
        // Proven, or from another network, it is paid by the causing host's fan-out.
        assert!(announce(&b, victim, Cause::Authenticated(neighbour), &c));
        assert!(announce(&b, victim, Cause::Unauthenticated(elsewhere), &c));
        assert_eq!(b.fanout.available(host_key(elsewhere)), 65_536 - 100);
        // To an untrusted neighbour it is paid from the recipient's reply budget, as ever; a
        // withheld one leaves the payer's fan-out as it was.
        let mut paid = 0;
        let mut out = Out::default();
        out.buf.extend_from_slice(&[b'x'; 100]);
        for _ in 0..40 {
            out.sends.clear();
            out.send_range(victim, 0..100, Kind::Announce, false);
            b.settle(&mut out, 0, Cause::Unauthenticated(neighbour), None, 0, &c);
            paid += out.sends.len();
        }
        assert_eq!(paid, 15, "2 KiB less the reserve");
        assert_eq!(
            b.fanout.available(host_key(neighbour)),
            65_536 - 100 - 15 * 100
        );
    }

    #[test]
    fn earnings_are_capped() {
        let b = Budgets::new(&settings());
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        b.earn_replies(ip, 10_000_000, 0);
        b.earn_fanout(ip, 10_000_000);
        assert_eq!(b.reply_host.available(ip), 16 * 2048);
        assert_eq!(b.fanout.available(host_key(ip)), 65_536);
    }

    #[test]
    fn a_retune_changes_credits_keeping_what_each_balance_used() {
        let b = Budgets::new(&settings());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(b.spend_reply(ip, 1500, 0));
        // Lowered below what the host used: it may spend nothing until it earns it back.
        b.retune(&Settings {
            reply_credit: 1000,
            ..settings()
        });
        assert_eq!(b.reply_host.available(ip), -500);
        assert!(!b.spend_reply(ip, 1, 0));
        b.earn_replies(ip, 600, 0);
        assert!(
            b.spend_reply(ip, 100, 0),
            "earned back past the lower credit"
        );
        assert!(!b.spend_reply(ip, 1, 0));
        // The cap follows the credit: 16 of the new one, not of the old.
        b.earn_replies(ip, 10_000_000, 0);
        assert_eq!(b.reply_host.available(ip), 16 * 1000);
    }

    #[test]
    fn a_credit_of_0_lifts_a_limit_and_a_retune_can_set_it_again() {
        let off = Settings::default();
        let b = Budgets::new(&off);
        let (ip, other): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        );
        assert!(b.spend_reply(ip, 1 << 30, 0), "no limit");
        assert_eq!(b.fanout_allowance(), 0);
        // Set at run time, each host has a credit of its own (the table was full size).
        b.retune(&settings());
        assert_eq!(b.fanout_allowance(), 65_536);
        assert!(b.spend_reply(ip, 2000, 0));
        assert!(!b.spend_reply(ip, 100, 0), "the new credit is spent");
        assert!(b.spend_reply(other, 2000, 0), "another host's is not");
        assert!(b.fanout.spend(host_key(ip), 65_536, 0));
        assert!(!b.fanout.spend(host_key(ip), 1, 0));
        b.retune(&off);
        assert!(b.spend_reply(ip, 1 << 30, 0), "lifted again");
        assert!(b.fanout.spend(host_key(ip), 1 << 30, 0));
    }

    #[test]
    fn hosts_of_one_ipv6_64_share_limits() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(host_key(a), host_key(b));
        assert_ne!(host_key(a), host_key(c));
    }

    #[test]
    fn registrations_are_limited_per_source_address() {
        let s = Settings {
            registration_rate: 1,
            ..settings()
        };
        let budgets = Budgets::new(&s);
        let a: SocketAddr = "192.0.2.7:1000".parse().unwrap();
        assert_eq!((0..20).filter(|_| budgets.register(a, 0)).count(), 10);
        // Another port of the host (another user behind its NAT) is not refused for it.
        assert!(budgets.register("192.0.2.7:1001".parse().unwrap(), 0));
        assert!(budgets.register(a, 1000), "a second later, one more");
    }

    #[test]
    fn signature_checks_are_limited_per_56_per_48_and_in_the_relay() {
        let s = Settings {
            registration_rate: 1,
            signature_rate: 100,
            ..settings()
        };
        let b = Budgets::new(&s);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A /56 spends its own ten, whichever of its /64s ask.
        let n = (0..20)
            .filter(|i| b.check_signature(ip(&format!("2001:db8:1:{i:x}::1")), 0))
            .count();
        assert_eq!(n, 10);
        assert!(
            !b.check_signature(ip("2001:db8:1:ff::1"), 0),
            "the same /56"
        );
        // Its /48 has eighty: the other /56s of it share the seventy left.
        let n = (1..20)
            .filter(|i| b.check_signature(ip(&format!("2001:db8:1:{i:x}00::1")), 0))
            .count();
        assert_eq!(n, 19);
        let n = (20..200)
            .filter(|i| b.check_signature(ip(&format!("2001:db8:1:{:x}00::1", i % 256)), 0))
            .count();
        assert_eq!(n, 80 - 10 - 19);
        // IPv4: an address, then its /24; then the relay's thousand run out.
        assert_eq!(
            (0..20)
                .filter(|_| b.check_signature(ip("192.0.2.1"), 0))
                .count(),
            10
        );
        let mut spent = 80 + 10;
        for net in 0..200u32 {
            for host in 1..=8u32 {
                spent += usize::from(
                    b.check_signature(ip(&format!("10.{}.{net}.{host}", net / 256)), 0),
                );
            }
        }
        assert_eq!(spent, 1000, "the relay's burst");
        assert!(
            b.check_signature(ip("198.51.100.1"), 100),
            "refilled a tenth of a second later"
        );
    }

    /// Balances taken over are those a relay of these credits and rates could hold: what a
    /// crafted image (or a relay of higher rates) holds beyond them would keep a budget
    /// refusing for ever (the relay-wide reply budget: every unauthenticated reply withheld).
    #[test]
    fn restored_balances_are_within_what_these_limits_hold() {
        let s = Settings {
            registration_rate: 1,
            ..settings()
        };
        let mut image = Budgets::new(&s).export();
        image.reply_global.slots[0] = i64::MAX as u64;
        image.reply_host.slots.fill(i64::MAX as u64);
        // Every host's registrations used to the top, refilled at the start of the clock.
        image.registrations.slots.fill(u64::from(u32::MAX) << 32);
        let mut b = Budgets::new(&s);
        b.restore(image, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!b.spend_reply(ip, 100, 0), "spent stays spent");
        b.earn_replies(ip, 600, 0);
        assert!(
            b.spend_reply(ip, 100, 0),
            "earned back, and still nothing to spend"
        );
        let from = SocketAddr::new(ip, 9);
        assert!(!b.register(from, 0));
        assert!(
            b.register(from, 10_000),
            "a burst's time later, still no registration"
        );
        // Banked credit beyond the cap is not taken over either.
        let mut image = Budgets::new(&s).export();
        image.reply_host.slots.fill(i64::MIN as u64);
        let mut b = Budgets::new(&s);
        b.restore(image, 0);
        assert_eq!(b.reply_host.available(ip), 16 * 2048);
    }

    #[test]
    fn misses_are_limited_per_host_and_network_and_hits_are_free() {
        let m = Misses::new(&Settings {
            miss_rate: 1,
            ..Settings::default()
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let host = ip("192.0.2.1");
        // Hits cost nothing; a host's burst of misses is 256.
        assert!(m.reserve(host, true, 200, 0));
        m.hits(host, true, 200, 200);
        assert!(m.reserve(host, true, 256, 0));
        m.hits(host, true, 256, 0);
        assert!(!m.reserve(host, true, 1, 0));
        assert!(
            m.reserve(host, false, 1, 0),
            "unauthenticated requests' own bucket"
        );
        assert!(m.reserve(host, true, 1, 1000), "one a second");
        m.hits(host, true, 1, 0);
        // Its /24 has four times that: 1,024, of which 253 are spent (4 refilled).
        for h in 2..=4 {
            assert!(m.reserve(ip(&format!("192.0.2.{h}")), true, 256, 1000));
        }
        assert!(!m.reserve(ip("192.0.2.5"), true, 4, 1000));
        assert!(m.reserve(ip("192.0.2.5"), true, 3, 1000));
        assert!(
            !m.reserve(ip("192.0.2.5"), true, 1, 1000),
            "refused, taking nothing"
        );
        assert!(
            m.reserve(ip("192.0.3.1"), true, 256, 1000),
            "another network"
        );
        // A request of more names than a burst takes a burst.
        assert!(m.reserve(ip("198.51.100.1"), true, 1000, 0));
        m.hits(ip("198.51.100.1"), true, 1000, 900);
        assert!(m.reserve(ip("198.51.100.1"), true, 156, 0));
        assert!(!m.reserve(ip("198.51.100.1"), true, 1, 0));
    }

    #[test]
    fn presence_refills_by_the_clock() {
        let b = Budgets::new(&settings());
        let to: SocketAddr = "192.0.2.7:5".parse().unwrap();
        assert!(b.presence.take(to, 4 * 4096, 0));
        assert!(!b.presence.take(to, 1, 0));
        assert!(b.presence.take(to, 409, 100));
        assert!(!b.presence.take(to, 1, 100));
    }
}
