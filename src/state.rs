//! The relay's state as one image: what a relay taking over (or a later start from
//! `--state-file`) needs to go on where this one stopped — the registry, the channels, the
//! secrets that tokens and cookies derive from and the clock their times are read on —
//! encoded, framed and checked.
//!
//! An image is `MAGIC`, the format number, the body's length and its CRC-32, then the body
//! (postcard): the state, then the ends of channels across relays (a section an image of a
//! relay before the cluster lacks, which reads as none). Reading one checks each in turn and then every invariant the registry and the
//! channel table keep, so that a foreign, truncated, corrupt or inconsistent image is refused
//! whole, with a message that says which.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::Settings;
use relay_core::auth::Cookies;
use relay_core::budget::{self, Budgets};
use relay_core::channels::{self, AcrossImages, Channels};
use relay_core::parallel::Parallel;
use relay_core::ratelimit::{Admission, AdmissionImage};
use relay_core::registry::{self, Registry};
use relay_core::shared::{Held, Shared};

/// Restoring runs on as many threads as there are CPUs to run them, since forwarding waits.
fn threads() -> Parallel<'static> {
    Parallel {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        run: &|n, job| {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..n).map(|i| s.spawn(move || job(i))).collect();
                // A job that panicked leaves its result missing, which the restore refuses.
                for h in handles {
                    let _ = h.join();
                }
            })
        },
    }
}

/// A relay's state and the clock its times are read on.
pub struct State {
    /// The state the workers and the reaper share.
    pub shared: Arc<Shared>,
    /// Its clock.
    pub clock: Clock,
}

/// The format this relay writes and reads; another is refused (the state of a relay of another
/// format cannot be read safely, so a takeover between them is refused and the old relay goes on).
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"UDPRLYST";
/// The latest clock reading an image may hold (about 146 million years).
const MAX_CLOCK_MS: u64 = 1 << 62;
/// Magic, format, length, checksum.
const HEAD: usize = 8 + 4 + 8 + 4;

/// When an image was written: on the relay's clock and on the machine's, so that the reader's
/// clock goes on from the writer's by the time that passed in between.
#[derive(Serialize, Deserialize)]
struct Written {
    clock_ms: u64,
    unix_ms: u64,
    boot_id: String,
    monotonic_ns: u64,
}

/// The state as read, borrowing the names from the image.
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    version: String,
    written: Written,
    cookie_key: [u8; 32],
    #[serde(borrow)]
    registry: registry::Image<'a>,
    channels: channels::Image,
    budgets: budget::Image,
    /// Each worker's limits, in worker order (none for a worker that had not started).
    admission: Vec<Option<AdmissionImage>>,
}

/// [`Body`] as written, field for field, from the live tables.
#[derive(Serialize)]
struct BodyOut<'a> {
    version: String,
    written: Written,
    cookie_key: [u8; 32],
    registry: registry::Export<'a>,
    channels: channels::Image,
    budgets: budget::Image,
    admission: Vec<Option<AdmissionImage>>,
}

/// What a restore put back and left out, for the log.
#[derive(Debug)]
pub struct Summary {
    /// The version of the relay that wrote the image.
    pub version: String,
    /// How old the image was when read, in ms.
    pub age_ms: u64,
    /// What the registry kept and left out.
    pub registry: registry::Restored,
    /// Channel pairs restored (each end of a channel across relays counted as one).
    pub channels: usize,
    /// Channel pairs left out with a stale registration.
    pub channels_left_out: usize,
    /// Ends of channels across relays restored, and left out (their owner stale).
    pub across: (usize, usize),
}

/// The state of `shared`, framed. Meant for a relay whose workers and reaper are stopped, so
/// that nothing changes while it is read.
pub fn export(shared: &Shared, clock: Clock) -> Vec<u8> {
    let body = BodyOut {
        version: env!("CARGO_PKG_VERSION").to_string(),
        written: Written {
            clock_ms: clock.now().ms,
            unix_ms: unix_ms(),
            boot_id: boot_id(),
            monotonic_ns: monotonic_ns(),
        },
        cookie_key: shared.cookies.key(),
        registry: shared.registry.export(),
        channels: shared.channels.export(),
        budgets: shared.budgets.export(),
        admission: shared.export_admission(),
    };
    // Room for the image at once (a registration takes about 37 bytes, the limit and budget
    // tables a few MiB): grown by doubling, a million peers' would be copied over and over.
    let across = shared.channels.export_across();
    frame(&body, Some(&across), 40 * shared.registry.len() + (4 << 20))
}

