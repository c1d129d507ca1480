#!/bin/bash
# An interleaved comparison of two builds of the relay (OLD, NEW: their udp-relay binaries),
# JSON relays and channel frames, 8 and 512 pairs; the tables and JSON go to OUT.
# Usage: compare-before-after.sh OLD_BINARY NEW_BINARY OUT_DIR
set -u
NOLIMITS="--source-rate 0 --source-bytes 0 --prefix-rate 0 --prefix-bytes 0 --registration-rate 0 --reply-credit 0 --reply-prefix-credit 0 --reply-global-credit 0 --fanout-allowance 0 --presence-rate 0"
OLD=$1
NEW=$2
OUT=$3
LT="$(dirname "$0")/../../target/release/loadtest"
mkdir -p "$OUT"
for pairs in 8 512; do
  taskset -c 0 $OLD --host 127.0.0.1 --port 8410 --workers 1 $NOLIMITS >"$OUT/old.log" 2>&1 &
  P1=$!
  taskset -c 0 $NEW --host 127.0.0.1 --port 8411 --workers 1 $NOLIMITS >"$OUT/new.log" 2>&1 &
  P2=$!
  # Both listen before the generator starts (their log says so).
  for log in "$OUT/old.log" "$OUT/new.log"; do
    for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    grep -q "listening on" "$log" || { echo "no relay listening: $log" >&2; exit 1; }
  done
  timeout 600 $LT compare --target before=127.0.0.1:8410,pid=$P1 --target after=127.0.0.1:8411,pid=$P2 \
    --target before-ch=127.0.0.1:8410,channels,pid=$P1 --target after-ch=127.0.0.1:8411,channels,pid=$P2 \
    --rounds 5 --duration 3 --cpu 1 --pairs $pairs --json "$OUT/pairs$pairs.json" > "$OUT/pairs$pairs.txt" 2>&1
  kill $P1 $P2; wait $P1 $P2 2>/dev/null
done
