//! Start-up and shutdown: binds the workers' sockets, starts the workers, the reaper and the
//! metrics endpoint, and stops them all.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{error, info, warn};

use relay_udp::{self as relay_io, Backend, Choice, Worker};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::cluster::link::{Joining, Link, SharedEgress};
use crate::cluster::mesh::Receiver;
use crate::config::{Args, Auth, IoChoice, OnOff, Settings};
use crate::http::{self, Ops};
use crate::notify;
use crate::shell::{Decided, Shell};
use crate::state::{self, State};
use crate::takeover::Handover;
use relay_core::cluster::Cluster;
use relay_core::mesh::{Keys, MIN_KEY};
use relay_core::metrics::LimitWatch;
use relay_core::reaper;
use relay_core::router::Router;
use relay_core::shared::Shared;

/// A relay: its sockets, its state, and its workers and reaper while it serves.
pub struct Relay {
    /// The address the workers listen on (with the real port when 0 was asked).
    pub local_addr: SocketAddr,
    /// The clock the relay's times are read on.
    pub clock: Clock,
    /// Shared state, for inspection.
    pub shared: Arc<Shared>,
    /// The workers' sockets, in worker order, and whether each coalesces receives: kept here
    /// so that the relay can pause, and hand them over, without closing them.
    sockets: Vec<(UdpSocket, bool)>,
    /// The metrics endpoint's listener, kept to hand over.
    metrics: Option<std::net::TcpListener>,
    /// Each worker socket's counters, then the egress's: kept across a pause.
    sockets_counters: Vec<Arc<relay_io::Counters>>,
    backend: Backend,
    pin_workers: bool,
    gso: bool,
    /// The cluster this relay joined, if any.
    cluster: Option<Joined>,
    running: Option<Running>,
}

/// What a relay of a cluster keeps to (re)start its link and mesh receiver.
struct Joined {
    url: String,
    node: String,
    ttl: Duration,
    /// The mesh socket, and the address the other relays reach it at.
    mesh: UdpSocket,
    mesh_addr: SocketAddr,
    wake: Arc<Notify>,
}

/// The threads of a serving relay.
struct Running {
    stop: Arc<AtomicBool>,
    /// The reaper's own, set first: its sends leave through worker 0 with io_uring.
    reaper_stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    reaper: JoinHandle<()>,
    /// A cluster's link and mesh receiver.
    cluster: Option<(Link, Receiver)>,
}

/// The sockets of a relay that handed over.
pub struct Handed {
    /// The UDP sockets, in the old relay's worker order.
    pub sockets: Vec<OwnedFd>,
    /// The old relay's metrics listener, if it had one.
    pub metrics: Option<OwnedFd>,
}

/// Starts a relay as configured by `args`.
pub fn start(args: &Args) -> io::Result<Relay> {
    let mut relay = prepare(args, None, None)?;
    relay.resume()?;
    Ok(relay)
}

