//! The Prometheus text of the relay: the core's counters and gauges, each worker socket's
//! counters, readiness, and the process's standard metrics, for `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use relay_udp::Counters;

use relay_core::cluster::Cluster;
use relay_core::metrics::Counters as Block;
use relay_core::refusal::Reason;
use relay_core::shared::Shared;

/// Renders every counter and gauge in the Prometheus text format. Names say what they count, in
/// Prometheus's conventions: `_total` for counters, the unit (`_bytes`) in the name.
pub fn prometheus(shared: &Shared, sockets: &[Arc<Counters>], now_ms: u64) -> String {
    let m = &shared.metrics;
    let (r, c) = (&shared.registry, &shared.channels);
    let (peers, watch_entries, channels) = (r.len(), r.watch_entries(), c.len());
    let mut s = String::new();
    if let Some(labels) = m.info() {
        let _ = writeln!(
            s,
            "# HELP udp_relay_build_info The relay's version and how it runs (always 1)."
        );
        let _ = writeln!(s, "# TYPE udp_relay_build_info gauge");
        let _ = writeln!(s, "udp_relay_build_info{{{labels}}} 1");
    }
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
        let _ = writeln!(s, "# TYPE udp_relay_{name} counter");
        let _ = writeln!(s, "udp_relay_{name} {v}");
    };
    for (name, help, f) in [
        (
            "datagrams_received_total",
            "Datagrams received (each of a coalesced receive counted alone).",
            (|c: &Block| &c.received) as fn(&Block) -> &AtomicU64,
        ),
        (
            "received_bytes_total",
            "Bytes of the datagrams received.",
            |c| &c.received_bytes,
        ),
        (
            "relay_messages_forwarded_total",
            "JSON relay messages forwarded as relayed_packet.",
            |c| &c.forwarded,
        ),
        (
            "mesh_sent_total",
            "JSON relay messages sent on to the relay of the cluster their target is homed at.",
            |c| &c.mesh_sent,
        ),
        (
            "mesh_delivered_total",
            "Mesh datagrams from another relay of the cluster delivered to a peer homed here.",
            |c| &c.mesh_delivered,
        ),
        (
            "channel_frames_forwarded_total",
            "Channel frames forwarded.",
            |c| &c.frames,
        ),
        (
            "channel_frames_forwarded_bytes_total",
            "Bytes of the channel frames forwarded.",
            |c| &c.frame_bytes,
        ),
        (
            "stun_binding_successes_total",
            "STUN Binding requests answered with a success.",
            |c| &c.stun_answered,
        ),
        (
            "stun_binding_unknown_attributes_total",
            "STUN Binding requests answered 420 (unknown comprehension-required attributes).",
            |c| &c.stun_unknown,
        ),
        (
            "registrations_total",
            "Names registered that were free or held by a stale registration.",
            |c| &c.registrations,
        ),
        (
            "answers_short_total",
            "Essential answers (register_ack, pong) sent in short form: neither the request's own bytes nor the reply budgets could pay the full one.",
            |c| &c.short_answers,
        ),
        (
            "registration_moves_total",
            "Registrations that moved, with their session or signature, to a new address.",
            |c| &c.moves,
        ),
        (
            "peers_unregistered_total",
            "Registrations ended by their peer's unregister.",
            |c| &c.unregistered,
        ),
        (
            "peers_reaped_total",
            "Registrations removed for silence (--peer-timeout).",
            |c| &c.reaped,
        ),
        (
            "peers_displaced_total",
            "Registrations (stale, or never proven where they are) removed from a full registry (--max-peers) to make room for a newcomer.",
            |c| &c.displaced,
        ),
        (
            "server_keepalives_total",
            "server_keepalive messages the reaper decided (those the budgets withheld are \
             also in udp_relay_sends_withheld_total{kind=\"keepalive\"}).",
            |c| &c.keepalives,
        ),
        (
            "error_replies_suppressed_total",
            "Error replies withheld by the per-source error rate (--error-rate).",
            |c| &c.errors_suppressed,
        ),
        (
            "coalesced_peer_lists_sent_total",
            "peer_list messages sent in place of withheld announcements.",
            |c| &c.coalesced_lists,
        ),
    ] {
        counter(name, help, m.sum(f));
    }
    for (name, help, f) in [
        (
            "datagrams_sent_total",
            "Datagrams sent: forwards, replies, announcements, keepalives.",
            (|c: &Counters| &c.sent) as fn(&Counters) -> &AtomicU64,
        ),
        ("sent_bytes_total", "Bytes of the datagrams sent.", |c| {
            &c.sent_bytes
        }),
        (
            "segmented_sends_total",
            "Sends carrying several datagrams as UDP_SEGMENT segments (GSO).",
            |c| &c.segmented_sends,
        ),
        (
            "coalesced_receives_total",
            "Receives holding several datagrams coalesced by the kernel (UDP_GRO).",
            |c| &c.coalesced_receives,
        ),
        (
            "gso_refused_total",
            "Times the kernel refused UDP segmentation where unsegmented sends to the same \
             destination went (then off for that sender).",
            |c| &c.gso_refused,
        ),
        (
            "bad_destination_total",
            "Sends dropped because their destination is one the relay never sends to \
             (unspecified, multicast, broadcast, port 0) or does not serve (--allowed-peer-ip).",
            |c| &c.bad_destination,
        ),
        (
            "uring_receive_buffers_exhausted_total",
            "io_uring receives that found every buffer in use (ENOBUFS) and were re-armed.",
            |c| &c.recv_no_buffers,
        ),
    ] {
        counter(name, help, sockets.iter().map(|c| f(c).load(Relaxed)).sum());
    }

    // Per worker: which worker falls behind is what an operator needs to see; a sum over
    // the label is the relay's.
    for (name, help, f) in [
        (
            "receive_queue_drops_total",
            "Datagrams the kernel dropped for a full receive queue, by worker socket.",
            (|c: &Counters| &c.queue_drops) as fn(&Counters) -> &AtomicU64,
        ),
        (
            "send_errors_total",
            "Datagrams whose send the kernel refused, by worker (the reaper's as worker=\"reaper\").",
            |c: &Counters| &c.send_errors,
        ),
    ] {
        let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
        let _ = writeln!(s, "# TYPE udp_relay_{name} counter");
        let last = sockets.len() - 1;
        for (i, b) in sockets.iter().enumerate() {
            let worker = if i == last {
                "reaper".to_string()
            } else {
                i.to_string()
            };
            let v = f(b).load(Relaxed);
            let _ = writeln!(s, "udp_relay_{name}{{worker=\"{worker}\"}} {v}");
        }
    }
    let _ = writeln!(
        s,
        "# HELP udp_relay_datagrams_refused_total Datagrams refused, by reason."
    );
    let _ = writeln!(s, "# TYPE udp_relay_datagrams_refused_total counter");
    for &r in Reason::ALL {
        let _ = writeln!(
            s,
            "udp_relay_datagrams_refused_total{{reason=\"{}\"}} {}",
            r.as_str(),
            m.refused(r)
        );
    }
    let _ = writeln!(
        s,
        "# HELP udp_relay_sends_withheld_total Sends withheld because their payer could not pay, by kind."
    );
    let _ = writeln!(s, "# TYPE udp_relay_sends_withheld_total counter");
    for (kind, v) in [
        ("reply", m.sum(|c| &c.withheld_replies)),
        ("announcement", m.sum(|c| &c.withheld_announcements)),
        ("keepalive", m.sum(|c| &c.withheld_keepalives)),
    ] {
        let _ = writeln!(s, "udp_relay_sends_withheld_total{{kind=\"{kind}\"}} {v}");
    }
    for (name, help, v) in [
        ("peers_registered", "Names registered now.", peers),
        ("watch_entries", "Watch entries held.", watch_entries),
        ("channels_bound", "Channels bound now (pairs).", channels),
    ] {
        let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
        let _ = writeln!(s, "# TYPE udp_relay_{name} gauge");
        let _ = writeln!(s, "udp_relay_{name} {v}");
    }
    let ready = m.ready(now_ms).is_ok();
    for (name, help, v) in [
        (
            "ready",
            "1 while every worker serves (what /readyz answers 200 to), else 0.",
            u64::from(ready),
        ),
        (
            "max_peers",
            "The most names registered at once (--max-peers, in force).",
            r.max_peers() as u64,
        ),
    ] {
        let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
        let _ = writeln!(s, "# TYPE udp_relay_{name} gauge");
        let _ = writeln!(s, "udp_relay_{name} {v}");
    }
    if let Some(c) = shared.cluster.get() {
        cluster(&mut s, c);
    }
    crate::process::render(&mut s);
    s
}

