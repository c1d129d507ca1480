//! The I/O backends: each forced one serves peers (replies, forwards and the reaper's messages,
//! which reach io_uring workers through their inbox); `--io auto` takes mmsg, saying why, also
//! where the kernel refuses io_uring (here a seccomp filter makes `io_uring_setup` fail with
//! `EPERM`, as a container runtime's default profile does), and `--io uring` there stops
//! start-up naming the flag. Segmented sends and coalesced receives on both backends.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// Registers two peers, relays both ways, and waits for the reaper's `server_keepalive` and
/// `peer_left`, so that every path out of the relay is exercised.
fn serves_everything(r: &Relay) {
    let a = Peer::new(r);
    let b = Peer::new(r);
    a.register("A");
    b.register("B");
    a.expect("peer_joined");
    for (from, to, src, dst) in [(&a, &b, "A", "B"), (&b, &a, "B", "A")] {
        from.send(
            json!({"type": "relay", "source": src, "target": dst, "payload": {"k": [1, "é"]}}),
        );
        let got = to.expect("relayed_packet");
        assert_eq!(got["from_peer"], src);
        assert_eq!(got["payload"], json!({"k": [1, "é"]}));
    }
    // B stays silent and is reaped; A answers keepalives and hears of it.
    assert_eq!(a.expect("server_keepalive")["peer_name"], "A");
    a.send(json!({"type": "keepalive", "name": "A"}));
    loop {
        let m = a.recv();
        if m["type"] == "peer_left" {
            assert_eq!(m["peer_name"], "B");
            break;
        }
        if m["type"] == "server_keepalive" {
            a.send(json!({"type": "keepalive", "name": "A"}));
        }
    }
}

const TIMERS: [&str; 4] = ["--peer-timeout", "1s", "--keepalive-interval", "200ms"];

fn backend_of(r: &Relay) -> String {
    let line = r
        .logs()
        .lines()
        .find(|l| l.contains("listening on"))
        .map(str::to_owned)
        .unwrap();
    let at = line.find("backend=").expect("backend logged") + "backend=".len();
    line[at..]
        .trim_start_matches('"')
        .split(['"', ' '])
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn forced_uring_serves_peers_and_the_reaper() {
    let mut args = vec!["--io", "uring", "--workers", "2"];
    args.extend(TIMERS);
    let r = Relay::start(&args);
    assert_eq!(backend_of(&r), "uring");
    serves_everything(&r);
    assert!(r.metric("udp_relay_datagrams_sent_total") >= 6);
}

#[test]
fn forced_mmsg_serves_peers_and_the_reaper() {
    let mut args = vec!["--io", "mmsg", "--workers", "2"];
    args.extend(TIMERS);
    let r = Relay::start(&args);
    assert_eq!(backend_of(&r), "mmsg");
    serves_everything(&r);
}

#[test]
fn pinned_workers_are_logged_and_serve() {
    let mut r = Relay::start(&["--workers", "2", "--pin-workers"]);
    // Workers log their pinning themselves, before or after the relay says it listens.
    while r.logs().matches("pinned").count() < 2 {
        r.wait_log("pinned");
    }
    let a = Peer::new(&r);
    a.register("A");
    a.send(json!({"type": "ping"}));
    a.expect("pong");
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Installs (in the child, before exec) a seccomp filter under which `io_uring_setup` fails
/// with `EPERM` and every other system call is allowed.
fn deny_io_uring(cmd: &mut Command) {
    fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }
    fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    let filter = [
        // seccomp_data: nr at offset 0, arch at offset 4.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH,
            0,
            3,
        ),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_io_uring_setup as u32,
            0,
            1,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec the closure only makes two prctl calls on memory it owns
    // (the filter is moved into it), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn auto_picks_the_measured_faster_mmsg_backend_and_says_why() {
    for (gso, says) in [("on", "send segmentation on"), ("off", "off (--gso off)")] {
        let mut args = vec!["--io", "auto", "--gso", gso];
        args.extend(TIMERS);
        let r = Relay::start_with(&args, &[("RUST_LOG", "info")], "127.0.0.1");
        let logs = r.logs();
        let why = logs
            .lines()
            .find(|l| l.contains("listening on") && l.contains("backend_reason="))
            .unwrap_or_else(|| panic!("no choice logged in:\n{logs}"));
        assert!(
            why.contains("measured faster") && why.contains(says),
            "{why}"
        );
        assert_eq!(backend_of(&r), "mmsg");
        serves_everything(&r);
    }
}

#[test]
fn auto_serves_where_io_uring_is_refused() {
    // A container runtime's default seccomp profile refuses io_uring_setup: auto never needs it.
    let mut args = vec!["--io", "auto"];
    args.extend(TIMERS);
    let mut cmd = Relay::command(&args, &[("RUST_LOG", "info")], "127.0.0.1");
    deny_io_uring(&mut cmd);
    let r = Relay::spawn(cmd);
    assert_eq!(backend_of(&r), "mmsg");
    serves_everything(&r);
}

#[test]
fn forced_uring_refused_stops_start_up_naming_the_flag() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udp-relay"));
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--io", "uring"])
        .stdin(Stdio::null());
    deny_io_uring(&mut cmd);
    let out = cmd.output().expect("run udp-relay");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--io uring") && err.contains("Operation not permitted"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

/// Registers a, b and c and binds channels a→b and a→c: (a's number for b, b's number for a,
/// a's number for c, c's number for a).
fn three_with_channels(r: &Relay) -> (Peer, Peer, Peer, [u32; 4]) {
    let (a, b, c) = (Peer::new(r), Peer::new(r), Peer::new(r));
    a.register("a");
    b.register("b");
    c.register("c");
    let bind = |p: &Peer, to: &Peer, target: &str| -> (u32, u32) {
        p.send(p.authed(json!({"type": "bind", "target": target})));
        let mine = loop {
            let v = p.recv();
            if v["type"] == "bind_ack" {
                break v["channel"].as_u64().unwrap() as u32;
            }
        };
        let theirs = loop {
            let v = to.recv();
            if v["type"] == "channel_bound" {
                break v["channel"].as_u64().unwrap() as u32;
            }
        };
        (mine, theirs)
    };
    let (ab, ba) = bind(&a, &b, "b");
    let (ac, ca) = bind(&a, &c, "c");
    (a, b, c, [ab, ba, ac, ca])
}

/// Channel frame `i` on channel `n`, of `len` payload bytes that say which frame it is.
fn frame(n: u32, i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0xD1, 0];
    f.extend_from_slice(&n.to_be_bytes());
    f.extend((0..len).map(|k| (i * 7 + k) as u8));
    f
}