/// Sets up a relay as configured by `args`, ready to serve but not serving ([`Relay::resume`]
/// starts it): with the state it is given (restored) or an empty one, on the sockets a relay
/// `handed` over or fresh ones.
pub fn prepare(args: &Args, restored: Option<State>, handed: Option<Handed>) -> io::Result<Relay> {
    let choice = match args.io {
        IoChoice::Auto => Choice::Auto,
        IoChoice::Uring => Choice::Uring,
        IoChoice::Mmsg => Choice::Mmsg,
    };
    let (backend, why) = relay_io::select(choice, args.gso == OnOff::On)?;
    let bind_metrics = |m: SocketAddr| {
        std::net::TcpListener::bind(m)
            .map_err(|e| io::Error::new(e.kind(), format!("--metrics-listen {m}: {e}")))
    };
    let (sockets, metrics) = match handed {
        None => (
            bind_sockets(args.listen(), args.worker_count())?,
            args.metrics_listen.map(bind_metrics).transpose()?,
        ),
        Some(h) => {
            // The old relay's metrics listener serves on where this one is to listen too.
            let metrics = match (args.metrics_listen, h.metrics) {
                (None, _) => None,
                (Some(m), Some(fd)) => {
                    let l = std::net::TcpListener::from(fd);
                    if m.port() == 0 || l.local_addr().ok() == Some(m) {
                        Some(l)
                    } else {
                        Some(bind_metrics(m)?)
                    }
                }
                (Some(m), None) => Some(bind_metrics(m)?),
            };
            (inherited_sockets(args, h.sockets)?, metrics)
        }
    };
    let n = sockets.len();
    let State { shared, clock } = restored.unwrap_or_else(|| State {
        shared: Shared::new(args.settings(), n),
        clock: Clock::default(),
    });
    let addr = sockets[0].local_addr()?;
    let cluster = args
        .cluster
        .as_ref()
        .map(|url| join(args, url, &shared))
        .transpose()?;
    for (sysctl, granted) in relay_io::capped_buffers(&sockets[0]) {
        warn!(
            sysctl,
            asked = relay_io::SOCKET_BUFFER,
            granted,
            "the kernel capped a socket buffer: bursts beyond it are dropped; raise \
             {sysctl} to at least {} (dist/sysctl/90-udp-relay.conf)",
            relay_io::SOCKET_BUFFER
        );
    }
    // A coalesced receive needs 64 KiB buffers: with a smaller --max-datagram, which bounds the
    // receive buffers' memory, GRO stays off.
    let gro_wanted =
        args.gro == OnOff::On && shared.settings.max_datagram >= crate::config::MAX_UDP_PAYLOAD;
    let sockets: Vec<(UdpSocket, bool)> = sockets
        .into_iter()
        .map(|s| {
            // Set either way: a socket handed over has the old relay's.
            let gro = relay_io::set_gro(&s, gro_wanted);
            (s, gro)
        })
        .collect();
    let gro_on = sockets.iter().all(|(_, gro)| *gro);
    let sockets_counters: Vec<Arc<relay_io::Counters>> =
        (0..=sockets.len()).map(|_| Arc::default()).collect();
    if let Some(l) = &metrics {
        let ops = Ops {
            shared: shared.clone(),
            clock,
            sockets: sockets_counters.clone(),
        };
        http::serve(l.try_clone()?, Arc::new(ops))?;
    }
    // READY=1 waits for the workers to serve.
    notify::start(shared.clone(), clock)?;
    let gso = if args.gso == OnOff::On { "on" } else { "off" };
    let gro = match (args.gro, gro_wanted, gro_on) {
        (OnOff::Off, _, _) => "off",
        (OnOff::On, false, _) => "off (--max-datagram below 65507)",
        (OnOff::On, true, true) => "on",
        (OnOff::On, true, false) => "refused",
    };
    let auth = match shared.settings.auth {
        Auth::Open => "open",
        Auth::Signed => "signed",
    };
    let version = env!("CARGO_PKG_VERSION");
    shared.metrics.set_info(format!(
        "version=\"{version}\",backend=\"{}\",auth=\"{auth}\",gso=\"{gso}\",gro=\"{}\",workers=\"{n}\"",
        backend.name(),
        gro.split(' ').next().unwrap_or(gro),
    ));
    if let Some(own) = shared.settings.peers.own_range() {
        info!(
            range = %own,
            "peers in {own} are served: --host {} is inside that private range (--denied-peer-ip \
             {own} refuses them)",
            args.host
        );
    }
    // One line that says how this relay runs, for whoever reads the log after an incident.
    info!(
        version,
        workers = n,
        backend = backend.name(),
        backend_reason = why.as_deref().unwrap_or("asked for with --io"),
        auth,
        gso,
        gro,
        peer_timeout_ms = shared.settings.peer_timeout_ms,
        keepalive_ms = shared.settings.keepalive_ms,
        limits = %limits(&shared.settings),
        "listening on {addr}"
    );
    Ok(Relay {
        local_addr: addr,
        shared,
        clock,
        sockets,
        metrics,
        sockets_counters,
        backend,
        pin_workers: args.pin_workers,
        gso: args.gso == OnOff::On,
        cluster,
        running: None,
    })
}

