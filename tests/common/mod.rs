//! Test harness: starts the `udp-relay` binary as a user would and acts as peers over loopback.
//!
//! Waits are on events (a log line, a datagram, a `pong` barrier) with a timeout, never sleeps.
//!
//! The peers write with `relay_wire::peer` and go by what `relay_wire::read` reads (types,
//! sessions, the `pong` barrier). Every message they receive is also parsed by serde_json, which
//! the tests assert on: an independent parser checking the relay's bytes, and the reader's.

#![allow(dead_code)]

pub mod forge;
pub mod redis;
pub mod signing;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_wire::peer;
use relay_wire::read::{self, FullAck, Message};
use serde_json::{Value, json};

/// The sans-IO tests' addresses and times: the crate's one harness.
#[allow(unused_imports)] // each test file uses what it needs of the harness
pub use relay_core::testing::{addr, at};

/// The error codes Part 2 allows.
pub const ERROR_CODES: &[&str] = &[
    "bad_request",
    "invalid_name",
    "name_in_use",
    "not_registered",
    "unknown_target",
    "too_large",
    "rate_limited",
    "auth_required",
    "bad_signature",
    "session_required",
    "watch_limit",
];

/// Flags that lift every reply, fan-out and presence budget: for tests of something else that
/// drive many replies to one loopback host.
pub const NO_BUDGETS: &[&str] = &[
    "--reply-credit",
    "0",
    "--reply-prefix-credit",
    "0",
    "--reply-global-credit",
    "0",
    "--fanout-allowance",
    "0",
    "--presence-rate",
    "0",
];

/// Flags that lift the admission limits (per source, prefix and relay): for tests that drive
/// one loopback host harder than a peer would.
pub const NO_LIMITS: &[&str] = &[
    "--source-rate",
    "0",
    "--source-bytes",
    "0",
    "--prefix-rate",
    "0",
    "--prefix-bytes",
    "0",
    "--global-rate",
    "0",
];

