//! The `udp-relay` binary: configuration, logging, signals.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};
use udp_relay::config::{self, Invocation, LogFormat};
use udp_relay::server;

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
    let relay = match server::start(&args) {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The environment a reload reads is the one the relay started with.
    let env = config::environment();
    let sig = signals.forever().find(|&sig| {
        if sig == SIGHUP {
            reload(&relay, &mut in_force, &env, &level);
            return false;
        }
        true
    });
    info!(signal = ?sig, "shutting down");
    let shared = relay.shared.clone();
    relay.shutdown();
    info!(peers = shared.registry.len(), "stopped");
    ExitCode::SUCCESS
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
    let published = base.with_live(&new.args.settings());
    shared.budgets.retune(&published);
    shared.lists.set(&published);
    // The workers rebuild their rate limits (full again) only when one of them changed, so
    // that a reload that changes none of them gives no flood a fresh burst.
    if !base.same_rates(&published) {
        shared.live.publish(published);
    }
    if let Err(e) = level.reload(log_filter(new.args.log_level.as_deref())) {
        error!("reload: cannot change the log filter: {e}");
    }
    in_force.take_live(&new);
    // Last, so that it says everything is in force (a filter that hides `info` hides it too).
    if live.is_empty() {
        info!("reloaded: no live setting changed");
    } else {
        info!("reloaded: {}", live.join(", "));
    }
}

/// `--log-level`, else `RUST_LOG`, else `info`.
fn log_filter(level: Option<&str>) -> EnvFilter {
    match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
}