/// Joins the cluster of `url`: the mesh key read, the mesh socket bound and the relay's part
/// set in `shared` (the link starts with the workers). Every failure names its flag.
fn join(args: &Args, url: &str, shared: &Shared) -> io::Result<Joined> {
    let flag = |f: &str, e: String| io::Error::other(format!("{f}: {e}"));
    let (Some(node), Some(listen), Some(key_file)) =
        (&args.node_id, args.mesh_listen, &args.mesh_key_file)
    else {
        return Err(io::Error::other(
            "--cluster needs --node-id, --mesh-listen and --mesh-key-file",
        ));
    };
    let secret = std::fs::read(key_file)
        .map_err(|e| flag("--mesh-key-file", format!("{}: {e}", key_file.display())))?;
    let keys = Keys::new(&secret).ok_or_else(|| {
        flag(
            "--mesh-key-file",
            format!(
                "{} holds {} bytes, a mesh key takes at least {MIN_KEY}",
                key_file.display(),
                secret.len()
            ),
        )
    })?;
    // SO_REUSEPORT, as the peer port: a relay taking over binds it beside the old one.
    let mesh = relay_io::bind_worker_socket(listen)
        .map_err(|e| flag("--mesh-listen", format!("cannot listen on {listen}: {e}")))?;
    let mesh_addr = mesh.local_addr()?;
    let wake = Arc::new(Notify::new());
    let woken = wake.clone();
    let max_remote = shared.settings.max_peers;
    let part = Cluster::new(node, keys, max_remote, Box::new(move || woken.notify_one()));
    if shared.cluster.set(part).is_err() {
        return Err(io::Error::other("the relay is in a cluster already"));
    }
    info!(node, mesh = %mesh_addr, directory = %redacted(url), "joining the cluster");
    Ok(Joined {
        url: url.to_string(),
        node: node.clone(),
        ttl: args.node_ttl,
        mesh,
        mesh_addr,
        wake,
    })
}

/// `url` without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_string(),
    }
}