/// `s.recv_from`, again whenever a signal interrupted it (EINTR): a test's wait ends on a
/// datagram or on its timeout, never on a signal.
pub fn recv_from(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match s.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// [`recv_from`], the length only.
pub fn recv(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    recv_from(s, buf).map(|(n, _)| n)
}

/// `a` (registered and proven) binds a channel to `target`, `b`: its number, and the other
/// side's.
pub fn bind_channel(a: &Peer, b: &Peer, target: &str) -> (u32, u32) {
    a.send(a.authed(json!({"type": "bind", "target": target})));
    let ack = expect(a, "bind_ack");
    assert_eq!(ack["target"], target);
    let bound = expect(b, "channel_bound");
    assert_eq!(bound["peer_name"], a.authed(json!({}))["name"]);
    let number = |v: &Value| u32::try_from(v["channel"].as_u64().expect("a number")).unwrap();
    (number(&ack), number(&bound))
}

/// A frame: `0xD1`, flags 0, the channel number, the payload.
pub fn frame(channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    relay_wire::frame::write(&mut f, channel, payload);
    f
}

/// The next message of type `ty` for `p`, past presence news (joins, leaves, lists), which
/// these tests' peers get as they register.
pub fn expect(p: &Peer, ty: &str) -> Value {
    loop {
        let (m, v) = p.recv_both();
        match m {
            _ if m.ty() == ty => return v,
            Message::Presence { .. } | Message::PeerList { .. } => continue,
            _ => panic!("expected {ty}, got {v}"),
        }
    }
}

/// New peers of `relay`, each registered (and proven) under its name of `names`.
pub fn registered<const N: usize>(relay: &Relay, names: [&str; N]) -> [Peer; N] {
    names.map(|name| {
        let p = Peer::new(relay);
        p.register(name);
        p
    })
}

/// `a` then `b`, as one argument list.
pub fn args<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

/// How long any single expected event may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A running relay process.
pub struct Relay {
    child: Option<Child>,
    /// The relay's UDP address.
    pub addr: SocketAddr,
    /// The relay's metrics address.
    pub metrics: SocketAddr,
    logs: Arc<Mutex<String>>,
    lines: Receiver<String>,
    /// How many of the two output readers reached the end.
    readers_done: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    /// Starts the relay on 127.0.0.1 with a free port, extra `args` and `RUST_LOG=debug`.
    pub fn start(args: &[&str]) -> Relay {
        Relay::start_with(args, &[("RUST_LOG", "debug")], "127.0.0.1")
    }

    /// Starts the relay on `host` with `args` and environment `env`.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], host: &str) -> Relay {
        Relay::spawn(Relay::command(args, env, host))
    }

    /// The command [`Relay::start_with`] runs, for a caller to adjust before [`Relay::spawn`].
    pub fn command(args: &[&str], env: &[(&str, &str)], host: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_udp-relay"));
        cmd.args(["--host", host, "--metrics-listen", "127.0.0.1:0"]);
        // Any free port, unless the test names one (a restart comes back on the peers' port).
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `cmd` (from [`Relay::command`]) and waits until the relay listens.
    pub fn spawn(mut cmd: Command) -> Relay {
        let mut child = cmd.spawn().expect("start udp-relay");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = channel();
        let readers_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let logs = logs.clone();
            let tx = tx.clone();
            let done = readers_done.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().unwrap().push_str(&line);
                    logs.lock().unwrap().push('\n');
                    let _ = tx.send(line);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Release);
            });
        }
        let mut relay = Relay {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics: "0.0.0.0:0".parse().unwrap(),
            logs,
            lines,
            readers_done,
        };
        let metrics = relay.wait_log("metrics on http://");
        relay.metrics = after(&metrics, "metrics on http://")
            .trim_end_matches("/metrics")
            .parse()
            .unwrap();
        let listening = relay.wait_log("listening on ");
        relay.addr = after(&listening, "listening on ").parse().unwrap();
        relay
    }

    /// Every refusal counter, by reason.
    pub fn refusals(&self) -> std::collections::BTreeMap<String, u64> {
        self.metrics_text()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("udp_relay_datagrams_refused_total{reason=\"")?;
                let (reason, v) = rest.split_once("\"} ")?;
                Some((reason.to_string(), v.trim().parse().unwrap()))
            })
            .collect()
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("relay running").id()
    }

    /// The relay's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc status");
        kb * 1024
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}; logs:\n{}", self.logs()),
            }
        }
    }

    /// Everything the relay has written so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The metrics page.
    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).expect("metrics endpoint");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// The value of metric line `series` (e.g. `udp_relay_datagrams_refused_total{reason="too_deep"}`).
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no metric {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Refusals counted for `reason`.
    pub fn refused(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "udp_relay_datagrams_refused_total{{reason=\"{reason}\"}}"
        ))
    }

    /// Sends SIGTERM (or `signal`) and waits for exit; returns the status and how long it took.
    pub fn stop_with(&mut self, signal: i32) -> (ExitStatus, Duration) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid() as i32, signal) };
        self.wait_exit()
    }

    /// Waits for the relay to exit (by itself, or after a signal); how long it took.
    pub fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let child = self.child.as_mut().unwrap();
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                let took = t.elapsed();
                // Until the readers reach the end of the output, so that `logs` holds all of
                // it: its last lines may still be in the pipe.
                while self.readers_done.load(std::sync::atomic::Ordering::Acquire) < 2 {
                    assert!(t.elapsed() < TIMEOUT * 2, "the relay's output did not end");
                    std::thread::yield_now();
                }
                return (status, took);
            }
            assert!(t.elapsed() < TIMEOUT, "relay did not exit");
            std::thread::yield_now();
        }
    }

    /// Stops with SIGTERM.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    // Up to a space, or the closing quote of a JSON log line (`--log-format json`).
    rest.split(|c: char| c.is_whitespace() || c == '"')
        .next()
        .unwrap()
}

/// A peer: one UDP socket talking to the relay.
pub struct Peer {
    /// The peer's socket.
    pub sock: UdpSocket,
    /// The relay's address.
    pub relay: SocketAddr,
    /// The name this peer last registered and its session (from the `register_ack`), once
    /// [`Peer::register`] ran.
    ident: Mutex<Option<(String, String)>>,
    /// Datagrams that arrived while [`Peer::register`] waited for its own answers.
    pending: Mutex<std::collections::VecDeque<Vec<u8>>>,
}

