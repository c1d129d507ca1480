//! The ops endpoint: `/metrics`, `/healthz` (alive) and `/readyz` (serving) over HTTP, bounded.
//!
//! hyper (HTTP/1.1) on a current-thread tokio runtime in a thread of its own, so nothing here
//! shares a thread with the workers. Every connection is bounded three ways, so that no client
//! can grow the relay's memory or keep a scrape waiting: its request head in size
//! ([`MAX_HEAD`]), its whole life in time ([`DEADLINE`]), and how many are served at once
//! ([`MAX_CONNECTIONS`]; a newcomer beyond it closes the oldest).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::exposition::prometheus;
use relay_core::shared::Shared;

/// What the ops endpoint reads: the relay's shared state and its worker sockets' counters
/// (the egress's last).
pub struct Ops {
    /// The shared state.
    pub shared: Arc<Shared>,
    /// The relay's clock.
    pub clock: Clock,
    /// Each worker socket's counters, then the egress's.
    pub sockets: Vec<Arc<relay_udp::Counters>>,
}

/// Largest request head (request line and headers) read; one that does not end within it gets
/// 431 and is closed. 8 KiB is many times a scraper's request and hyper's smallest read buffer.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long one connection may live, from accept to the last byte of its answer, before it is
/// closed: a scrape of this endpoint takes milliseconds, a slow drip gets no further.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Most connections served at once: ample for a few scrapers and probes, and at some 14 KiB
/// each (buffers and task, as `tests/http.rs` measures) under a MiB in all.
pub const MAX_CONNECTIONS: usize = 64;

/// How long accepting pauses when the process is out of descriptors or memory, which only
/// closing connections cures; without it the accept loop would spin on the error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// `/healthz`, `/readyz` and the 404 page.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// Serves the ops endpoint on `listener` from a thread of its own.
pub fn serve(listener: std::net::TcpListener, ops: Arc<Ops>) -> io::Result<()> {
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    // Everything that can fail is done here, so that start-up fails rather than the thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        let _in_runtime = runtime.enter();
        TcpListener::from_std(listener)?
    };
    info!("metrics on http://{local}/metrics");
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept(listener, ops)))?;
    Ok(())
}

/// Accepts connections for ever, each served in a task of its own.
async fn accept(listener: TcpListener, ops: Arc<Ops>) {
    let mut http = http1::Builder::new();
    http
        // One request per connection, answered with `Connection: close`: a scrape is one
        // request, and the deadline below then bounds each request, not a keep-alive session.
        .keep_alive(false)
        // The read buffer, and with it the head, stays within MAX_HEAD.
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        // The deadline covers reading the head; hyper's own timeout would need its timer.
        .header_read_timeout(None);
    // Oldest first; finished ones are dropped at the next accept.
    let mut live: VecDeque<JoinHandle<()>> = VecDeque::with_capacity(MAX_CONNECTIONS);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                let starved = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if starved {
                    warn!(error = %e, "metrics endpoint cannot accept");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                } else {
                    // A connection that was reset before it was accepted: its own loss.
                    debug!(error = %e, "metrics accept");
                }
                continue;
            }
        };
        live.retain(|task| !task.is_finished());
        if live.len() >= MAX_CONNECTIONS {
            // Closing the oldest rather than the newcomer: slow clients that fill every slot
            // then cannot lock a scrape out until their deadline; each is displaced in turn.
            if let Some(oldest) = live.pop_front() {
                oldest.abort();
                debug!("metrics connection closed to make room");
            }
        }
        let ops = ops.clone();
        let service = service_fn(move |request| {
            let response = answer(&request, &ops);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        live.push_back(tokio::spawn(async move {
            match tokio::time::timeout(DEADLINE, connection).await {
                Ok(Ok(())) => {}
                // A malformed or oversized head (hyper has answered 4xx), a reset, ….
                Ok(Err(e)) => debug!(error = %e, "metrics connection"),
                Err(_) => debug!("metrics connection closed at its deadline"),
            }
        }));
    }
}