/// `body` and `across` (none: as a relay before the cluster wrote) behind their header, in a
/// vector made with `room` for them.
fn frame(body: &impl Serialize, across: Option<&AcrossImages>, room: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + room);
    out.resize(HEAD, 0);
    // Encoding into a vector fails only when memory does; the empty body left then is refused
    // by whoever reads it.
    let mut out = postcard::to_extend(body, out).unwrap_or_else(|_| vec![0; HEAD]);
    if let Some(across) = across {
        out = postcard::to_extend(across, out).unwrap_or_else(|_| vec![0; HEAD]);
    }
    let body_len = (out.len() - HEAD) as u64;
    let crc = crc32fast::hash(&out[HEAD..]);
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    out[12..20].copy_from_slice(&body_len.to_le_bytes());
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The shared state of a relay of `settings` with `workers` workers that goes on from `image`,
/// or why the image is refused. With `drop_stale`, registrations that went stale since the
/// image was written are left out (a restart from a snapshot).
pub fn restore(
    image: &[u8],
    settings: Settings,
    workers: usize,
    drop_stale: bool,
) -> Result<(State, Summary), String> {
    let (body, across) = decode(image)?;
    // Far beyond any relay's uptime: a clock near the end of its range would overflow.
    if body.written.clock_ms > MAX_CLOCK_MS {
        return Err(format!(
            "the state's clock ({} ms) is beyond any relay's uptime",
            body.written.clock_ms
        ));
    }
    let age_ms = elapsed_ms(&body.written);
    let clock = Clock::resumed(body.written.clock_ms.saturating_add(age_ms));
    let now_ms = clock.now().ms;
    let (registry, kept) =
        Registry::restore(&settings, body.registry, now_ms, drop_stale, &threads())?;
    let held = |name: &str, at| registry.registered_at(name, at);
    let (channels, channels_left_out) = Channels::restore(&settings, body.channels, held)?;
    let held = |name: &str, at| registry.registered_at(name, at);
    let ends = across.0.len();
    let across_left_out = channels.restore_across(across, held);
    let summary = Summary {
        version: body.version,
        age_ms,
        registry: kept,
        channels: channels.len(),
        channels_left_out,
        across: (ends - across_left_out, across_left_out),
    };
    let mut budgets = Budgets::new(&settings);
    budgets.restore(body.budgets, now_ms);
    // A worker's limits go to the worker on the same socket, which SO_REUSEPORT steers the
    // same sources to; with another number of workers they would limit the wrong sources.
    let admission = if body.admission.len() == workers {
        let restore = |image: AdmissionImage| {
            let mut a = Admission::new(&settings, workers, 0);
            a.restore(image, now_ms);
            a
        };
        body.admission.into_iter().map(|a| a.map(restore)).collect()
    } else {
        Vec::new()
    };
    let held = Held {
        registry,
        channels,
        cookies: Cookies::with_key(body.cookie_key),
        budgets,
        admission,
    };
    let shared = Shared::holding(settings, workers, held);
    Ok((State { shared, clock }, summary))
}

/// The body of a framed image and its ends of channels across relays, or which check it fails.
fn decode(image: &[u8]) -> Result<(Body<'_>, AcrossImages), String> {
    if image.len() < HEAD || &image[..8] != MAGIC {
        return Err("not a udp-relay state image".into());
    }
    let word = |r: std::ops::Range<usize>| -> u64 {
        image[r]
            .iter()
            .rev()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b))
    };
    let format = word(8..12);
    if format != u64::from(FORMAT) {
        return Err(format!(
            "state format {format}, but this relay ({}) reads format {FORMAT}",
            env!("CARGO_PKG_VERSION")
        ));
    }
    let want = word(12..20);
    let have = (image.len() - HEAD) as u64;
    if have != want {
        return Err(format!(
            "truncated or overlong: {have} bytes of state where the header says {want}"
        ));
    }
    if crc32fast::hash(&image[HEAD..]) != word(20..24) as u32 {
        return Err("corrupt: the checksum does not match".into());
    }
    let (body, rest): (Body, _) =
        postcard::take_from_bytes(&image[HEAD..]).map_err(|e| format!("corrupt: {e}"))?;
    // The ends of channels across relays follow, where the writer had any section for them.
    let across = if rest.is_empty() {
        AcrossImages::default()
    } else {
        let (across, rest): (AcrossImages, _) =
            postcard::take_from_bytes(rest).map_err(|e| format!("corrupt: {e}"))?;
        if !rest.is_empty() {
            return Err("corrupt: bytes after the state".into());
        }
        across
    };
    Ok((body, across))
}

