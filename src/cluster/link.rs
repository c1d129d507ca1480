//! The relay's link to its cluster's directory: a thread of its own (a current-thread tokio
//! runtime, never a worker's) that renews this node, hears the directory's changes, and settles
//! the claims, releases and lookups the workers queued. What those cause here (an ack, an
//! error, a join told) is decided by the core and leaves through the egress, from the relay's
//! own port. Redis away: every call fails fast, claims are refused `cluster_unavailable`,
//! everything known stays (fail-static); Redis back: this node's names are published again,
//! paced, and the names of the others read again.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::Notify;
use tracing::{info, warn};

use relay_core::Now;
use relay_core::cluster::{Cluster, Op, Pending, Stats};
use relay_core::elsewhere;
use relay_core::mesh::Sender;
use relay_core::metrics::Counters;
use relay_core::refusal::Reason;
use relay_core::remote::Home;
use relay_core::router::Router;
use relay_core::seal::{Payload, seal, unix_us};
use relay_core::shared::Shared;
use relay_core::wire::mesh::Via;
use relay_udp::Egress;

use super::directory::{Claimed, Directory, Event, Events, Homed};
use crate::clock::Clock;
use crate::shell::Decided;

/// The egress the reaper, the link and the mesh share: the relay's own port.
pub type SharedEgress = Arc<Mutex<Box<dyn Egress<Decided>>>>;

/// A claim older than this is refused rather than settled (its peer has retried or given up).
const CLAIM_DEADLINE_MS: u64 = 3_000;
/// Operations taken from the queue at once, their directory calls made together.
const OPS_BATCH: usize = 512;
/// Names published again (or read) per directory call after Redis came back: paced, so that
/// a relay's return is no storm.
const PACE_BATCH: usize = 256;
/// The pause between two paced batches.
const PACE: Duration = Duration::from_millis(20);
/// How often a waiting task looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// What the link is given.
pub struct Joining {
    /// The directory's URL.
    pub url: String,
    /// This node's id.
    pub node: String,
    /// Its liveness in the directory.
    pub ttl: Duration,
    /// The mesh address it is reached at.
    pub mesh: SocketAddr,
    /// The relay's state.
    pub shared: Arc<Shared>,
    /// Its clock.
    pub clock: Clock,
    /// Where what the link causes leaves.
    pub egress: SharedEgress,
    /// Woken when the workers queue work.
    pub wake: Arc<Notify>,
}

/// The running link.
pub struct Link {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Link {
    /// Starts the link's thread.
    pub fn start(j: Joining) -> std::io::Result<Link> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = Task {
            j: Arc::new(j),
            stop: stop.clone(),
            filling: Arc::new(AtomicBool::new(false)),
            republishing: Arc::new(AtomicBool::new(false)),
            read_once: Arc::new(AtomicBool::new(false)),
        };
        let thread = thread::Builder::new()
            .name("cluster".into())
            .spawn(move || runtime.block_on(task.run()))?;
        Ok(Link { stop, thread })
    }

