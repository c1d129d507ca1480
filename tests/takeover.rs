//! Takeover (`--takeover`): a relay started with the same command line while one runs takes
//! over its sockets and its state. Peers with traffic flowing through it (JSON relays and
//! channel frames, on both backends) keep their registrations, sessions and channels, and
//! re-register never; what the handover loses is counted and printed.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A takeover socket path of this test's own.
fn socket_path(test: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("udp-relay-{test}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// What one receiver got of a stream of numbered datagrams, until its `end`.
fn receive_until_end(p: &Peer, frames: bool) -> HashSet<u64> {
    let mut got = HashSet::new();
    loop {
        let d = p.recv_raw();
        if frames {
            if d.first() != Some(&0xD1) {
                continue;
            }
            if &d[6..] == b"end" {
                return got;
            }
            got.insert(u64::from_be_bytes(d[6..14].try_into().unwrap()));
        } else {
            let v: Value = serde_json::from_slice(&d).unwrap();
            if v["type"] != "relayed_packet" {
                continue;
            }
            match v["payload"].as_u64() {
                Some(i) => got.insert(i),
                None => return got,
            };
        }
    }
}

/// Runs a takeover of a relay on backend `io` under traffic; returns what it lost (relays,
/// frames) and how long the new relay took from its start to serving.
fn take_over_under_traffic(io: &str) -> (u64, u64) {
    let path = socket_path(&format!("traffic-{io}"));
    let args = args(
        &[
            "--io",
            io,
            "--workers",
            "2",
            "--takeover",
            path.to_str().unwrap(),
        ],
        NO_LIMITS,
    );
    let mut old = Relay::start(&args);
    let [alice, bob, carol, dave] = registered(&old, ["alice", "bob", "carol", "dave"]);
    let (c_num, d_num) = bind_channel(&carol, &dave, "dave");
    // Peers registered before bob, carol and dave hear of them: nothing else is on their way.
    for p in [&alice, &bob, &carol, &dave] {
        p.drain();
    }

    // The relay sends what queued during the pause at once: receivers with the kernel's
    // default buffer, on a busy machine, would drop some of that burst themselves.
    for p in [&bob, &dave] {
        socket2::SockRef::from(&p.sock)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
    }
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (relays, frames, mut new) = std::thread::scope(|s| {
        let to_bob = s.spawn(|| receive_until_end(&bob, false));
        let to_dave = s.spawn(|| receive_until_end(&dave, true));
        let sender = s.spawn(|| {
            let started = Instant::now();
            let mut i = 0u64;
            // Bounded in count and time; about 20,000 datagrams a second.
            while !stop.load(Ordering::Relaxed) && i < 200_000 && started.elapsed() < TIMEOUT * 4 {
                for _ in 0..20 {
                    alice.send(
                        json!({"type": "relay", "source": "alice", "target": "bob", "payload": i}),
                    );
                    carol.send_raw(&frame(c_num, &i.to_be_bytes()));
                    i += 1;
                }
                sent.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        });
        let wait_sent = |n: u64| {
            let t = Instant::now();
            while sent.load(Ordering::Relaxed) < n {
                assert!(t.elapsed() < TIMEOUT, "traffic did not flow");
                std::thread::yield_now();
            }
        };
        wait_sent(1000);
        let began = Instant::now();
        let mut new = Relay::start(&args);
        new.wait_log("took over: serving");
        let took = began.elapsed();
        assert_eq!(new.addr, old.addr);
        old.wait_log("handed over: the new relay serves");
        let (status, _) = old.wait_exit();
        assert!(status.success(), "the old relay exited with {status}");
        let after = sent.load(Ordering::Relaxed);
        wait_sent(after + 2000);
        stop.store(true, Ordering::Relaxed);
        let total = sender.join().unwrap();
        alice.send(json!({"type": "relay", "source": "alice", "target": "bob", "payload": "end"}));
        carol.send_raw(&frame(c_num, b"end"));
        let (r, f) = (to_bob.join().unwrap(), to_dave.join().unwrap());
        println!(
            "{io}: takeover in {} ms under traffic: {total} relays and {total} frames sent, \
             {} and {} lost",
            took.as_millis(),
            total - r.len() as u64,
            total - f.len() as u64,
        );
        ((total - r.len() as u64), (total - f.len() as u64), new)
    });

    // Nothing was registered again, and every registration, session and channel is the old
    // relay's: a frame under the old number arrives, carol's bind finds the pair it had, and
    // alice's session moves her to a new address.
    assert_eq!(new.metric("udp_relay_peers_registered"), 4);
    assert_eq!(new.metric("udp_relay_registrations_total"), 0);
    carol.send_raw(&frame(c_num, b"after"));
    assert_eq!(dave.recv_raw(), frame(d_num, b"after"));
    carol.send(carol.authed(json!({"type": "bind", "target": "dave"})));
    assert_eq!(expect(&carol, "bind_ack")["channel"], c_num);
    let moved = Peer::new(&new);
    moved.send(json!({"type": "register", "name": "alice", "session": alice.session()}));
    let ack = expect(&moved, "register_ack");
    assert_ne!(
        ack["session"],
        alice.session(),
        "a move issues a new session"
    );

    // The new relay listens on the takeover socket in its turn.
    let mut newer = Relay::start(&args);
    newer.wait_log("took over: serving");
    let (status, _) = new.wait_exit();
    assert!(status.success());
    bob.send(bob.ping());
    assert_eq!(expect(&bob, "pong")["type"], "pong");
    (relays, frames)
}

#[test]
fn a_takeover_under_traffic_keeps_every_registration_session_and_channel() {
    for io in ["mmsg", "uring"] {
        let (relays, frames) = take_over_under_traffic(io);
        // The sockets never close, so the kernel holds what arrives during the pause; the
        // workers decide and send everything they received before they stop.
        assert_eq!(
            (relays, frames),
            (0, 0),
            "{io}: datagrams lost in the takeover"
        );
    }
}

/// Runs a relay to take over from `path` with `extra` flags (on any port unless they name
/// one), expecting it to fail; what it wrote.
fn failed_takeover(path: &str, extra: &[&str]) -> String {
    let port: &[&str] = if extra.contains(&"--port") {
        &[]
    } else {
        &["--port", "0"]
    };
    let out = Command::new(env!("CARGO_BIN_EXE_udp-relay"))
        .args(["--host", "127.0.0.1", "--takeover", path])
        .args(port)
        .args(extra)
        .output()
        .expect("run udp-relay");
    assert!(!out.status.success(), "it should have failed");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_refused_takeover_leaves_the_old_relay_serving() {
    let path = socket_path("refused");
    let p = path.to_str().unwrap();
    let mut old = Relay::start(&["--takeover", p]);
    let (alice, bob) = (Peer::new(&old), Peer::new(&old));
    alice.register("alice");
    bob.register("bob");
    // Another address than the old relay's: the takeover is refused, the old relay serves on.
    let port = (old.addr.port() + 1).to_string();
    let err = failed_takeover(p, &["--port", &port]);
    assert!(
        err.contains("listens on") && err.contains("serves on"),
        "{err}"
    );
    old.wait_log("serving on");
    alice.send(alice.ping());
    assert_eq!(expect(&alice, "pong")["type"], "pong");
    // A state the new relay cannot hold is refused by name, and the old relay serves on.
    let err = failed_takeover(p, &["--max-peers", "1"]);
    assert!(
        err.contains("--max-peers") && err.contains("serves on"),
        "{err}"
    );
    alice.send(alice.ping());
    assert_eq!(expect(&alice, "pong")["type"], "pong");
    // Something that is not a relay speaks on the socket: refused, and nothing changes.
    let mut junk = UnixStream::connect(&path).unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    old.wait_log("not a takeover request");
    alice.send(alice.ping());
    assert_eq!(expect(&alice, "pong")["type"], "pong");
    assert_eq!(old.metric("udp_relay_peers_registered"), 2);
    let (status, _) = old.stop();
    assert!(status.success());
}

#[test]
fn a_socket_left_by_a_relay_that_died_does_not_stop_the_next() {
    let path = socket_path("stale");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let old = Relay::start(&["--takeover", path.to_str().unwrap()]);
    let alice = Peer::new(&old);
    alice.register("alice");
    // Anything else at the path is not the relay's to remove.
    let file = socket_path("not-a-socket");
    std::fs::write(&file, b"data").unwrap();
    let err = failed_takeover(file.to_str().unwrap(), &[]);
    assert!(
        err.contains("--takeover") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    let _ = std::fs::remove_file(file);
}

/// The takeover exchange as a test speaks it, either side, with the relay's framing.
mod wire {
    use std::io::{IoSlice, IoSliceMut, Read, Write};
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    use rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    };

    pub fn text(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    pub fn hello() -> Vec<u8> {
        hello_of(udp_relay::state::FORMAT)
    }

    /// A request from a relay whose state format is `format`.
    pub fn hello_of(format: u32) -> Vec<u8> {
        let mut h = b"UDPRLYTK".to_vec();
        h.extend_from_slice(&format.to_le_bytes());
        h.extend(text("test"));
        h
    }

    /// Reads a request (`HELLO`, format, version) as the running relay does.
    pub fn read_hello(conn: &mut UnixStream) -> std::io::Result<()> {
        let mut head = [0u8; 14];
        conn.read_exact(&mut head)?;
        assert_eq!(&head[..8], b"UDPRLYTK");
        let mut version = vec![0; usize::from(u16::from_le_bytes([head[12], head[13]]))];
        conn.read_exact(&mut version)
    }

    /// Sends an offer as the running relay does: `fds` (the takeover listener first, then the
    /// sockets), the version and `image`.
    pub fn offer(conn: &mut UnixStream, fds: &[&OwnedFd], image: &[u8]) {
        let mut head = vec![b'O'];
        head.extend_from_slice(&((fds.len() - 1) as u32).to_le_bytes());
        head.push(0);
        head.extend_from_slice(&(image.len() as u64).to_le_bytes());
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        assert!(cmsg.push(SendAncillaryMessage::ScmRights(&borrowed)));
        let n = rustix::net::sendmsg(
            &*conn,
            &[IoSlice::new(&head)],
            &mut cmsg,
            SendFlags::empty(),
        )
        .unwrap();
        conn.write_all(&head[n..]).unwrap();
        conn.write_all(&text("test")).unwrap();
        conn.write_all(image).unwrap();
    }

    /// Receives an offer as a new relay does: the descriptors, and the image.
    pub fn receive_offer(conn: &mut UnixStream) -> (Vec<OwnedFd>, Vec<u8>) {
        let mut head = [0u8; 14];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            &*conn,
            &mut [IoSliceMut::new(&mut head)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        let mut fds = Vec::new();
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(got) = m {
                fds.extend(got);
            }
        }
        conn.read_exact(&mut head[r.bytes..]).unwrap();
        assert_eq!(head[0], b'O', "not an offer");
        let image_len = u64::from_le_bytes(head[6..14].try_into().unwrap());
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).unwrap();
        let mut version = vec![0; usize::from(u16::from_le_bytes(len))];
        conn.read_exact(&mut version).unwrap();
        let mut image = vec![0; image_len as usize];
        conn.read_exact(&mut image).unwrap();
        (fds, image)
    }
}

/// Sets this thread's effective uid (the others' stay), with the raw system call: glibc's
/// `seteuid` would change every thread of the test process.
fn set_thread_euid(uid: u32) {
    // SAFETY: setresuid with -1 leaves the real and saved uids; it changes this thread only.
    let r = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, i64::from(uid), -1i64) };
    assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
}

/// Whether the test runs as root (needed to listen as another user).
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Another local user who can write where the takeover socket is to be (a careless
/// `--takeover /tmp/…`) listens there first, and offers a socket of its own and a state whose
/// keys it knows: the new relay must refuse it, as the running relay refuses a request from
/// another user, and not serve on a socket the other user shares, with sessions it can forge.
#[test]
fn an_offer_from_another_user_is_refused() {
    if !root() {
        println!("skipped: needs root to listen as another user");
        return;
    }
    let dir = std::env::temp_dir().join(format!("udp-relay-foreign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let path = dir.join("takeover");
    let (tx, rx) = std::sync::mpsc::channel();
    let listening = {
        let path = path.clone();
        std::thread::spawn(move || {
            set_thread_euid(65534);
            let listener = UnixListener::bind(&path).unwrap();
            set_thread_euid(0);
            tx.send(()).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            // Refused before it asks, it never speaks.
            wire::read_hello(&mut conn).ok()?;
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let shared = relay_core::shared::Shared::new(Default::default(), 1);
            let image = udp_relay::state::export(&shared, udp_relay::clock::Clock::default());
            let fds = [
                std::os::fd::OwnedFd::from(listener),
                std::os::fd::OwnedFd::from(udp),
            ];
            wire::offer(&mut conn, &[&fds[0], &fds[1]], &image);
            let mut answer = [0u8; 1];
            let answered = std::io::Read::read_exact(&mut conn, &mut answer).ok();
            if answered.is_some() && answer[0] == b'R' {
                let _ = conn.write_all(b"G");
            }
            answered.map(|()| answer[0])
        })
    };
    rx.recv().unwrap();
    let mut new = Command::new(env!("CARGO_BIN_EXE_udp-relay"))
        .args(["--host", "127.0.0.1", "--port", "0", "--takeover"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = new.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > TIMEOUT {
            let _ = new.kill();
            let _ = new.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut new.stderr.take().unwrap(), &mut err).unwrap();
    let answer = listening.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(
        answer,
        Some(b'R'),
        "the new relay accepted another user's offer: {err}"
    );
    assert!(status.is_some_and(|s| !s.success()), "{err}");
    assert!(err.contains("uid 65534"), "{err}");
}

/// A SIGTERM that arrives while the running relay hands over (the new relay restoring) waits
/// for the handover; once the new relay took over, the old one exits as handed over, and does
/// not write its state, stale from then on, over the state file the new relay is to write.
#[test]
fn a_sigterm_during_a_handover_writes_no_stale_state() {
    let path = socket_path("sigterm");
    let file = std::env::temp_dir().join(format!("udp-relay-sigterm-{}.state", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut old = Relay::start(&[
        "--takeover",
        path.to_str().unwrap(),
        "--state-file",
        file.to_str().unwrap(),
    ]);
    old.wait_log("takeover socket listening");
    Peer::new(&old).register("alice");
    let mut conn = UnixStream::connect(&path).unwrap();
    conn.write_all(&wire::hello()).unwrap();
    let (fds, image) = wire::receive_offer(&mut conn);
    assert_eq!(
        fds.len(),
        1 + 1 + 2,
        "the listener, the metrics listener, two sockets"
    );
    assert!(udp_relay::state::restore(&image, Default::default(), 2, false).is_ok());
    // The operator stops the old relay meanwhile.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(old.pid() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(b"R").unwrap();
    let mut go = [0u8; 1];
    std::io::Read::read_exact(&mut conn, &mut go).unwrap();
    assert_eq!(go[0], b'G');
    let (status, _) = old.wait_exit();
    assert!(status.success());
    let logs = old.logs();
    let wrote = file.exists();
    let _ = std::fs::remove_file(&file);
    assert!(
        !wrote,
        "the old relay wrote its state after handing over:\n{logs}"
    );
    assert!(logs.contains("a new relay took over"), "{logs}");
}

/// A relay that takes over with receive offload off where the old one had it on (`--gro off`,
/// or a `--max-datagram` below 65,507, whose receive buffers cannot hold a coalesced receive)
/// turns it off on the sockets it inherits: left on, a burst a peer sends as one segmented send
/// arrives as one receive larger than the buffers, and all its datagrams are refused as too
/// large.
#[test]
fn a_takeover_without_receive_offload_turns_it_off_on_the_inherited_sockets() {
    for io in ["mmsg", "uring"] {
        let path = socket_path(&format!("gro-{io}"));
        let p = path.to_str().unwrap();
        let common = ["--io", io, "--workers", "1", "--takeover", p];
        let mut old = Relay::start(&args(&common, &["--gro", "on"]));
        let (a, b) = (Peer::new(&old), Peer::new(&old));
        a.register("a");
        b.register("b");
        let (ab, ba) = bind_channel(&a, &b, "b");
        let mut new = Relay::start(&args(&common, &["--gro", "off", "--max-datagram", "1500"]));
        new.wait_log("took over: serving");
        old.wait_exit();
        // 20 frames of 200 bytes: one coalesced receive would be 4,000 bytes.
        let payload = |i: u8| [i; 200];
        let burst: Vec<Vec<u8>> = (0..20).map(|i| frame(ab, &payload(i))).collect();
        a.send_segmented(&burst);
        for i in 0..20 {
            assert_eq!(b.recv_raw(), frame(ba, &payload(i)), "{io}: frame {i}");
        }
        assert_eq!(new.metric("udp_relay_coalesced_receives_total"), 0, "{io}");
    }
}

/// A client that speaks its request a byte at a time (each within the read timeout) is cut off
/// once the time a request may take is up, instead of holding the takeover socket for as long
/// as it trickles: the next request is answered within that time.
#[test]
fn a_request_spoken_slowly_does_not_hold_the_takeover_socket() {
    let path = socket_path("slow");
    let mut old = Relay::start(&["--takeover", path.to_str().unwrap()]);
    old.wait_log("takeover socket listening");
    let mut slow = UnixStream::connect(&path).unwrap();
    let hello = wire::hello();
    let trickle = std::thread::spawn(move || {
        // Ten bytes, one every 1.5 s: 15 s in all, never 5 s without one.
        for b in &hello[..10] {
            if slow.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1500));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let began = Instant::now();
    let mut next = UnixStream::connect(&path).unwrap();
    next.write_all(&wire::hello()).unwrap();
    let (fds, _) = wire::receive_offer(&mut next);
    let waited = began.elapsed();
    assert!(!fds.is_empty());
    // Refused: the old relay serves on.
    next.write_all(b"N\x00\x00").unwrap();
    drop(next);
    trickle.join().unwrap();
    drop(old);
    assert!(
        waited < Duration::from_secs(7),
        "the next request waited {waited:?}"
    );
}

/// A relay of another state format is told so (a version mismatch) before anything is paused or
/// handed over, and the running relay serves on.
#[test]
fn a_relay_of_another_state_format_is_refused_and_the_old_one_serves_on() {
    let path = socket_path("format");
    let mut old = Relay::start(&["--takeover", path.to_str().unwrap()]);
    old.wait_log("takeover socket listening");
    let [alice] = registered(&old, ["alice"]);
    let mut conn = UnixStream::connect(&path).unwrap();
    conn.write_all(&wire::hello_of(udp_relay::state::FORMAT + 1))
        .unwrap();
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut answer).unwrap();
    assert_eq!(answer.first(), Some(&b'N'), "{answer:?}");
    let why = String::from_utf8_lossy(&answer[3..]);
    assert!(why.contains("version mismatch"), "{why}");
    old.wait_log("version mismatch");
    assert!(!old.logs().contains("handing over"), "{}", old.logs());
    alice.send(alice.ping());
    assert_eq!(expect(&alice, "pong")["type"], "pong");
}