/// The answer to `request`: the counters, the liveness or readiness probe, or 404.
fn answer<B>(request: &Request<B>, ops: &Ops) -> Response<Full<Bytes>> {
    let (status, content_type, body) = route(request.method(), request.uri().path(), ops);
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Status, content type and body for `method` on `path`.
fn route(method: &Method, path: &str, ops: &Ops) -> (StatusCode, &'static str, Bytes) {
    let shared = &ops.shared;
    match (method, path) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            PROMETHEUS_TEXT,
            Bytes::from(prometheus(shared, &ops.sockets, ops.clock.now().ms)),
        ),
        // The thread that answers is alive, and so is the process: that is all it claims.
        (&Method::GET, "/healthz") => (StatusCode::OK, PLAIN_TEXT, Bytes::from_static(b"ok\n")),
        // Serving: every worker's loop has turned lately. A load balancer or orchestrator
        // takes a relay out of rotation on 503 rather than restarting it, as /healthz would.
        // A relay whose cluster's directory is away serves on (its own peers, and forwards to
        // the names it knows): ready, and says it is degraded, since new names cannot be
        // claimed meanwhile — taking every relay out of rotation for Redis would be an outage.
        (&Method::GET, "/readyz") => match shared.metrics.ready(ops.clock.now().ms) {
            Ok(())
                if shared
                    .cluster
                    .get()
                    .is_some_and(|c| !c.stats.up.load(Relaxed)) =>
            {
                (
                    StatusCode::OK,
                    PLAIN_TEXT,
                    Bytes::from_static(
                        b"ready, degraded: the cluster's directory (Redis) is not answering\n",
                    ),
                )
            }
            Ok(()) => (StatusCode::OK, PLAIN_TEXT, Bytes::from_static(b"ready\n")),
            Err(why) => {
                let mut body = String::from("not ready:");
                for w in why {
                    body.push_str(&format!(" {w};"));
                }
                body.pop();
                body.push('\n');
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN_TEXT,
                    Bytes::from(body),
                )
            }
        },
        _ => (
            StatusCode::NOT_FOUND,
            PLAIN_TEXT,
            Bytes::from_static(b"not found; try /metrics, /healthz or /readyz\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// The ops of a relay of `workers` workers, fresh.
    fn ops(workers: usize) -> Ops {
        Ops {
            shared: Shared::new(Settings::default(), workers),
            clock: Clock::default(),
            sockets: (0..=workers).map(|_| Arc::default()).collect(),
        }
    }

    #[test]
    fn metrics_is_exactly_the_prometheus_text() {
        let ops = ops(2);
        let (status, content_type, body) = route(&Method::GET, "/metrics", &ops);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4");
        // The process's own figures (CPU, RSS) move between two readings; the rest may not.
        let steady = |t: &str| -> String {
            t.lines()
                .filter(|l| !l.contains("process_"))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let body = std::str::from_utf8(&body).unwrap();
        assert!(body.contains("\nprocess_resident_memory_bytes "), "{body}");
        assert_eq!(
            steady(body),
            steady(&prometheus(&ops.shared, &ops.sockets, 0))
        );
    }

    #[test]
    fn healthz_is_ok_and_everything_else_is_404() {
        let ops = ops(1);
        assert_eq!(
            route(&Method::GET, "/healthz", &ops),
            (StatusCode::OK, PLAIN_TEXT, Bytes::from_static(b"ok\n"))
        );
        for (method, path) in [
            (Method::GET, "/"),
            (Method::GET, "/metrics/"),
            (Method::GET, "/healthz/x"),
            (Method::POST, "/metrics"),
            (Method::HEAD, "/healthz"),
        ] {
            let (status, ..) = route(&method, path, &ops);
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }

    #[test]
    fn readyz_names_the_workers_that_are_not_serving() {
        let ops = ops(2);
        let shared = &ops.shared;
        let (status, _, body) = route(&Method::GET, "/readyz", &ops);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready: worker 0 has not started; worker 1 has not started\n"
        );
        let now = ops.clock.now().ms;
        shared.metrics.block(0).turned(now);
        shared.metrics.block(1).turned(now);
        let (status, _, body) = route(&Method::GET, "/readyz", &ops);
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ready\n"[..]));
    }

    #[test]
    fn the_answer_carries_status_type_and_body() {
        let ops = ops(1);
        let request = Request::get("/nope").body(()).unwrap();
        let response = answer(&request, &ops);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[CONTENT_TYPE], PLAIN_TEXT);
    }
}