    /// Stops the link and waits for it (within about [`POLL`] and a directory call).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

#[derive(Clone)]
struct Task {
    j: Arc<Joining>,
    stop: Arc<AtomicBool>,
    /// Whether a refill is under way (one at a time).
    filling: Arc<AtomicBool>,
    /// Whether a republish is under way (one at a time).
    republishing: Arc<AtomicBool>,
    /// Whether the names were read once: the first reading tells no one (this relay's peers
    /// heard of those names from the relay it took over from, or learn them from their lists).
    read_once: Arc<AtomicBool>,
}

impl Task {
    fn cluster(&self) -> &Cluster {
        self.j.shared.cluster.get().expect("a relay of a cluster")
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn now(&self) -> Now {
        self.j.clock.now()
    }

    /// Runs `decide` with an empty batch and sends what it decided.
    fn send(&self, decide: impl FnOnce(&mut relay_core::Out, &Counters)) {
        let mut out = Decided(relay_core::Out {
            stream: Sender::Link.stream(self.j.shared.workers),
            ..relay_core::Out::default()
        });
        decide(&mut out, &self.j.shared.metrics.background());
        if !out.sends.is_empty() {
            let mut egress = self.j.egress.lock().unwrap_or_else(PoisonError::into_inner);
            egress.send(&mut out);
        }
    }

    /// Sleeps `d`, or less once stopped.
    async fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(POLL)).await;
        }
    }

    async fn run(self) {
        let stats = &self.cluster().stats;
        let dir = loop {
            if self.stopped() {
                return;
            }
            match Directory::connect(&self.j.url, &self.j.node, self.j.ttl).await {
                Ok(d) => break d,
                Err(e) => {
                    stats.up.store(false, Ordering::Relaxed);
                    warn!(error = %e, "the cluster's directory is unreachable: retrying");
                    self.pause(Duration::from_secs(1)).await;
                }
            }
        };
        info!(node = %self.j.node, mesh = %self.j.mesh, "joined the cluster's directory");
        let tasks = [
            tokio::spawn(self.clone().heartbeats(dir.clone())),
            tokio::spawn(self.clone().events(dir.clone())),
            tokio::spawn(self.clone().ops(dir)),
        ];
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Renews this node every quarter of its TTL; learns the live nodes, and after an absence
    /// (or when a node came) publishes this node's names again and reads the others'.
    async fn heartbeats(self, mut dir: Directory) {
        let stats = &self.cluster().stats;
        let mut was_up = false;
        let mut silent: HashSet<String> = HashSet::new();
        while !self.stopped() {
            let began = Instant::now();
            let load = self.j.shared.registry.len();
            match dir.heartbeat(self.j.mesh, load).await {
                Ok(live) => {
                    self.timed(began);
                    stats.up.store(true, Ordering::Relaxed);
                    let now = self.now();
                    let mut came = false;
                    self.send(|out, c| came = elsewhere::nodes(&self.j.shared, &live, now, out, c));
                    if !was_up {
                        info!("the cluster's directory answers");
                    }
                    if !was_up {
                        tokio::spawn(self.clone().recover(dir.clone()));
                    } else if came {
                        tokio::spawn(self.clone().fill(dir.clone()));
                    }
                    was_up = true;
                    self.mesh_links(now, &mut silent);
                }
                Err(e) => {
                    if was_up {
                        warn!(error = %e, "the cluster's directory stopped answering: serving \
                              what is known");
                    }
                    stats.up.store(false, Ordering::Relaxed);
                    was_up = false;
                }
            }
            self.pause(self.j.ttl / 4).await;
        }
    }

    /// Pings every other node over the mesh, and says which links carried nothing for a node
    /// TTL (a cut link is logged when it goes silent and when it carries again, never silent).
    fn mesh_links(&self, now: Now, silent: &mut HashSet<String>) {
        let cluster = self.cluster();
        let nodes = cluster.nodes.listed();
        self.send(|out, _| {
            for (node, _) in &nodes {
                seal(
                    cluster,
                    node,
                    node,
                    Via::Ping,
                    Payload::Bytes(&[]),
                    now,
                    out,
                );
            }
        });
        let quiet = u64::try_from(self.j.ttl.as_micros()).unwrap_or(u64::MAX);
        let now_silent: HashSet<String> = cluster
            .nodes
            .silent(unix_us(now), quiet)
            .into_iter()
            .collect();
        for node in now_silent.difference(silent) {
            warn!(
                node,
                "the mesh link to a relay carries nothing: its forwards are lost"
            );
        }
        for node in silent.difference(&now_silent) {
            info!(node, "the mesh link to a relay carries again");
        }
        *silent = now_silent;
        let n = silent.len() as u64;
        cluster.stats.silent_links.store(n, Ordering::Relaxed);
    }

    fn timed(&self, began: Instant) {
        let stats = &self.cluster().stats;
        Stats::add(&stats.calls);
        let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.call_us.fetch_add(us, Ordering::Relaxed);
    }

    /// After the directory was away (or at the start): publishes this node's names again (the
    /// directory may have lost them), then reads every other node's.
    async fn recover(self, mut dir: Directory) {
        if !self.republishing.swap(true, Ordering::AcqRel) {
            let names = self.republish(&mut dir).await;
            info!(names, "published this relay's names in the directory again");
            self.republishing.store(false, Ordering::Release);
        }
        self.fill(dir).await;
    }

    /// Reads every other node's names from the directory, paced; their joins told here but
    /// the first time.
    async fn fill(self, mut dir: Directory) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let tell = self.read_once.load(Ordering::Acquire);
        let cluster = self.cluster();
        let mut cursor = 0;
        loop {
            if self.stopped() {
                break;
            }
            let Ok((next, homed)) = dir.names(cursor, PACE_BATCH).await else {
                break;
            };
            let listed: HashMap<String, SocketAddr> = cluster.nodes.listed().into_iter().collect();
            let now = self.now();
            self.send(|out, c| {
                for h in homed {
                    let Some(&mesh) = listed.get(&h.node) else {
                        continue;
                    };
                    let home = Home {
                        node: h.node.into(),
                        mesh,
                        epoch: h.epoch,
                    };
                    if tell {
                        elsewhere::joined(&self.j.shared, &h.name, home, None, now, out, c);
                    } else {
                        elsewhere::known(&self.j.shared, &h.name, home, now);
                    }
                }
            });
            if next == 0 {
                break;
            }
            cursor = next;
            self.pause(PACE).await;
        }
        self.read_once.store(true, Ordering::Release);
        self.filling.store(false, Ordering::Release);
    }

    /// Claims again every name registered here (the same epoch where the directory kept it, a
    /// new one where it lost it), paced: how many it claimed.
    async fn republish(&self, dir: &mut Directory) -> usize {
        let shared = &self.j.shared;
        let cluster = self.cluster();
        let now = self.now();
        let names: Vec<String> = shared
            .registry
            .live_peers(now.ms, usize::MAX)
            .into_iter()
            .map(|p| p.name.to_string())
            .collect();
        let mut claimed = 0;
        for chunk in names.chunks(PACE_BATCH) {
            if self.stopped() {
                break;
            }
            let claims = chunk.iter().map(|name| {
                let mut dir = dir.clone();
                // With the key it was signed with, which the directory may have lost with it.
                let key = cluster.key_of(name);
                async move { (name, dir.claim(name, key.as_deref(), None).await) }
            });
            let got = join_all(claims).await;
            let now = self.now();
            let mut gone = Vec::new();
            for (name, got) in got {
                match got {
                    // Still registered here: homed here. Gone meanwhile (its release may have
                    // run before this claim): released again, at this claim's epoch.
                    Ok(Claimed::Home(epoch)) if shared.registry.addr_of(name, now.ms).is_some() => {
                        cluster.homed(name, epoch, cluster.key_of(name));
                        claimed += 1;
                    }
                    Ok(Claimed::Home(epoch)) => gone.push((name.clone(), epoch)),
                    Ok(Claimed::InUse(node)) => {
                        warn!(
                            name,
                            node, "a name registered here is homed at another relay"
                        );
                        self.send(|out, c| elsewhere::evicted(shared, name, now, out, c));
                    }
                    // The directory went away again: its return publishes them all again.
                    Err(_) => return claimed,
                }
            }
            for (name, epoch) in gone {
                let _ = dir.release(&name, epoch).await;
            }
            self.pause(PACE).await;
        }
        claimed
    }

    /// Hears the directory's changes, subscribing again (and reading what was missed) whenever
    /// the subscription ends.
    async fn events(self, mut dir: Directory) {
        let mut first = true;
        while !self.stopped() {
            let mut events = match Events::subscribe(&self.j.url).await {
                Ok(e) => e,
                Err(_) => {
                    self.pause(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !first {
                tokio::spawn(self.clone().fill(dir.clone()));
            }
            first = false;
            while !self.stopped() {
                match tokio::time::timeout(POLL, events.next()).await {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(e)) => self.event(&mut dir, e).await,
                }
            }
        }
    }

    async fn event(&self, dir: &mut Directory, e: Event) {
        let cluster = self.cluster();
        match e {
            Event::Joined {
                name,
                node,
                epoch,
                by,
            } => {
                if node == cluster.node {
                    return;
                }
                let listed = cluster.nodes.listed();
                let mesh = match listed.iter().find(|(n, _)| *n == node) {
                    Some((_, m)) => *m,
                    // A node this relay has not heard renew yet: its record says.
                    None => match dir.home(&name).await {
                        Ok(Some((h, m))) if h.node == node => m,
                        _ => return,
                    },
                };
                let now = self.now();
                let home = Home {
                    node: node.into(),
                    mesh,
                    epoch,
                };
                self.send(|out, c| elsewhere::joined(&self.j.shared, &name, home, by, now, out, c));
            }
            Event::Left { name, node, epoch } => {
                if node == cluster.node {
                    return;
                }
                let now = self.now();
                self.send(|out, c| elsewhere::left(&self.j.shared, &name, epoch, now, out, c));
            }
        }
    }

    /// Takes the workers' queue: claims, releases and lookups, those of one name in order,
    /// those of different names together.
    async fn ops(self, dir: Directory) {
        let shared = &self.j.shared;
        let cluster = self.cluster();
        let link = Sender::Link.index(shared.workers);
        let mut router = Router::new(shared.clone(), link);
        while !self.stopped() {
            let _ = tokio::time::timeout(POLL, self.j.wake.notified()).await;
            loop {
                let ops = cluster.take(OPS_BATCH);
                if ops.is_empty() {
                    break;
                }
                let mut by_name: Vec<Vec<Op>> = Vec::new();
                let mut index: HashMap<String, usize> = HashMap::new();
                for op in ops {
                    let name = match &op {
                        Op::Claim(p) => p.name.clone(),
                        Op::Release(n, _) | Op::Lookup(n) => n.clone(),
                    };
                    let i = *index.entry(name).or_insert_with(|| {
                        by_name.push(Vec::new());
                        by_name.len() - 1
                    });
                    by_name[i].push(op);
                }
                let now = self.now();
                let runs = by_name.into_iter().map(|ops| {
                    let dir = dir.clone();
                    let me = self.clone();
                    async move { me.run_ops(dir, ops, now).await }
                });
                let done: Vec<Done> = join_all(runs).await.into_iter().flatten().collect();
                let now = self.now();
                self.send(|out, c| {
                    for d in done {
                        self.apply(&mut router, d, now, out, c);
                    }
                });
            }
        }
    }

    /// One name's operations, in order.
    async fn run_ops(&self, mut dir: Directory, ops: Vec<Op>, now: Now) -> Vec<Done> {
        let mut done = Vec::with_capacity(ops.len());
        for op in ops {
            let began = Instant::now();
            done.push(match op {
                Op::Claim(p) if now.ms.saturating_sub(p.at_ms) > CLAIM_DEADLINE_MS => {
                    Done::Claim(p, None)
                }
                Op::Claim(p) => {
                    let key = p.key.as_deref();
                    let got = dir.claim(&p.name, key, Some(p.from.ip())).await.ok();
                    self.timed(began);
                    Done::Claim(p, got)
                }
                Op::Release(name, epoch) => {
                    let ok = dir.release(&name, epoch).await.is_ok();
                    self.timed(began);
                    Done::Release(ok)
                }
                Op::Lookup(name) => {
                    let got = dir.home(&name).await;
                    self.timed(began);
                    Done::Lookup(got.map_err(|_| ()))
                }
            });
        }
        done
    }

    fn apply(
        &self,
        router: &mut Router,
        d: Done,
        now: Now,
        out: &mut relay_core::Out,
        c: &Counters,
    ) {
        let cluster = self.cluster();
        let stats = &cluster.stats;
        match d {
            Done::Claim(p, Some(Claimed::Home(epoch))) => {
                Stats::add(&stats.claims_won);
                cluster.homed(&p.name, epoch, p.key.clone());
                // Homed here now, whatever this relay knew of an older home.
                cluster.remote.forget(&p.name);
                router.settle(&p, now, out);
            }
            Done::Claim(p, Some(Claimed::InUse(_))) => {
                Stats::add(&stats.claims_lost);
                router.unsettled(&p, Reason::NameInUse, now, out);
            }
            Done::Claim(p, None) => {
                Stats::add(&stats.claims_failed);
                router.unsettled(&p, Reason::ClusterUnavailable, now, out);
            }
            Done::Release(true) => Stats::add(&stats.releases),
            Done::Release(false) => Stats::add(&stats.releases_failed),
            Done::Lookup(Ok(Some((Homed { name, node, epoch }, mesh)))) => {
                Stats::add(&stats.lookups_found);
                let home = Home {
                    node: node.into(),
                    mesh,
                    epoch,
                };
                elsewhere::joined(&self.j.shared, &name, home, None, now, out, c);
            }
            Done::Lookup(Ok(None)) => Stats::add(&stats.lookups_missing),
            Done::Lookup(Err(())) => Stats::add(&stats.lookups_failed),
        }
    }
}

/// What the directory said to one operation.
enum Done {
    /// A claim: the directory's answer, or none (it failed, or the claim was too old).
    Claim(Pending, Option<Claimed>),
    /// A release, and whether the call was served.
    Release(bool),
    /// A lookup: the home, if there is a live one.
    Lookup(Result<Option<(Homed, SocketAddr)>, ()>),
}