/// Time passed since `w`: on the monotonic clock if this is the boot that wrote it (a
/// takeover), else on the wall clock (a snapshot read after a reboot), never negative.
fn elapsed_ms(w: &Written) -> u64 {
    if !w.boot_id.is_empty() && w.boot_id == boot_id() {
        monotonic_ns().saturating_sub(w.monotonic_ns) / 1_000_000
    } else {
        unix_ms().saturating_sub(w.unix_ms)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This boot's id (empty where the kernel does not say).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `CLOCK_MONOTONIC` in ns: the same clock in every process of one boot.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    use relay_core::registry::{Claim, Proof};
    use std::net::SocketAddr;

    /// Restoring runs its jobs at once (a serial runner would never pass the barrier), keeps
    /// their results in order, and a job that panics is an error, not an abort.
    #[test]
    fn the_restores_jobs_run_at_once_in_order_and_a_panic_is_an_error() {
        let p = threads();
        let n = 4;
        let barrier = std::sync::Barrier::new(n);
        let got = p.map(n, |i| {
            barrier.wait();
            i * 10
        });
        assert_eq!(got.unwrap(), vec![0, 10, 20, 30]);
        let got = p.map(3, |i| {
            assert!(i != 1, "job 1 fails");
            i
        });
        assert_eq!(got.unwrap_err(), "a parallel job failed");
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn settings() -> Settings {
        Settings {
            peer_timeout_ms: 60_000,
            ..Settings::default()
        }
    }

    fn populated() -> Arc<Shared> {
        let shared = Shared::new(settings(), 1);
        let r = &shared.registry;
        for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
            let addr = a(&format!("192.0.2.{}:{}", i + 1, 4000 + i));
            assert!(matches!(
                r.claim(name, addr, Proof::Token(None), 0, 100),
                Claim::Joined(_)
            ));
        }
        r.watch("alice", a("192.0.2.1:4000"), &["bob".into()], 8);
        let (alice, bob) = ("alice".into(), "bob".into());
        shared
            .channels
            .bind(&alice, a("192.0.2.1:4000"), &bob, a("192.0.2.2:4001"))
            .unwrap();
        shared
    }

    #[test]
    fn an_image_restores_sessions_channels_and_watches() {
        let old = populated();
        let token = old.registry.session_at("bob", a("192.0.2.2:4001"), 0);
        let image = export(&old, Clock::default());
        let (State { shared: new, clock }, summary) = restore(&image, settings(), 1, true).unwrap();
        assert_eq!(summary.registry.peers, 3);
        assert_eq!(summary.channels, 1);
        let now = clock.now().ms;
        assert_eq!(
            new.registry.session_at("bob", a("192.0.2.2:4001"), now),
            token
        );
        assert_eq!(new.registry.watch_entries(), 1);
        assert_eq!(
            new.registry.watchers_of("bob", now)[0].name.to_string(),
            "alice"
        );
        let number = old.channels.export().0[0].number;
        let from = old.channels.export().0[0].from;
        assert!(new.channels.route(number, from, now).is_ok());
        assert_eq!(new.cookies.key(), old.cookies.key());
        // A new registration gets a number, so a token, none before had.
        let Claim::Joined(t) =
            new.registry
                .claim("dave", a("192.0.2.9:1"), Proof::Token(None), now, 100)
        else {
            panic!()
        };
        for (name, addr) in [("alice", "192.0.2.1:4000"), ("bob", "192.0.2.2:4001")] {
            assert_ne!(Some(t), old.registry.session_at(name, a(addr), 0));
        }
    }

    /// An image of a relay before the cluster (no section of channels across relays) reads as
    /// one with none, and the section, where there is one, must be whole.
    #[test]
    fn an_image_without_channels_across_relays_reads_as_none() {
        let image = export(&populated(), Clock::default());
        let (body, across) = decode(&image).unwrap();
        assert!(across.0.is_empty());
        let old = frame(&body, None, 0);
        assert!(old.len() < image.len());
        let (state, summary) = restore(&old, settings(), 1, true).unwrap();
        assert_eq!((summary.registry.peers, summary.channels), (3, 1));
        assert_eq!(state.shared.channels.len(), 1);
        let mut cut = frame(&body, Some(&across), 0);
        cut.push(7);
        let at = cut.len();
        cut[12..20].copy_from_slice(&((at - HEAD) as u64).to_le_bytes());
        let crc = crc32fast::hash(&cut[HEAD..]);
        cut[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(
            restore(&cut, settings(), 1, true)
                .err()
                .unwrap()
                .contains("bytes after")
        );
    }

    #[test]
    fn every_damage_is_refused_by_name() {
        let image = export(&populated(), Clock::default());
        let refused = |bytes: &[u8]| restore(bytes, settings(), 1, true).err().unwrap();
        assert!(refused(b"hello").contains("not a udp-relay state image"));
        assert!(refused(&image[..image.len() - 1]).contains("truncated"));
        let mut longer = image.clone();
        longer.push(0);
        assert!(refused(&longer).contains("truncated or overlong"));
        let mut format = image.clone();
        format[8] = 9;
        assert!(refused(&format).contains("state format 9"));
        for at in [HEAD, HEAD + 5, image.len() / 2, image.len() - 1] {
            let mut flipped = image.clone();
            flipped[at] ^= 0x40;
            assert!(refused(&flipped).contains("checksum"), "at {at}");
        }
    }

    #[test]
    fn an_inconsistent_image_is_refused_even_with_a_good_checksum() {
        let old = populated();
        let image = export(&old, Clock::default());
        let (body, _) = decode(&image).unwrap();
        // Too many peers for the new relay's --max-peers.
        let small = Settings {
            max_peers: 2,
            ..settings()
        };
        let err = restore(&frame(&body, None, 0), small, 1, true)
            .err()
            .unwrap();
        assert!(err.contains("--max-peers"), "{err}");
        // A channel whose other end is missing.
        let (mut body, _) = decode(&image).unwrap();
        body.channels.0.pop();
        let err = restore(&frame(&body, None, 0), settings(), 1, true)
            .err()
            .unwrap();
        assert!(err.contains("no other end"), "{err}");
    }

    #[test]
    fn stale_registrations_and_their_channels_are_left_out_of_a_snapshot() {
        let old = populated();
        let image = export(&old, Clock::default());
        let (mut body, _) = decode(&image).unwrap();
        // Written a peer timeout and more ago, on another boot.
        body.written.boot_id = "another boot".into();
        body.written.unix_ms -= 61_000;
        let image = frame(&body, None, 0);
        let (State { shared: new, .. }, summary) = restore(&image, settings(), 1, true).unwrap();
        assert_eq!(summary.registry.stale, 3);
        assert_eq!(summary.channels_left_out, 1);
        assert!(new.registry.is_empty() && new.channels.is_empty());
        assert_eq!(new.registry.watch_entries(), 0);
        // A takeover keeps them, for its reaper to announce.
        let (kept, _) = restore(&image, settings(), 1, false).unwrap();
        assert_eq!(kept.shared.registry.len(), 3);
    }

    #[test]
    fn spent_limits_and_budgets_stay_spent_across_a_handover() {
        let s = Settings {
            source_rate: 10,
            registration_rate: 1,
            ..settings()
        };
        let old = Shared::new(s.clone(), 2);
        let (flood, other) = (a("203.0.113.7:9"), a("198.51.100.1:9"));
        let clock = Clock::default();
        let now = clock.now().ms;
        // A flood spends its source's admission (on worker 1) and its host's registrations.
        let mut admission = Admission::new(&s, 2, 0);
        while admission.ingress.admit(flood, 10, now).is_ok() {}
        old.park(1, admission);
        while old.budgets.register(flood, now) {}
        let (State { shared: new, .. }, _) = restore(&export(&old, clock), s, 2, false).unwrap();
        // At the moment of the export: the buckets are as they were, no time refilled them.
        assert!(!new.budgets.register(flood, now), "registrations refilled");
        assert!(new.budgets.register(other, now));
        let mut admission = new.parked(1).expect("worker 1's limits handed over");
        assert!(
            admission.ingress.admit(flood, 10, now).is_err(),
            "buckets refilled"
        );
        assert!(admission.ingress.admit(other, 10, now).is_ok());
        assert!(new.parked(0).is_none(), "worker 0 had none to hand over");
    }

    /// A clock that would run past the end of its range (an image written with `clock_ms` near
    /// `u64::MAX`) is refused, instead of overflowing on the first reading after the restore.
    #[test]
    fn a_clock_at_the_end_of_its_range_is_refused() {
        let image = export(&populated(), Clock::default());
        let (mut body, _) = decode(&image).unwrap();
        body.written.clock_ms = u64::MAX - 5;
        let restored = restore(&frame(&body, None, 0), settings(), 1, false);
        if let Ok((state, _)) = &restored {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let _ = state.clock.now();
        }
        let err = restored.err().unwrap();
        assert!(err.contains("clock"), "{err}");
    }
}
