//! The state shared by every worker and the reaper: the registry, the budgets, the counters,
//! the presence sample, the cookie key and the channels. Routing, presence and the reaper read it; none of
//! them owns it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::auth::Cookies;
use crate::budget::{Budgets, Misses};
use crate::channels::Channels;
use crate::cluster::Cluster;
use crate::destination::Boundary;
use crate::introductions::Pending;
use crate::metrics::Metrics;
use crate::ratelimit::{Admission, AdmissionImage};
use crate::registry::Registry;
use crate::sample::Sample;
use crate::settings::Settings;

/// State shared by every worker and the reaper.
pub struct Shared {
    /// The peer registry.
    pub registry: Registry,
    /// The protocol settings as at start (a reload publishes its changes in `live`, the list
    /// sizes in `lists`, and the bounds and budgets in their owners: registry, channels,
    /// budgets).
    pub settings: Settings,
    /// `--announce-max` and `--reply-budget` in force, which a reload may change.
    pub lists: Lists,
    /// The counters.
    pub metrics: Metrics,
    /// Who pays for each send, shared so that no limit multiplies with the workers.
    pub budgets: Budgets,
    /// The live peers listed while the registry is beyond `announce_max`.
    pub sample: Sample,
    /// How many workers share the relay-wide limits.
    pub workers: usize,
    /// The key of registration cookies, shared by all workers.
    pub cookies: Cookies,
    /// The bound channels (Part 4).
    pub channels: Channels,
    /// Lookups and watches of names that are not online, per host and network.
    pub misses: Misses,
    /// Who asked to be introduced to whom (`connect`), not handed over: a pair asks again.
    pub introductions: Pending,
    /// The settings a reload changed, for the workers to take up.
    pub live: Live,
    /// The peer addresses served, read by the routers and the senders; a reload replaces it.
    pub boundary: Arc<Boundary>,
    /// The relay's part in a cluster, once it joined one (issue 20, begun).
    pub cluster: OnceLock<Cluster>,
    /// Each worker's limits while no router holds them (its worker stopped, or not yet
    /// started after a takeover handed them over).
    admission: Box<[Mutex<Option<Admission>>]>,
}

/// What a relay holds that another can go on from: the peers, the channels, the secrets their
/// tokens and cookies derive from (the clock their times are read on is the shells').
pub struct Held {
    /// The peer registry.
    pub registry: Registry,
    /// The bound channels.
    pub channels: Channels,
    /// The key of registration cookies.
    pub cookies: Cookies,
    /// The budgets.
    pub budgets: Budgets,
    /// Each worker's limits, where they were handed over.
    pub admission: Vec<Option<Admission>>,
}

/// The settings in force after reloads: a worker compares the generation (one atomic load a
/// datagram) and takes the lock only when it moved.
#[derive(Default)]
pub struct Live {
    generation: AtomicU64,
    settings: Mutex<Option<Settings>>,
}

impl Live {
    /// How many times settings were published.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The settings last published, if any.
    pub fn current(&self) -> Option<Settings> {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `s` in force for every worker's next datagram.
    pub fn publish(&self, s: Settings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// The sizes of what the relay tells: read on every announcement and list (an atomic load
/// each), set at start and by a reload.
pub struct Lists {
    announce_max: AtomicUsize,
    reply_budget: AtomicUsize,
}

impl Lists {
    fn new(s: &Settings) -> Lists {
        Lists {
            announce_max: AtomicUsize::new(s.announce_max),
            reply_budget: AtomicUsize::new(s.reply_budget),
        }
    }

    /// Largest registry in which everyone hears of everyone (`--announce-max`).
    pub fn announce_max(&self) -> usize {
        self.announce_max.load(Ordering::Relaxed)
    }

    /// Size limit of a list (`--reply-budget`).
    pub fn reply_budget(&self) -> usize {
        self.reply_budget.load(Ordering::Relaxed)
    }

    /// Puts the sizes of `s` in force.
    pub fn set(&self, s: &Settings) {
        self.announce_max.store(s.announce_max, Ordering::Relaxed);
        self.reply_budget.store(s.reply_budget, Ordering::Relaxed);
    }
}

impl Shared {
    /// Shared state for `workers` workers.
    pub fn new(settings: Settings, workers: usize) -> Arc<Shared> {
        let held = Held {
            registry: Registry::new(&settings),
            channels: Channels::new(&settings),
            cookies: Cookies::default(),
            budgets: Budgets::new(&settings),
            admission: Vec::new(),
        };
        Shared::holding(settings, workers, held)
    }

    /// Shared state for `workers` workers that goes on from `held` (a relay's handed over).
    pub fn holding(settings: Settings, workers: usize, mut held: Held) -> Arc<Shared> {
        Arc::new(Shared {
            registry: held.registry,
            metrics: Metrics::new(workers),
            budgets: held.budgets,
            sample: Sample::default(),
            workers,
            cookies: held.cookies,
            channels: held.channels,
            introductions: Pending::default(),
            misses: Misses::new(&settings),
            live: Live::default(),
            boundary: Boundary::new(settings.peers.clone()),
            cluster: OnceLock::new(),
            admission: (0..workers)
                .map(|i| Mutex::new(held.admission.get_mut(i).and_then(Option::take)))
                .collect(),
            lists: Lists::new(&settings),
            settings,
        })
    }

    /// Takes worker `i`'s limits, if its last router (or a takeover) left them.
    pub fn parked(&self, i: usize) -> Option<Admission> {
        self.admission
            .get(i)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Keeps worker `i`'s limits for its next router.
    pub fn park(&self, i: usize, a: Admission) {
        if let Some(slot) = self.admission.get(i) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(a);
        }
    }

    /// Each worker's parked limits, exported (for a handover, once the workers stopped).
    pub fn export_admission(&self) -> Vec<Option<AdmissionImage>> {
        self.admission
            .iter()
            .map(|slot| {
                let slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                slot.as_ref().map(Admission::export)
            })
            .collect()
    }
}