impl Peer {
    /// A peer on a loopback network of its own (127.16.0.0/12, one /24 each), as peers on the
    /// internet are: peers of one network hear of each other's joins only once proven (Part 2),
    /// which the tests of that case set up themselves with [`Peer::bind`].
    pub fn new(relay: &Relay) -> Peer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (b, c) = (16 + (n >> 8) % 16, n % 256);
        Peer::bind(relay.addr, &format!("127.{b}.{c}.1:0"))
    }

    /// A peer bound to `local`, talking to `relay`.
    pub fn bind(relay: SocketAddr, local: &str) -> Peer {
        let sock = UdpSocket::bind(local).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        Peer {
            sock,
            relay,
            ident: Default::default(),
            pending: Default::default(),
        }
    }

    /// The peer's address as the relay sees it.
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Sends raw bytes.
    pub fn send_raw(&self, d: &[u8]) {
        self.sock.send_to(d, self.relay).unwrap();
    }

    /// Sends `datagrams` (all of one size but the last, which may be shorter) as one
    /// `UDP_SEGMENT` send, which the kernel splits, or hands whole to a receiver with `UDP_GRO`.
    pub fn send_segmented(&self, datagrams: &[Vec<u8>]) {
        let to = socket2::SockAddr::from(self.relay);
        let mut iovs: Vec<libc::iovec> = datagrams
            .iter()
            .map(|d| libc::iovec {
                iov_base: d.as_ptr() as *mut _,
                iov_len: d.len(),
            })
            .collect();
        #[repr(C, align(8))]
        struct Control([u8; 32]);
        let mut control = Control([0; 32]);
        // SAFETY: the header points at live locals for the call; CMSG_SPACE of a u16 (24) fits
        // the aligned 32-byte control buffer.
        let r = unsafe {
            let mut h: libc::msghdr = std::mem::zeroed();
            h.msg_name = to.as_ptr() as *mut _;
            h.msg_namelen = to.len();
            h.msg_iov = iovs.as_mut_ptr();
            h.msg_iovlen = iovs.len();
            h.msg_control = control.0.as_mut_ptr().cast();
            h.msg_controllen = libc::CMSG_SPACE(2) as usize;
            let cm = libc::CMSG_FIRSTHDR(&h);
            (*cm).cmsg_level = libc::IPPROTO_UDP;
            (*cm).cmsg_type = 103; // UDP_SEGMENT
            (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), datagrams[0].len() as u16);
            libc::sendmsg(std::os::fd::AsRawFd::as_raw_fd(&self.sock), &h, 0)
        };
        assert!(
            r >= 0,
            "segmented send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Sends a JSON message.
    pub fn send(&self, v: Value) {
        self.send_raw(v.to_string().as_bytes());
    }

    /// Receives one raw datagram (fails the test after [`TIMEOUT`]).
    pub fn recv_raw(&self) -> Vec<u8> {
        if let Some(d) = self.pending.lock().unwrap().pop_front() {
            return d;
        }
        self.recv_wire()
    }

    fn recv_wire(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = recv_from(&self.sock, &mut buf)
            .unwrap_or_else(|e| panic!("{} waited for a datagram: {e}", self.addr()));
        assert_eq!(from, self.relay, "datagram from an unexpected address");
        buf.truncate(n);
        buf
    }

    /// Receives one JSON message, read both ways: by `relay_wire::read` (the typed message) and
    /// by serde_json (the value). Either failing fails the test.
    fn recv_both(&self) -> (Message<'static>, Value) {
        let d = self.recv_raw();
        let v = serde_json::from_slice(&d).unwrap_or_else(|e| {
            panic!("relay sent non-JSON ({e}): {}", String::from_utf8_lossy(&d))
        });
        let m = read::message(&d).unwrap_or_else(|e| {
            panic!(
                "relay_wire::read cannot read ({e}): {}",
                String::from_utf8_lossy(&d)
            )
        });
        (m.into_owned(), v)
    }

    /// Receives one JSON message, as serde_json parses it (which the reader must read too).
    pub fn recv(&self) -> Value {
        self.recv_both().1
    }

    /// Receives one message, as `relay_wire::read` reads it (which serde_json must parse too).
    pub fn recv_msg(&self) -> Message<'static> {
        self.recv_both().0
    }

    /// Receives one message, which must be of type `ty`; both readings.
    fn expect_both(&self, ty: &str) -> (Message<'static>, Value) {
        let (m, v) = self.recv_both();
        assert_eq!(m.ty(), ty, "expected {ty}, got {v}");
        (m, v)
    }

    /// Receives one message, which must be of type `ty`.
    pub fn expect(&self, ty: &str) -> Value {
        self.expect_both(ty).1
    }

    /// Receives one message, which must be of type `ty`, as `relay_wire::read` reads it.
    pub fn expect_msg(&self, ty: &str) -> Message<'static> {
        self.expect_both(ty).0
    }

    /// Barrier: sends `ping` and returns every message that arrived before the `pong`. Since
    /// the relay serves one source in order, everything it sent this peer before answering is
    /// in the returned list.
    /// The ping is authenticated once the peer has registered, so its pong is a reply the relay
    /// always sends, whatever the budgets of this (shared, loopback) host.
    pub fn drain(&self) -> Vec<Value> {
        self.send_raw(&self.ping_bytes());
        let mut before = Vec::new();
        loop {
            match self.recv_both() {
                (Message::Pong { .. }, _) => return before,
                (_, v) => before.push(v),
            }
        }
    }

    /// Asserts nothing is waiting for this peer (beyond what `drain` would return).
    pub fn expect_nothing(&self) {
        let got = self.drain();
        assert!(
            got.is_empty(),
            "{} expected nothing, got {got:?}",
            self.addr()
        );
    }

    /// Registers `name` and returns the `register_ack`, consuming the `peer_list` too.
    /// Then, as a new peer does, it shows its session back from its address (an authenticated
    /// `ping`), so that the relay trusts the registration; what else arrives meanwhile is kept
    /// for the next `recv`.
    pub fn register(&self, name: &str) -> (Value, Value) {
        let (ack_msg, ack, list) = self.register_unproven(name);
        let Message::RegisterAck {
            full:
                Some(FullAck {
                    session: Some(session),
                    ..
                }),
            ..
        } = ack_msg
        else {
            panic!("expected a full register_ack with a session, got {ack}");
        };
        *self.ident.lock().unwrap() = Some((name.to_string(), session.into_owned()));
        self.send_raw(&self.ping_bytes());
        let mut kept = Vec::new();
        loop {
            let d = self.recv_raw();
            if let Ok(Message::Pong { .. }) = read::message(&d) {
                break;
            }
            kept.push(d);
        }
        self.pending.lock().unwrap().extend(kept);
        (ack, list)
    }

    /// Registers `name` as an old peer does: no session is ever shown back.
    pub fn register_old(&self, name: &str) -> (Value, Value) {
        let (_, ack, list) = self.register_unproven(name);
        (ack, list)
    }

    /// Sends `register` of `name`; the `register_ack` (read both ways) and the `peer_list`.
    fn register_unproven(&self, name: &str) -> (Message<'static>, Value, Value) {
        let mut d = Vec::new();
        peer::register(&mut d, name, None);
        self.send_raw(&d);
        let (ack_msg, ack) = self.expect_both("register_ack");
        let list = self.expect("peer_list");
        (ack_msg, ack, list)
    }

    /// The session of the name this peer registered last.
    pub fn session(&self) -> String {
        self.ident
            .lock()
            .unwrap()
            .as_ref()
            .expect("registered")
            .1
            .clone()
    }

    /// `msg` with the name and session of this peer's registration added: authenticated.
    pub fn authed(&self, mut msg: Value) -> Value {
        if let Some((name, session)) = &*self.ident.lock().unwrap() {
            msg["session"] = json!(session);
            if msg.get("name").is_none() {
                msg["name"] = json!(name);
            }
        }
        msg
    }

    /// A `ping`, authenticated once the peer has registered.
    pub fn ping(&self) -> Value {
        self.authed(json!({"type": "ping"}))
    }

    /// [`Peer::ping`] as `relay_wire::peer` writes it.
    fn ping_bytes(&self) -> Vec<u8> {
        let ident = self.ident.lock().unwrap();
        let (name, session) = ident
            .as_ref()
            .map(|(n, s)| (n.as_str(), s.as_str()))
            .unzip();
        let mut d = Vec::new();
        peer::ping(&mut d, name, session);
        d
    }
}

/// Runs `f` on a thread of its own in a network namespace of its own, its loopback up and the
/// IPv6 addresses `addrs` added to it, so that peers can be hosts of networks loopback has not
/// (a relay started from `f` is in it too). The namespace goes with the thread and the
/// processes it started. `None`, with a line saying `test` is skipped, without root.
pub fn in_own_network<T: Send>(
    test: &str,
    addrs: &[String],
    f: impl FnOnce() -> T + Send,
) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED {test}: a network namespace of its own needs root");
        return None;
    }
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            // SAFETY: unshare with CLONE_NEWNET moves this thread alone into a new namespace.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            ip(&["link", "set", "lo", "up"]);
            for a in addrs {
                ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ]);
            }
            f()
        });
        Some(run.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    })
}
