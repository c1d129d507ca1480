//! Start-up and shutdown: binds the workers' sockets, starts the workers, the reaper and the
//! metrics endpoint, and stops them all.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::clock::{Clock, Now};
use crate::config::{Args, Auth, OnOff, Settings};
use crate::http;
use crate::io::{self as relay_io, Egress, Worker};
use crate::metrics::LimitWatch;
use crate::notify;
use crate::out::Out;
use crate::reaper;
use crate::router::Router;
use crate::shared::Shared;

/// A running relay.
pub struct Relay {
    /// The address the workers listen on (with the real port when 0 was asked).
    pub local_addr: SocketAddr,
    /// Shared state, for inspection.
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    reaper: JoinHandle<()>,
}

/// Starts a relay as configured by `args`.
pub fn start(args: &Args) -> io::Result<Relay> {
    let settings = args.settings();
    let n = args.worker_count();
    let shared = Shared::new(settings, n);
    let clock = shared.clock;
    let stop = Arc::new(AtomicBool::new(false));
    let (backend, why) = relay_io::select(args.io, args.gso == OnOff::On)?;

    let mut addr = args.listen();
    relay_io::check_port_free(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    // A coalesced receive needs 64 KiB buffers: with a smaller --max-datagram, which bounds the
    // receive buffers' memory, GRO stays off.
    let gro_wanted =
        args.gro == OnOff::On && shared.settings.max_datagram >= crate::config::MAX_UDP_PAYLOAD;
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let s = relay_io::bind_worker_socket(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        // Port 0: the first socket picks the port, the others join it.
        addr = s.local_addr()?;
        if sockets.is_empty() {
            for (sysctl, granted) in relay_io::capped_buffers(&s) {
                warn!(
                    sysctl,
                    asked = relay_io::SOCKET_BUFFER,
                    granted,
                    "the kernel capped a socket buffer: bursts beyond it are dropped; raise \
                     {sysctl} to at least {} (dist/sysctl/90-udp-relay.conf)",
                    relay_io::SOCKET_BUFFER
                );
            }
        }
        let gro = gro_wanted && relay_io::enable_gro(&s);
        sockets.push((s, gro));
    }
    let gro_on = sockets.iter().all(|(_, gro)| *gro);
    let mut ready: Vec<Worker> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, (socket, gro))| Worker {
            index,
            socket,
            router: Box::new(Router::new(shared.clone(), index)),
            gro,
            clock,
            stop: stop.clone(),
            counters: shared.metrics.block(index),
            max_datagram: shared.settings.max_datagram,
            inbox: None,
            cpu: args.pin_workers.then_some(index),
            gso: args.gso == OnOff::On,
        })
        .collect();
    // Replies the reaper originates leave from the relay's own port, like every other reply.
    let egress = backend.egress(&mut ready)?;

    let mut workers = Vec::with_capacity(n);
    for w in ready {
        let backend = backend.clone();
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
    let reaper = {
        let shared = shared.clone();
        let stop = stop.clone();
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || run_reaper(&shared, clock, &stop, egress))?
    };
    if let Some(m) = args.metrics_listen {
        http::serve(m, shared.clone())?;
    }
    // After the sockets are bound and the workers started: READY=1 waits for them to serve.
    notify::start(shared.clone())?;
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
        stop,
        workers,
        reaper,
    })
}

impl Relay {
    /// Stops the workers and the reaper and waits for them (within about [`relay_io::POLL_MS`]).
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.reaper.thread().unpark();
        for w in self.workers {
            let _ = w.join();
        }
        let _ = self.reaper.join();
    }
}

/// The limits and budgets in force, as `flag=value` pairs an operator can match against the
/// command line; `off` where 0 lifts one.
fn limits(s: &Settings) -> String {
    let rate = |v: u64| {
        if v == 0 {
            "off".to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "source-rate={} source-bytes={} prefix-rate={} prefix-bytes={} global-rate={} \
         registration-rate={} error-rate={} reply-credit={} reply-prefix-credit={} \
         reply-global-credit={} fanout-allowance={} presence-rate={} max-peers={} \
         max-names-per-address={} max-datagram={} max-watch={} max-watch-per-host={} \
         max-watch-total={} max-channels={} max-channels-per-host={} max-channels-total={}",
        rate(s.source_rate),
        rate(s.source_bytes),
        rate(s.prefix_rate),
        rate(s.prefix_bytes),
        rate(s.global_rate),
        rate(s.registration_rate),
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

fn run_reaper(shared: &Shared, clock: Clock, stop: &AtomicBool, mut egress: Box<dyn Egress>) {
    // Sweeping is background work: at the lowest priority it yields the CPU to a worker as soon
    // as a datagram arrives, instead of pausing forwarding for a scheduler time slice.
    // SAFETY: setpriority on the calling thread (a tid is a valid PRIO_PROCESS target on Linux).
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if r != 0 {
        warn!(error = %io::Error::last_os_error(), "cannot lower the reaper's priority");
    }
    let tick = reaper_tick(shared);
    let mut out = Out::default();
    let counters = shared.metrics.background();
    let mut limits = LimitWatch::default();
    while !stop.load(Ordering::Relaxed) {
        thread::park_timeout(tick);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = clock.now();
        let done = reaper::sweep(shared, now, &mut out, &counters, |out| egress.send(out));
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

/// The router is what the backends decide with; the impl lives here, where the two meet, so that
/// neither module knows the other.
impl relay_io::Decide for Router {
    fn datagram(&mut self, d: &mut [u8], from: SocketAddr, now: Now, out: &mut Out) {
        self.handle(d, from, now, out);
    }

    fn truncated(&mut self, len: usize, from: SocketAddr, now: Now, out: &mut Out) {
        Router::truncated(self, len, from, now, out);
    }

    fn mapped_source(&mut self, len: usize) {
        Router::mapped_source(self, len);
    }
}
