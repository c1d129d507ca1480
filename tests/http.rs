//! The ops endpoint over real TCP: its routes, and the bounds that keep a hostile client from
//! growing the relay's memory or holding `/metrics` (`src/http.rs`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{Peer, Relay, TIMEOUT};
use serde_json::json;
use udp_relay::http::{DEADLINE, MAX_CONNECTIONS, MAX_HEAD};

/// Sends `request` on a fresh connection and reads the answer to EOF (the endpoint closes).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("no answer to {:?}: {e}", String::from_utf8_lossy(request)));
    String::from_utf8(answer).unwrap()
}

/// The value of header `name` (case-insensitive) in `answer`.
fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let (head, _) = answer.split_once("\r\n\r\n")?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of `answer`, checked against its Content-Length.
fn body(answer: &str) -> &str {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head");
    let len: usize = header(answer, "content-length").unwrap().parse().unwrap();
    assert_eq!(body.len(), len, "{answer}");
    body
}

#[test]
fn healthz_is_ok_unknown_paths_are_404_and_metrics_still_answers() {
    let r = Relay::start(&[]);

    let ok = exchange(r.metrics, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert_eq!(body(&ok), "ok\n");
    assert_eq!(header(&ok, "connection"), Some("close"), "{ok}");
    // HTTP/1.0 without a Host, as the simplest probes send it.
    let ok = exchange(r.metrics, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");

    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ] {
        let answer = exchange(r.metrics, request);
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    }

    // The harness's own request, as every other test sends it.
    let page = r.metrics_text();
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert_eq!(
        header(&page, "content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        body(&page).contains("\nudp_relay_peers_registered 0\n"),
        "{page}"
    );
    assert!(body(&page).starts_with("# HELP udp_relay_"), "{page}");
}

#[test]
fn readyz_answers_ready_once_every_worker_serves() {
    let r = Relay::start(&["--workers", "3"]);
    // The workers' first loop turns may follow the listening line: wait for them, not a time.
    let deadline = Instant::now() + TIMEOUT;
    let ready = loop {
        let answer = exchange(r.metrics, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
        if answer.starts_with("HTTP/1.1 200 OK\r\n") || Instant::now() > deadline {
            break answer;
        }
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
                && body(&answer).starts_with("not ready: worker "),
            "{answer}"
        );
        thread::yield_now();
    };
    assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
    assert_eq!(body(&ready), "ready\n");
    assert_eq!(
        header(&ready, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    // Idle workers stay ready: they turn their loops at least every POLL_MS with no traffic.
    let idle = Instant::now();
    while idle.elapsed() < 2 * Duration::from_millis(relay_core::metrics::STALL_MS) {
        let answer = exchange(r.metrics, b"GET /readyz HTTP/1.0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
        // The pace of the probe, as a kubelet's would be, not a wait for something.
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_carry_build_info_process_metrics_and_registry_counters() {
    let r = Relay::start(&["--workers", "2"]);
    let a = Peer::new(&r);
    a.register("alice");
    a.send(a.authed(json!({"type": "unregister", "name": "alice"})));
    let deadline = Instant::now() + TIMEOUT;
    while r.metric("udp_relay_peers_unregistered_total") == 0 {
        assert!(Instant::now() < deadline, "unregister not counted");
        thread::yield_now();
    }
    let text = r.metrics_text();
    let page = body(&text);
    let version = env!("CARGO_PKG_VERSION");
    let info = page
        .lines()
        .find(|l| l.starts_with("udp_relay_build_info{"))
        .unwrap_or_else(|| panic!("no build info in\n{page}"));
    assert!(info.starts_with(&format!(
        "udp_relay_build_info{{version=\"{version}\",backend=\""
    )));
    assert!(
        info.contains(",workers=\"2\"") && info.ends_with("} 1"),
        "{info}"
    );
    assert_eq!(r.metric("udp_relay_registrations_total"), 1);
    assert_eq!(r.metric("udp_relay_peers_unregistered_total"), 1);
    assert_eq!(r.metric("udp_relay_peers_registered"), 0);
    assert!(r.metric("udp_relay_datagrams_received_total") >= 3);
    assert!(r.metric("udp_relay_datagrams_sent_total") >= 3);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            page.contains(&format!("\n# TYPE {name} ")),
            "no {name} in\n{page}"
        );
    }
    // Every counter says it counts: `_total`, Prometheus's convention.
    for l in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = l.split_once(' ').unwrap();
        assert_eq!(kind == "counter", name.ends_with("_total"), "{l}");
    }
}

#[test]
fn a_head_is_served_up_to_its_bound_and_refused_beyond() {
    let r = Relay::start(&[]);

    let start = b"GET /healthz HTTP/1.1\r\nX-Pad: ";
    let end = b"\r\n\r\n";
    let mut exact = start.to_vec();
    exact.resize(MAX_HEAD - end.len(), b'a');
    exact.extend_from_slice(end);
    assert_eq!(exact.len(), MAX_HEAD);
    let answer = exchange(r.metrics, &exact);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // MAX_HEAD bytes that do not end a head: the relay has read all of them, so its 431 arrives
    // before a close (had it left bytes unread, the kernel would reset instead).
    let mut unended = b"GET /".to_vec();
    unended.resize(MAX_HEAD, b'a');
    let answer = exchange(r.metrics, &unended);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
}

/// The old endpoint buffered a request line without a newline for ever: 300 MiB in 3 s.
#[test]
fn an_endless_request_line_is_cut_off_and_memory_stays_flat() {
    const FLOOD: usize = 20 << 20;
    const GROWTH_BOUND: u64 = 2 << 20;
    let r = Relay::start(&[]);
    // Warm up: the first answer's allocations are not the flood's.
    r.metrics_text();
    let before = r.rss();

    let mut s = TcpStream::connect(r.metrics).unwrap();
    // If the relay neither read nor closed, the write would block: that fails the test.
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET /").unwrap();
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 5;
    let cut = loop {
        if sent >= FLOOD {
            break None;
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    let cut = cut.unwrap_or_else(|| panic!("the relay took all {FLOOD} bytes"));
    assert!(
        matches!(
            cut.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "not cut off but {cut} after {sent} bytes"
    );

    // Still answering; and by then the flooding connection's task is gone.
    r.metrics_text();
    let after = r.rss();
    let grew = after.saturating_sub(before);
    println!(
        "cut off after {} KiB of {} MiB sent; RSS {} KiB -> {} KiB, grew {} KiB (bound {} KiB)",
        sent >> 10,
        FLOOD >> 20,
        before >> 10,
        after >> 10,
        grew >> 10,
        GROWTH_BOUND >> 10
    );
    assert!(grew < GROWTH_BOUND, "RSS grew by {grew} bytes");
}

/// What became of one slow connection.
struct Slow {
    stream: TcpStream,
    drips: bool,
    opened: Instant,
    closed: Option<Instant>,
    sent: usize,
}

/// How often each dripping client sends its next byte: the pace of the attack, not a wait.
const DRIP: Duration = Duration::from_millis(100);

/// Drips a head that never ends into the dripping connections, one byte each per [`DRIP`],
/// and notes when the relay closes each connection; gives up `limit` after starting.
fn drip_until_closed(mut slow: Vec<Slow>, limit: Duration) -> Vec<Slow> {
    const HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while slow.iter().any(|c| c.closed.is_none()) && start.elapsed() < limit {
        for c in slow.iter_mut().filter(|c| c.closed.is_none()) {
            let open = match c.stream.read(&mut buf) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == ErrorKind::WouldBlock,
            };
            let open = open && {
                let byte = HEAD.get(c.sent).copied().unwrap_or(b'a');
                !c.drips || c.stream.write(&[byte]).is_ok()
            };
            if open {
                c.sent += usize::from(c.drips);
            } else {
                c.closed = Some(Instant::now());
            }
        }
        thread::sleep(DRIP);
    }
    slow
}

/// The old endpoint served one connection at a time, each for as long as it dripped.
#[test]
fn slow_clients_neither_hold_metrics_nor_outlive_the_deadline() {
    const SLOW: usize = 100;
    /// Leeway past the deadline for the relay's timer and this test's own polling.
    const SLACK: Duration = Duration::from_secs(1);
    /// What the relay may grow by while they hold on (their buffers and tasks).
    const GROWTH_BOUND: u64 = 4 << 20;
    let r = Relay::start(&[]);
    // Warm up, as in the flood test.
    r.metrics_text();
    let idle = r.rss();

    // Half drip a head that never ends, half send nothing at all.
    let slow: Vec<Slow> = (0..SLOW)
        .map(|i| {
            let stream = TcpStream::connect(r.metrics).unwrap();
            stream.set_nonblocking(true).unwrap();
            Slow {
                stream,
                drips: i % 2 == 0,
                opened: Instant::now(),
                closed: None,
                sent: 0,
            }
        })
        .collect();
    let dripping = thread::spawn(move || drip_until_closed(slow, DEADLINE + TIMEOUT));

    // Accepted after all of them (the kernel queues connections in order), while they drip.
    let asked = Instant::now();
    let page = r.metrics_text();
    let answered = asked.elapsed();
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(answered < TIMEOUT, "answered after {answered:?}");
    // All of them have been accepted by now: they were queued before the scrape.
    let grew = r.rss().saturating_sub(idle);

    let slow = dripping.join().unwrap();
    let lived: Vec<Duration> = slow
        .iter()
        .map(|c| {
            c.closed.unwrap_or_else(|| {
                panic!("a slow client still open after {:?}", DEADLINE + TIMEOUT)
            }) - c.opened
        })
        .collect();
    let longest = lived.iter().max().unwrap();
    // The ones the newcomers displaced, oldest first: each newcomer beyond MAX_CONNECTIONS.
    let displaced = lived.iter().filter(|&&l| l < DEADLINE / 2).count();
    println!(
        "/metrics answered in {:.1} ms while {SLOW} slow clients held on (RSS +{} KiB); \
         {displaced} of them closed to make room at once, the last closed {:.2} s after it \
         connected (deadline {} s)",
        answered.as_secs_f64() * 1e3,
        grew >> 10,
        longest.as_secs_f64(),
        DEADLINE.as_secs()
    );
    assert!(grew < GROWTH_BOUND, "RSS grew by {grew} bytes");
    assert!(
        *longest <= DEADLINE + SLACK,
        "a slow client lived {longest:?}"
    );
    assert!(
        displaced > SLOW - MAX_CONNECTIONS,
        "only {displaced} closed early"
    );
    let dripped = slow.iter().filter(|c| c.drips).map(|c| c.sent).max();
    assert!(dripped > Some(1), "the drip never got going: {dripped:?}");
}
