//! The `udp-relay` binary: configuration, logging, signals, and the takeover and snapshot paths
//! of start-up and shutdown.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};
use udp_relay::config::{self, Args, Invocation, LogFormat};
use udp_relay::{server, snapshot, state, takeover};

fn main() -> ExitCode {
    // First of all, so that a SIGHUP (a reload sent early) or SIGTERM during start-up is held
    // for the loop below instead of killing the relay with the signal's default action.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The workers' wake-up signal is harmless from the start (its default action would end
    // the process, were it sent before the first workers start).
    if let Err(e) = relay_udp::install_wake() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let loaded = match config::invocation() {
        Invocation::Run(loaded) => loaded,
        Invocation::CheckConfig(loaded) => {
            println!("configuration ok: {} settings", loaded.settings.len());
            return ExitCode::SUCCESS;
        }
        Invocation::PrintConfig(loaded) => {
            print!("{}", loaded.to_toml());
            return ExitCode::SUCCESS;
        }
        Invocation::Completions(shell) => {
            clap_complete::generate(
                shell,
                &mut config::command(),
                "udp-relay",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Invocation::Man => {
            return match clap_mangen::Man::new(config::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let args = loaded.args.clone();
    let mut in_force = *loaded;
    // A reload may change the filter; the handle swaps it.
    let (filter, level) = reload::Layer::new(log_filter(args.log_level.as_deref()));
    let lines = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = match args.log_format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .init();
    let (relay, listener) = match launch(&args) {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let relay = Arc::new(Mutex::new(relay));
    let handed_over = Arc::new(AtomicBool::new(false));
    if let Some(l) = listener {
        let handing = Handing {
            relay: relay.clone(),
            done: handed_over.clone(),
            signals: signals.handle(),
        };
        if let Err(e) = l.serve(handing) {
            error!("cannot serve the takeover socket: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The environment a reload reads is the one the relay started with.
    let env = config::environment();
    let sig = signals.forever().find(|&sig| {
        if sig == SIGHUP {
            reload(&lock(&relay), &mut in_force, &env, &level);
            return false;
        }
        true
    });
    // Taken first: a signal that came during a handover waits for it to end, and then finds
    // whether the relay handed over (its state is the new relay's from then on, not to write).
    let mut relay = lock(&relay);
    if handed_over.load(Ordering::SeqCst) {
        info!(signal = ?sig, "exiting: a new relay took over");
        return ExitCode::SUCCESS;
    }
    info!(signal = ?sig, "shutting down");
    relay.pause();
    if let Some(path) = &args.state_file {
        let image = state::export(&relay.shared, relay.clock);
        match snapshot::write(path, &image) {
            Ok(()) => info!(
                path = %path.display(),
                bytes = image.len(),
                peers = relay.shared.registry.len(),
                "state written"
            ),
            Err(e) => {
                // A failed exit, so that the service manager says the state was not kept.
                error!("the state is lost: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    info!(peers = relay.shared.registry.len(), "stopped");
    ExitCode::SUCCESS
}

/// Starts the relay: on the sockets and state of the one that listens at `--takeover`, if one
/// does, else from `--state-file` if it holds a state, else empty. With `--takeover`, also the
/// socket to listen on for the next takeover.
fn launch(args: &Args) -> Result<(server::Relay, Option<takeover::Listener>), String> {
    if let Some(path) = &args.takeover {
        if let takeover::Asked::Offer(offer) = takeover::ask(path).map_err(|e| e.to_string())? {
            return take_over(args, offer);
        }
    }
    let relay = started(args, restored(args))?;
    let listener = args.takeover.as_deref().map(takeover::listen).transpose();
    Ok((relay, listener.map_err(|e| e.to_string())?))
}

fn restored(args: &Args) -> Option<state::State> {
    let path = args.state_file.as_ref()?;
    snapshot::restore(path, &args.settings(), args.worker_count())
}

fn started(args: &Args, restored: Option<state::State>) -> Result<server::Relay, String> {
    let mut relay = server::prepare(args, restored, None).map_err(|e| e.to_string())?;
    relay.resume().map_err(|e| e.to_string())?;
    Ok(relay)
}

/// Takes over from the relay that made `offer`: restores its state on its sockets, and serves
/// once it has stopped for good. Anything refused is said to it, and it serves on.
fn take_over(
    args: &Args,
    mut offer: takeover::Offer,
) -> Result<(server::Relay, Option<takeover::Listener>), String> {
    let began = Instant::now();
    info!(
        old_version = %offer.version,
        state_bytes = offer.image.len(),
        "taking over from the running relay"
    );
    let restored = state::restore(&offer.image, args.settings(), offer.sockets.len(), false);
    let restore_ms = began.elapsed().as_millis() as u64;
    let (shared, summary) = match restored {
        Ok(r) => r,
        Err(why) => {
            offer.refuse(&why);
            return Err(format!(
                "the running relay's state is refused, it serves on: {why}"
            ));
        }
    };
    let handed = server::Handed {
        sockets: std::mem::take(&mut offer.sockets),
        metrics: offer.metrics.take(),
    };
    let mut relay = match server::prepare(args, Some(shared), Some(handed)) {
        Ok(r) => r,
        Err(e) => {
            offer.refuse(&e.to_string());
            return Err(format!(
                "cannot take over, the running relay serves on: {e}"
            ));
        }
    };
    let listener = offer.accept().map_err(|e| e.to_string())?;
    relay.resume().map_err(|e| e.to_string())?;
    info!(
        peers = summary.registry.peers,
        channels = summary.channels,
        channels_across_relays = summary.across.0,
        across_relays_left_out = summary.across.1,
        restore_ms,
        took_ms = began.elapsed().as_millis() as u64,
        "took over: serving"
    );
    Ok((relay, Some(listener)))
}

/// The relay as the takeover socket hands it over.
struct Handing {
    relay: Arc<Mutex<server::Relay>>,
    done: Arc<AtomicBool>,
    signals: Handle,
}

impl takeover::Handing for Handing {
    fn hand_over(&mut self, exchange: &mut dyn FnMut(takeover::Handover) -> bool) {
        // Held throughout, so that no reload or shutdown meets a handover halfway.
        let mut relay = lock(&self.relay);
        relay.pause();
        let began = Instant::now();
        let handed = match relay.handover() {
            Ok(h) => {
                info!(
                    state_bytes = h.image.len(),
                    export_ms = began.elapsed().as_millis() as u64,
                    "paused and exported: offering"
                );
                exchange(h)
            }
            Err(e) => {
                error!("cannot hand over, serving on: {e}");
                false
            }
        };
        if handed {
            // Before the signal loop ends, which ends the process.
            info!("handed over: the new relay serves");
            self.done.store(true, Ordering::SeqCst);
            // Ends the signal loop: the process exits without serving again.
            self.signals.close();
        } else if let Err(e) = relay.resume() {
            error!("cannot serve again after a failed handover: {e}");
        }
    }
}

fn lock(relay: &Mutex<server::Relay>) -> MutexGuard<'_, server::Relay> {
    relay.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SIGHUP: reads the configuration again and puts in force what can change live; a bad file is
/// refused whole, and the relay goes on as it was.
fn reload(
    relay: &server::Relay,
    in_force: &mut config::Loaded,
    env: &[(String, OsString)],
    level: &reload::Handle<EnvFilter, Registry>,
) {
    let new = match config::reread(env) {
        Ok(new) => new,
        Err(e) => {
            error!("reload refused, the configuration in force is unchanged: {e}");
            return;
        }
    };
    let (live, fixed) = in_force.changes(&new);
    if !fixed.is_empty() {
        warn!(
            "reload: not changed, these take a restart: {}",
            fixed.join(", ")
        );
    }
    let shared = &relay.shared;
    let base = shared
        .live
        .current()
        .unwrap_or_else(|| shared.settings.clone());
    let mut wanted = new.args.settings();
    wanted.peers = new.args.peers(in_force.args.host);
    let published = base.with_live(&wanted);
    let limits = server::limits(&published);
    shared.budgets.retune(&published);
    shared.misses.retune(&published);
    shared.registry.retune(&published);
    shared.channels.retune(&published);
    shared.lists.set(&published);
    shared.boundary.set(published.peers.clone());
    // The workers rebuild their rate limits (full again) only when one of them changed, so
    // that a reload that changes none of them gives no flood a fresh burst.
    if !base.same_rates(&published) {
        shared.live.publish(published);
    }
    if let Err(e) = level.reload(log_filter(new.args.log_level.as_deref())) {
        error!("reload: cannot change the log filter: {e}");
    }
    in_force.take_live(&new);
    // Last, so that it says everything is in force (a filter that hides `info` hides it too),
    // with the limits in force as the start-up line gives them.
    let changed = if live.is_empty() {
        "no live setting changed".to_string()
    } else {
        live.join(", ")
    };
    info!(%limits, "reloaded: {changed}");
}

/// `--log-level`, else `RUST_LOG`, else `info` (see [`config::log_filter`]).
fn log_filter(level: Option<&str>) -> EnvFilter {
    config::log_filter(level, std::env::var("RUST_LOG").ok().as_deref())
}
