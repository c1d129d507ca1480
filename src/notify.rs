//! systemd's service notification (`sd_notify`): `READY=1` once every worker serves, and
//! `WATCHDOG=1` pings while they keep serving.
//!
//! A few lines over a Unix datagram socket rather than the `sd-notify` crate: the protocol is
//! one datagram of `KEY=value` lines to `$NOTIFY_SOCKET`, and the ping must be tied to this
//! relay's own readiness check anyway.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tracing::{debug, warn};

use relay_core::shared::Shared;

use crate::clock::Clock;

/// How often readiness is checked until the workers first serve.
const READY_POLL: Duration = Duration::from_millis(10);

/// Where systemd listens and how often it wants a ping, from the environment it sets.
struct Service {
    socket: UnixDatagram,
    watchdog: Option<Duration>,
}

/// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (absent or empty: not run by systemd, nothing
/// to do). A socket that cannot be reached is warned of and the relay runs without notifying, as
/// sd_notify(3) does (a stale variable inherited from elsewhere must not stop a relay); a
/// `WATCHDOG_USEC` that is not a number stops start-up naming it.
fn service() -> io::Result<Option<Service>> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let named = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("NOTIFY_SOCKET={}: {e}", path.to_string_lossy()),
        )
    };
    let bytes = path.as_encoded_bytes();
    // A name starting with '@' is in the abstract namespace, where the '@' stands for a NUL.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    }
    .map_err(named);
    let socket = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound().map_err(named)?;
        socket.connect_addr(&addr).map_err(named)?;
        Ok(socket)
    });
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            warn!("not notifying systemd: {e}");
            return Ok(None);
        }
    };
    // systemd sets WATCHDOG_PID when the watchdog is meant for one process of several.
    let ours = std::env::var("WATCHDOG_PID")
        .map_or(true, |pid| pid.trim() == std::process::id().to_string());
    let watchdog = match std::env::var("WATCHDOG_USEC") {
        Ok(v) if ours => {
            let usec: u64 = v.trim().parse().ok().filter(|&u| u > 0).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("WATCHDOG_USEC={v}: not a positive number of microseconds"),
                )
            })?;
            // Half the timeout, as sd_watchdog_enabled(3) advises: one late ping is no failure;
            // at least 10 ms apart, whatever the timeout, so that a tiny one cannot spin.
            Some(Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
        }
        _ => None,
    };
    Ok(Some(Service { socket, watchdog }))
}

/// Starts notifying systemd, if it runs the relay: a thread sends `READY=1` once every worker
/// serves, then `WATCHDOG=1` each half watchdog interval in which they still do (a stalled
/// worker stops the pings, and systemd restarts the relay).
pub fn start(shared: Arc<Shared>, clock: Clock) -> io::Result<()> {
    let Some(service) = service()? else {
        return Ok(());
    };
    thread::Builder::new()
        .name("notify".into())
        .spawn(move || {
            while shared.metrics.ready(clock.now().ms).is_err() {
                thread::sleep(READY_POLL);
            }
            send(&service.socket, "READY=1");
            let Some(every) = service.watchdog else {
                return;
            };
            loop {
                thread::sleep(every);
                match shared.metrics.ready(clock.now().ms) {
                    Ok(()) => send(&service.socket, "WATCHDOG=1"),
                    Err(why) => warn!(?why, "not ready: no watchdog ping"),
                }
            }
        })?;
    Ok(())
}

fn send(socket: &UnixDatagram, state: &str) {
    if let Err(e) = socket.send(state.as_bytes()) {
        warn!(error = %e, state, "cannot notify systemd");
    } else {
        debug!(state, "notified systemd");
    }
}
