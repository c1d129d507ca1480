//! `udp-chat`: a terminal chat on udp-peer. Each line typed is a message to the peer; each line
//! received is printed `Bob: text [direct]` or `[relay]`; `/status` shows the path, its
//! round-trip time and the NAT's mapping type; `/quit` leaves once what was sent is delivered.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use udp_peer::relay::Mapping;
use udp_peer::runner::{self, Command};
use udp_peer::{Config, Event, Peer, Status, identity};

/// A terminal chat, end-to-end encrypted, direct where the NATs allow and through a udp-relay
/// where they do not.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    chat: ChatArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Makes a new identity: an Ed25519 key in a new file (never overwritten).
    Keygen {
        /// Where to write it.
        key: PathBuf,
    },
}

#[derive(clap::Args)]
struct ChatArgs {
    /// The relay, HOST:PORT.
    #[arg(long)]
    relay: Option<String>,
    /// The name to register.
    #[arg(long)]
    name: Option<String>,
    /// The identity key file (`udp-chat keygen FILE` makes one).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The peer to talk to; without it, the first peer who connects.
    #[arg(long)]
    peer: Option<String>,
    /// Pinned peer keys (default: `known_peers` beside the key file).
    #[arg(long)]
    known_peers: Option<PathBuf>,
    /// A second STUN server (another relay, or another port of it), HOST:PORT: tells the NAT's
    /// mapping type.
    #[arg(long)]
    stun2: Option<String>,
    /// The local address to bind.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// Registers unsigned (for a relay that takes only the old peers' registration).
    #[arg(long)]
    open: bool,
    /// The relay's peer timeout in seconds (its `--peer-timeout`): keepalives go at a third.
    /// At most a day: a timer beyond what the clock can add would end the chat when it is set.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(3..=86_400))]
    relay_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Some(Cmd::Keygen { key }) => keygen(&key),
        None => chat(cli.chat),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("udp-chat: {e}");
            ExitCode::from(2)
        }
    }
}