/// A batch of datagrams to one peer leaves as one segmented send (`UDP_SEGMENT`), and the peer
/// still gets each datagram apart, byte for byte, in order; a shorter one ends a run, and
/// `--gso off` sends them one by one.
fn segmented(io: &str, gso: &str) -> u64 {
    let r = Relay::start(&["--io", io, "--workers", "1", "--gso", gso]);
    let logs = r.logs();
    let start = logs.lines().find(|l| l.contains("listening on")).unwrap();
    assert!(start.contains(&format!("gso=\"{gso}\"")), "{start}");
    let (a, b, c, [ab, ba, ac, ca]) = three_with_channels(&r);
    // Queued while the relay is stopped, the frames reach it in one receive batch: 30 to b of
    // 300 bytes, one shorter, 5 to c, then 10 more to b.
    let mut to_b = Vec::new();
    let mut to_c = Vec::new();
    // SAFETY: signals our own child.
    unsafe { libc::kill(r.pid() as i32, libc::SIGSTOP) };
    for i in 0..30 {
        a.send_raw(&frame(ab, i, 300));
        to_b.push(frame(ba, i, 300));
    }
    a.send_raw(&frame(ab, 30, 100));
    to_b.push(frame(ba, 30, 100));
    for i in 0..5 {
        a.send_raw(&frame(ac, i, 300));
        to_c.push(frame(ca, i, 300));
    }
    for i in 31..41 {
        a.send_raw(&frame(ab, i, 300));
        to_b.push(frame(ba, i, 300));
    }
    // Two datagrams too large for one 1,500-byte MTU segment, to b: never a segmented run.
    for i in 41..43 {
        a.send_raw(&frame(ab, i, 1500));
        to_b.push(frame(ba, i, 1500));
    }
    a.send_raw(&frame(ab, 43, 100));
    to_b.push(frame(ba, 43, 100));
    // SAFETY: as above.
    unsafe { libc::kill(r.pid() as i32, libc::SIGCONT) };
    for (p, want) in [(&b, &to_b), (&c, &to_c)] {
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&p.recv_raw(), w, "datagram {i}");
        }
    }
    r.metric("udp_relay_segmented_sends_total")
}

#[test]
fn runs_to_one_peer_leave_as_segmented_sends_and_arrive_apart() {
    for io in ["mmsg", "uring"] {
        let on = segmented(io, "on");
        println!("{io}: 49 frames in one batch: {on} segmented sends");
        assert!(on >= 1, "{io}: no segmented send");
        assert_eq!(segmented(io, "off"), 0, "{io}");
    }
}

/// Frames that a sends as one segmented send, so that the relay's socket (with `UDP_GRO`) may
/// take them as one coalesced receive: 20 of 200 bytes alternating between b and c, and a last
/// short one to b. Each must be decided alone and reach its peer whole, in order. Returns the
/// relay's coalesced receives.
fn coalesced(io: &str, gro: &str) -> u64 {
    let r = Relay::start(&["--io", io, "--workers", "1", "--gro", gro]);
    let (a, b, c, [ab, ba, ac, ca]) = three_with_channels(&r);
    let (mut sent, mut to_b, mut to_c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        let (mine, theirs, want) = if i % 2 == 0 {
            (ab, ba, &mut to_b)
        } else {
            (ac, ca, &mut to_c)
        };
        sent.push(frame(mine, i, 200));
        want.push(frame(theirs, i, 200));
    }
    sent.push(frame(ab, 20, 50));
    to_b.push(frame(ba, 20, 50));
    // Twice, so that the second also meets a relay that has already split one.
    for _ in 0..2 {
        a.send_segmented(&sent);
        for (p, want) in [(&b, &to_b), (&c, &to_c)] {
            for (i, w) in want.iter().enumerate() {
                assert_eq!(&p.recv_raw(), w, "{io} gro {gro}: datagram {i}");
            }
        }
    }
    let m = r.metrics_text();
    assert!(
        m.contains("udp_relay_channel_frames_forwarded_total 42"),
        "{m}"
    );
    r.metric("udp_relay_coalesced_receives_total")
}

#[test]
fn a_coalesced_receive_is_split_and_each_datagram_decided_alone() {
    for io in ["mmsg", "uring"] {
        let on = coalesced(io, "on");
        println!("{io}: 2 segmented sends of 21 frames: {on} coalesced receives");
        assert!(on >= 1, "{io}: no coalesced receive");
        assert_eq!(coalesced(io, "off"), 0, "{io}");
    }
}