/// `n` sockets on `addr`, joined in one `SO_REUSEPORT` group.
fn bind_sockets(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    relay_io::bind_group(addr, n)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// The sockets a relay handed over, checked: UDP, all on one address, the one `args` asks for
/// (unless it asks for port 0). Their number, not `--workers`, is how many workers run: a
/// source stays with the socket `SO_REUSEPORT` steers it to, and closing one would drop what
/// is queued in it.
fn inherited_sockets(args: &Args, fds: Vec<OwnedFd>) -> io::Result<Vec<UdpSocket>> {
    let want = args.listen();
    let sockets: Vec<UdpSocket> = fds.into_iter().map(UdpSocket::from).collect();
    let first = sockets
        .first()
        .ok_or_else(|| io::Error::other("the old relay handed over no socket"))?
        .local_addr()
        .map_err(|e| io::Error::new(e.kind(), format!("a handed-over socket: {e}")))?;
    for s in &sockets {
        let sock = socket2::SockRef::from(s);
        let udp = sock.r#type()? == socket2::Type::DGRAM
            && sock.protocol()? == Some(socket2::Protocol::UDP);
        if !udp || s.local_addr()? != first {
            return Err(io::Error::other(
                "the old relay handed over sockets that are not its UDP sockets on one address",
            ));
        }
    }
    let same = want.port() == 0 || (want.port() == first.port() && want.ip() == first.ip());
    if !same {
        return Err(io::Error::other(format!(
            "the old relay listens on {first}, this one is to listen on {want}: a takeover \
             keeps the address (restart to change it)"
        )));
    }
    if sockets.len() != args.worker_count() {
        warn!(
            sockets = sockets.len(),
            asked = args.worker_count(),
            "running as many workers as the old relay had sockets, not --workers (restart to \
             change it)"
        );
    }
    Ok(sockets)
}

impl Relay {
    /// Starts the workers and the reaper (again, after [`Relay::pause`]).
    pub fn resume(&mut self) -> io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        relay_io::install_wake()?;
        let shared = &self.shared;
        let clock = self.clock;
        let stop = Arc::new(AtomicBool::new(false));
        let mut ready = Vec::with_capacity(self.sockets.len());
        for (index, (socket, gro)) in self.sockets.iter().enumerate() {
            // As this relay set it: one that was to take over and then failed may have
            // changed it, and the receive buffers are sized for this relay's setting.
            relay_io::set_gro(socket, *gro);
            let decide = Shell::new(
                Router::new(shared.clone(), index),
                clock,
                shared.metrics.block(index),
                shared.clone(),
            );
            ready.push(Worker {
                index,
                socket: socket.try_clone()?,
                decide,
                gro: *gro,
                stop: stop.clone(),
                counters: self.sockets_counters[index].clone(),
                max_datagram: shared.settings.max_datagram,
                inbox: None,
                cpu: self.pin_workers.then_some(index),
                gso: self.gso,
            });
        }
        // Replies the reaper originates leave from the relay's own port, like every other reply.
        let egress_counters = self.sockets_counters[self.sockets.len()].clone();
        let egress: SharedEgress = Arc::new(Mutex::new(
            self.backend.egress(&mut ready, egress_counters)?,
        ));
        let mut workers = Vec::with_capacity(ready.len());
        for w in ready {
            let backend = self.backend;
            let index = w.index;
            workers.push(
                thread::Builder::new()
                    .name(format!("worker-{index}"))
                    .spawn(move || {
                        if let Some(cpu) = w.cpu {
                            match relay_io::pin_to_cpu(cpu) {
                                Ok(c) => info!(worker = index, cpu = c, "pinned"),
                                Err(e) => warn!(worker = index, error = %e, "cannot pin worker"),
                            }
                        }
                        if let Err(e) = backend.run(w) {
                            error!(worker = index, error = %e, "worker stopped");
                        }
                    })?,
            );
        }
        let cluster = match &self.cluster {
            Some(j) => {
                let link = Link::start(Joining {
                    url: j.url.clone(),
                    node: j.node.clone(),
                    ttl: j.ttl,
                    mesh: j.mesh_addr,
                    shared: shared.clone(),
                    clock,
                    egress: egress.clone(),
                    wake: j.wake.clone(),
                })?;
                let mesh = j.mesh.try_clone()?;
                let receiver = Receiver::start(mesh, shared.clone(), clock, egress.clone())?;
                Some((link, receiver))
            }
            None => None,
        };
        let reaper_stop = Arc::new(AtomicBool::new(false));
        let reaper = {
            let shared = shared.clone();
            let stop = reaper_stop.clone();
            thread::Builder::new()
                .name("reaper".into())
                .spawn(move || run_reaper(&shared, clock, &stop, &egress))?
        };
        self.running = Some(Running {
            stop,
            reaper_stop,
            workers,
            reaper,
            cluster,
        });
        Ok(())
    }

    /// Stops the workers and the reaper and waits for them (within about
    /// [`relay_io::POLL_MS`]); the sockets stay open, what arrives meanwhile queued in them.
    pub fn pause(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        // The reaper first, while the workers serve: with io_uring its sends leave through
        // worker 0's inbox, and what it handed over after worker 0 stopped would be lost (the
        // `peer_left` of peers it removed, which no relay sends again).
        r.reaper_stop.store(true, Ordering::Relaxed);
        r.reaper.thread().unpark();
        let _ = r.reaper.join();
        // The cluster's threads too, for the same reason: their sends leave as the reaper's.
        if let Some((link, receiver)) = r.cluster {
            receiver.stop();
            link.stop();
        }
        r.stop.store(true, Ordering::Relaxed);
        for w in r.workers {
            // Again until it ends: a wake-up just before the worker waits would be missed.
            while !w.is_finished() {
                relay_io::wake(&w);
                thread::sleep(Duration::from_millis(1));
            }
            let _ = w.join();
        }
    }

    /// What a relay taking over needs: copies of the sockets and the state. Meant for a paused
    /// relay, whose state nothing changes meanwhile.
    pub fn handover(&self) -> io::Result<Handover> {
        let sockets = self
            .sockets
            .iter()
            .map(|(s, _)| Ok(OwnedFd::from(s.try_clone()?)))
            .collect::<io::Result<_>>()?;
        let metrics = match &self.metrics {
            Some(l) => Some(OwnedFd::from(l.try_clone()?)),
            None => None,
        };
        Ok(Handover {
            sockets,
            metrics,
            image: state::export(&self.shared, self.clock),
        })
    }

    /// Stops the workers and the reaper and waits for them.
    pub fn shutdown(mut self) {
        self.pause();
    }
}