/// A relay of a cluster's: the directory's health, its operations by outcome and their
/// latency, the view of the other relays.
fn cluster(s: &mut String, c: &Cluster) {
    let st = &c.stats;
    // As f64, which prints an integer without a fraction, so that seconds fit the same rows.
    let v = |a: &AtomicU64| a.load(Relaxed) as f64;
    let mut family = |name: &str, kind: &str, help: &str, rows: &[(&str, f64)]| {
        let _ = writeln!(s, "# HELP udp_relay_{name} {help}");
        let _ = writeln!(s, "# TYPE udp_relay_{name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(s, "udp_relay_{name}{labels} {value}");
        }
    };
    family(
        "cluster_directory_up",
        "gauge",
        "1 while the cluster's directory (Redis) answered the last call, else 0.",
        &[("", f64::from(u8::from(st.up.load(Relaxed))))],
    );
    family(
        "cluster_directory_operations_total",
        "counter",
        "Directory operations, by operation and outcome.",
        &[
            (r#"{op="claim",outcome="won"}"#, v(&st.claims_won)),
            (r#"{op="claim",outcome="in_use"}"#, v(&st.claims_lost)),
            (r#"{op="claim",outcome="failed"}"#, v(&st.claims_failed)),
            (r#"{op="release",outcome="done"}"#, v(&st.releases)),
            (r#"{op="release",outcome="failed"}"#, v(&st.releases_failed)),
            (r#"{op="lookup",outcome="found"}"#, v(&st.lookups_found)),
            (r#"{op="lookup",outcome="missing"}"#, v(&st.lookups_missing)),
            (r#"{op="lookup",outcome="failed"}"#, v(&st.lookups_failed)),
            (r#"{op="queue",outcome="full"}"#, v(&st.queue_full)),
        ],
    );
    family(
        "cluster_directory_calls_total",
        "counter",
        "Calls made to the directory (each a Redis round trip).",
        &[("", v(&st.calls))],
    );
    family(
        "cluster_directory_call_seconds_total",
        "counter",
        "Time the directory calls took, summed (divide by the calls for their mean latency).",
        &[("", v(&st.call_us) / 1e6)],
    );
    family(
        "cluster_name_conflicts_total",
        "counter",
        "Names registered here that the directory gave to another relay.",
        &[("", v(&st.conflicts))],
    );
    family(
        "cluster_names",
        "gauge",
        "Names known to the cluster, by where they are homed.",
        &[
            (r#"{home="here"}"#, c.home_count() as f64),
            (r#"{home="elsewhere"}"#, c.remote.len() as f64),
        ],
    );
    family(
        "cluster_mesh_links_silent",
        "gauge",
        "Other relays nothing came from over the mesh for a node TTL (their link cut, or they).",
        &[("", v(&st.silent_links))],
    );
    let nodes = c.nodes.listed();
    family(
        "cluster_nodes",
        "gauge",
        "The cluster's other relays this relay knows.",
        &[("", nodes.len() as f64)],
    );
    let rows: Vec<(String, f64)> = nodes
        .iter()
        .map(|(node, mesh)| (format!("{{node=\"{node}\",mesh=\"{mesh}\"}}"), 1.0))
        .collect();
    let rows: Vec<(&str, f64)> = rows.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    family(
        "cluster_node_info",
        "gauge",
        "Each other relay of the cluster this relay knows, and the mesh address it sends there (always 1).",
        &rows,
    );
}
