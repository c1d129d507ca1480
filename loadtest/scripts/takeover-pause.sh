#!/usr/bin/env bash
# What a takeover of a relay holding a million registered peers costs: forwarding at a fixed
# rate runs through it, and the relay's own logs give the handover's phases.
#
# usage: loadtest/scripts/takeover-pause.sh [mmsg|uring] [rate] [peers]   (from the repository
# root, after `cargo build --release --workspace`; relays pinned to CPU 0, generator to CPU 1)
set -euo pipefail
io=${1:-mmsg}
rate=${2:-50000}
peers=${3:-1000000}
port=8411
relay=./target/release/udp-relay
lt=./target/release/loadtest
dir=$(mktemp -d)
args=(--host 127.0.0.1 --port $port --workers 1 --io "$io" --takeover "$dir/takeover"
    --peer-timeout 300s --keepalive-interval 290s --max-peers 2000000
    --source-rate 0 --source-bytes 0 --prefix-rate 0 --prefix-bytes 0 --registration-rate 0
    --reply-credit 0 --reply-prefix-credit 0 --reply-global-credit 0
    --fanout-allowance 0 --presence-rate 0)
taskset -c 0 "$relay" "${args[@]}" >"$dir/old.log" 2>&1 &
old=$!
trap 'kill $old $new 2>/dev/null; rm -rf "$dir"' EXIT
new=
until grep -q "takeover socket listening" "$dir/old.log"; do sleep 0.1; done
"$lt" register --relay 127.0.0.1:$port --peers "$peers" --cpu 1 --timeout 300 --pid $old | tail -1
"$lt" run --relay 127.0.0.1:$port --rate "$rate" --duration 12 --warmup 0.5 --cpu 1 \
    --json "$dir/run.json" >/dev/null &
run=$!
sleep 4
rss_old=$(awk '/VmRSS/ {print $2}' /proc/$old/status)
taskset -c 0 "$relay" "${args[@]}" >"$dir/new.log" 2>&1 &
new=$!
wait $old || true
wait $run
grep -h "handing over\|paused and exported\|handed over\|taking over\|took over" "$dir/old.log" "$dir/new.log" \
    | sed 's/\x1b\[[0-9;]*m//g'
python3 - "$dir" "$rss_old" <<'PY'
import json, re, sys, datetime
d = sys.argv[1]
def at(path, needle):
    for line in open(path):
        if needle in line:
            t = re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0]
            return datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
paused = at(f"{d}/old.log", "handing over to a new relay")
serving = at(f"{d}/new.log", "took over: serving")
r = json.load(open(f"{d}/run.json"))
l = r["latency_us"]
print(f"old relay RSS before: {int(sys.argv[2]) // 1024} MiB")
print(f"forwarding paused (old stops -> new serves): {(serving - paused).total_seconds() * 1000:.0f} ms")
print(f"run: sent {r['sent']} lost {r['lost']}  latency µs p50 {l['p50']:.0f} p99 {l['p99']:.0f} "
      f"p99.9 {l['p999']:.0f} max {l['max']:.0f}")
PY