/// The limits and budgets of `s`, as `flag=value` pairs an operator can match against the
/// command line; `off` where 0 lifts one. Logged at start and by every reload.
pub fn limits(s: &Settings) -> String {
    let rate = |v: u64| {
        if v == 0 {
            "off".to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "source-rate={} source-bytes={} prefix-rate={} prefix-bytes={} global-rate={} \
         registration-rate={} miss-rate={} error-rate={} reply-credit={} reply-prefix-credit={} \
         reply-global-credit={} fanout-allowance={} presence-rate={} max-peers={} \
         max-names-per-address={} max-datagram={} max-watch={} max-watch-per-host={} \
         max-watch-total={} max-channels={} max-channels-per-host={} max-channels-total={}",
        rate(s.source_rate),
        rate(s.source_bytes),
        rate(s.prefix_rate),
        rate(s.prefix_bytes),
        rate(s.global_rate),
        rate(s.registration_rate),
        rate(s.miss_rate),
        rate(u64::from(s.error_rate)),
        rate(s.reply_credit),
        rate(s.reply_prefix_credit),
        rate(s.reply_global_credit),
        rate(s.fanout_allowance),
        rate(s.presence_rate),
        s.max_peers,
        s.max_names_per_address,
        s.max_datagram,
        s.max_watch,
        s.max_watch_per_host,
        s.max_watch_total,
        s.max_channels,
        s.max_channels_per_host,
        s.max_channels_total,
    )
}

/// How often the reaper sweeps: often enough that a peer is reaped and kept alive within a
/// quarter of the configured times.
fn reaper_tick(shared: &Shared) -> Duration {
    let s = &shared.settings;
    let ms = s.peer_timeout_ms.min(s.keepalive_ms) / 4;
    Duration::from_millis(ms.clamp(10, 1000))
}

fn run_reaper(shared: &Shared, clock: Clock, stop: &AtomicBool, egress: &SharedEgress) {
    // Sweeping is background work: at the lowest priority it yields the CPU to a worker as soon
    // as a datagram arrives, instead of pausing forwarding for a scheduler time slice.
    // SAFETY: setpriority on the calling thread (a tid is a valid PRIO_PROCESS target on Linux).
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if r != 0 {
        warn!(error = %io::Error::last_os_error(), "cannot lower the reaper's priority");
    }
    let tick = reaper_tick(shared);
    let mut out = Decided::default();
    let counters = shared.metrics.background();
    let mut limits = LimitWatch::default();
    while !stop.load(Ordering::Relaxed) {
        thread::park_timeout(tick);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = clock.now();
        // The core's batch goes out as the backends' (moved, not copied, with its capacity).
        let send = |batch: &mut relay_core::out::Out| {
            let mut d = Decided(std::mem::take(batch));
            egress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(&mut d);
            *batch = d.0;
        };
        let done = reaper::sweep(shared, now, &mut out, &counters, send);
        for (reason, refused) in limits.check(&shared.metrics, now.ms) {
            warn!(
                reason = reason.as_str(),
                refused,
                flags = reason.limit_flags().unwrap_or(""),
                "a limit is refusing traffic (count since its last warning; at most one a minute)"
            );
        }
        if done.reaped > 0 {
            info!(
                reaped = done.reaped,
                peers = shared.registry.len(),
                "reaped silent peers"
            );
        }
    }
}