fn keygen(path: &Path) -> Result<ExitCode, String> {
    let key = identity::generate()?;
    identity::save_key(path, &key)?;
    println!(
        "wrote {} (public key {})",
        path.display(),
        identity::show(&key.verifying_key().to_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

fn resolve(flag: &str, s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{flag} {s}: not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{flag} {s}: resolves to no address"))
}

/// `text` with control characters shown as `?`: a peer's message cannot steer the terminal.
fn printable(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn chat(a: ChatArgs) -> Result<ExitCode, String> {
    let relay = resolve(
        "--relay",
        a.relay
            .as_deref()
            .ok_or("--relay HOST:PORT is required (or `udp-chat keygen FILE`)")?,
    )?;
    let name = a.name.ok_or("--name NAME is required")?;
    if !relay_wire::valid_name(&name) {
        return Err(format!(
            "--name {name:?}: a name is 1-64 bytes of UTF-8 without control characters"
        ));
    }
    let key_path = a
        .key
        .ok_or("--key FILE is required (`udp-chat keygen FILE` makes one)")?;
    let key = identity::load_key(&key_path)?;
    let known_path = a.known_peers.unwrap_or_else(|| {
        key_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("known_peers")
    });
    let known = identity::load_known(&known_path)?;
    let stun2 = a
        .stun2
        .as_deref()
        .map(|s| resolve("--stun2", s))
        .transpose()?;
    let sock = UdpSocket::bind(a.bind).map_err(|e| format!("--bind {}: {e}", a.bind))?;
    let port = sock.local_addr().map_err(|e| e.to_string())?.port();
    let mut cfg = Config::new(&name, key, relay, seed());
    cfg.signed = !a.open;
    cfg.stun2 = stun2;
    cfg.timers.relay_timeout = Duration::from_secs(a.relay_timeout);
    cfg.local = if a.bind.ip().is_unspecified() {
        runner::local_addresses(port)
    } else {
        vec![SocketAddr::new(a.bind.ip(), port)]
    };
    cfg.local.retain(|l| l.is_ipv4() == relay.is_ipv4());
    let mut peer = Peer::new(cfg, known, Instant::now());
    if let Some(p) = &a.peer {
        peer.connect(p, Instant::now())
            .map_err(|e| format!("--peer {p:?}: {e}"))?;
    }

    let current = Arc::new(Mutex::new(a.peer.clone()));
    let (tx, rx) = mpsc::channel();
    let typing = current.clone();
    std::thread::spawn(move || read_lines(&tx, &typing));

    let mut refused = None;
    let mut told_offline = HashSet::new();
    let out = std::io::stdout();
    let r = runner::run(&sock, &mut peer, &rx, |e| {
        let mut o = out.lock();
        match e {
            Event::Registered { public } => {
                // A refusal the relay took back (it is retried: a forged one changes nothing).
                refused = None;
                let _ = writeln!(
                    o,
                    "* registered as {name} at {relay}; our public address {public}"
                );
            }
            Event::RegistrationRefused { code, message } => {
                eprintln!(
                    "udp-chat: the relay at {relay} refused {name:?}: {code} ({message}); \
                     asking again"
                );
                refused = Some(code);
            }
            Event::RelayUnreachable => {
                eprintln!("udp-chat: the relay at {relay} does not answer (still trying)");
            }
            Event::AddressChanged { old, new } => {
                let _ = writeln!(o, "* our public address changed: {old} -> {new}");
            }
            Event::ConnectRequest { name } => {
                let _ = writeln!(o, "* {name} asks to connect");
            }
            Event::Connected { name } => {
                told_offline.remove(&name);
                let mut c = current.lock().expect("not poisoned");
                if c.is_none() {
                    *c = Some(name.clone());
                }
                let _ = writeln!(o, "* connected to {name}, end-to-end encrypted");
            }
            Event::PathChanged {
                name,
                via,
                addr,
                rtt,
            } => match (addr, rtt) {
                (Some(a), Some(r)) => {
                    let _ = writeln!(
                        o,
                        "* path to {name}: {via} {a} (rtt {:.1} ms)",
                        r.as_secs_f64() * 1e3
                    );
                }
                _ => {
                    let _ = writeln!(o, "* path to {name}: {via}");
                }
            },
            Event::Message { from, text, via } => {
                let _ = writeln!(o, "{from}: {} [{via}]", printable(&text));
            }
            Event::KeyPinned { name, key } => {
                if let Err(e) = identity::pin(&known_path, &name, &key) {
                    eprintln!("udp-chat: {e}");
                }
                let _ = writeln!(
                    o,
                    "* {name}'s key {} pinned in {}",
                    identity::show(&key),
                    known_path.display()
                );
            }
            Event::KeyMismatch {
                name,
                pinned,
                presented,
            } => {
                eprintln!(
                    "udp-chat: WARNING: {name}'s key has CHANGED: pinned {}, shown {}. \
                     Someone may be impersonating {name}; refused. If {name} really has a new \
                     key, remove its line from {}.",
                    identity::show(&pinned),
                    identity::show(&presented),
                    known_path.display()
                );
            }
            Event::PeerUnavailable { name, code } => {
                if told_offline.insert(name.clone()) {
                    let _ = writeln!(o, "* {name} is not available ({code}); asking again");
                }
            }
        }
        let _ = o.flush();
    });
    r.map_err(|e| format!("the socket failed: {e}"))?;
    Ok(if refused.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads typed lines and hands them to the runner: messages, `/status`, `/quit`.
fn read_lines(tx: &mpsc::Sender<Command>, current: &Mutex<Option<String>>) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "" => {}
            "/quit" => break,
            "/status" => {
                let (s, r) = mpsc::channel();
                if tx.send(Command::Status(s)).is_err() {
                    return;
                }
                if let Ok(st) = r.recv() {
                    print_status(&st);
                }
            }
            _ => {
                let Some(to) = current.lock().expect("not poisoned").clone() else {
                    eprintln!("udp-chat: no peer yet: start with --peer NAME, or wait for one");
                    continue;
                };
                let (s, r) = mpsc::channel();
                if tx.send(Command::Send(to, line.into_bytes(), s)).is_err() {
                    return;
                }
                if let Ok(Err(e)) = r.recv() {
                    eprintln!("udp-chat: not sent: {e}");
                }
            }
        }
    }
    // End of input: leave once what was sent is delivered, or after a while.
    let _ = tx.send(Command::Finish(Duration::from_secs(10)));
}

fn print_status(st: &Status) {
    let mapping = match st.mapping {
        Mapping::Unknown => "unknown (give --stun2 to measure it)",
        Mapping::EndpointIndependent => "endpoint-independent (cone: direct paths open)",
        Mapping::EndpointDependent => "endpoint-dependent (symmetric: direct paths rarely open)",
    };
    let mut o = std::io::stdout().lock();
    let public = st.public.map_or("unknown".into(), |p| p.to_string());
    let _ = writeln!(
        o,
        "registered: {}, public address {public}, NAT mapping {mapping}",
        if st.registered { "yes" } else { "no" }
    );
    for p in &st.peers {
        let path = match p.addr {
            Some(a) => format!("direct {a}"),
            None => "relay".into(),
        };
        let rtt = p.rtt.map_or(String::new(), |r| {
            format!(", rtt {:.1} ms", r.as_secs_f64() * 1e3)
        });
        let _ = writeln!(
            o,
            "{}: {}, path {path}{rtt}, {} unacknowledged",
            p.name,
            if p.connected {
                "connected"
            } else {
                "connecting"
            },
            p.unacked
        );
    }
}

/// A seed for ids and transactions, unlike any other run's.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_ne_bytes(b)
}
