#!/usr/bin/env bash
# Does reaping a million peers pause forwarding? Forwarding latency at a fixed rate over 35 s,
# first with nothing to reap, then while a million freshly registered peers expire (one sweep
# reaps nearly all of them) and, just before, are each sent a server_keepalive.
#
# usage: loadtest/scripts/reaper-pause.sh [uring|mmsg] [rate]   (from the repository root,
# after `cargo build --release --workspace`; relay pinned to CPU 0, generator to CPU 1)
set -euo pipefail
io=${1:-uring}
rate=${2:-50000}
port=8409
relay=./target/release/udp-relay
lt=./target/release/loadtest
dir=$(mktemp -d)
taskset -c 0 "$relay" --host 127.0.0.1 --port $port --workers 1 --io "$io" \
    --peer-timeout 15s --keepalive-interval 14s --max-peers 2000000 \
    --source-rate 0 --source-bytes 0 --prefix-rate 0 --prefix-bytes 0 --registration-rate 0 \
    --reply-credit 0 --reply-prefix-credit 0 --reply-global-credit 0 \
    --fanout-allowance 0 --presence-rate 0 \
    >"$dir/relay.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.5
"$lt" run --relay 127.0.0.1:$port --rate "$rate" --duration 35 --warmup 0.5 --cpu 1 \
    --json "$dir/quiet.json" >/dev/null
"$lt" register --relay 127.0.0.1:$port --peers 1000000 --cpu 1 --timeout 120 | tail -1
"$lt" run --relay 127.0.0.1:$port --rate "$rate" --duration 35 --warmup 0.5 --cpu 1 \
    --json "$dir/reaping.json" >/dev/null
grep "reaped silent peers" "$dir/relay.log" | tail -1
python3 - "$dir" <<'PY'
import json, sys
for case in ("quiet", "reaping"):
    r = json.load(open(f"{sys.argv[1]}/{case}.json"))
    l = r["latency_us"]
    print(f"{case:8} sent {r['sent']} lost {r['lost']}  latency µs p50 {l['p50']:.0f} "
          f"p99 {l['p99']:.0f} p99.9 {l['p999']:.0f} max {l['max']:.0f}")
PY
