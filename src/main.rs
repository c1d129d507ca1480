//! The `udp-relay` binary: configuration, logging, signals.

use std::io::IsTerminal;
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use udp_relay::config::{self, Invocation, LogFormat};
use udp_relay::server;

fn main() -> ExitCode {
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
    let args = loaded.args;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let relay = match server::start(&args) {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let sig = signals.forever().next();
    info!(signal = ?sig, "shutting down");
    let shared = relay.shared.clone();
    relay.shutdown();
    info!(peers = shared.registry.len(), "stopped");
    ExitCode::SUCCESS
}
