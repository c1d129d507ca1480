#!/bin/bash
# What a cluster costs (issue 20), on this machine: one interleaved `loadtest compare` of a
# forward within one relay against a forward across two relays of a cluster (CPU per datagram
# summed over both relays), JSON relays, 8 and 512 pairs; then a registration storm against
# three relays of one Redis at once, with Redis's commands per registration; then Redis's
# commands per minute at steady state. Relays and Redis on core 0, the generator on core 1.
# Usage: [SKIP_COMPARE=1] compare-cluster.sh RELAY_BINARY OUT_DIR [STORM_PEERS_PER_RELAY]
set -u
RELAY=$1
OUT=$2
STORM=${3:-100000}
NOLIMITS="--source-rate 0 --source-bytes 0 --prefix-rate 0 --prefix-bytes 0 --registration-rate 0 --reply-credit 0 --reply-prefix-credit 0 --reply-global-credit 0 --fanout-allowance 0 --presence-rate 0 --max-peers 2000000 --max-names-per-address 1000"
LT="$(dirname "$0")/../../target/release/loadtest"
mkdir -p "$OUT"
head -c 32 /dev/urandom > "$OUT/mesh.key"
RPORT=8470
taskset -c 0 redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly no > "$OUT/redis.log" 2>&1 &
REDIS=$!
trap 'kill $REDIS 2>/dev/null; kill $(jobs -p) 2>/dev/null' EXIT
for _ in $(seq 100); do redis-cli -p $RPORT ping >/dev/null 2>&1 && break; sleep 0.1; done
CLUSTER="--cluster redis://127.0.0.1:$RPORT/ --mesh-key-file $OUT/mesh.key"

# $1 log, $2... args: starts a relay on core 0 and waits until it listens; its pid in $PID.
start() {
  local log=$1; shift
  taskset -c 0 "$RELAY" --workers 1 $NOLIMITS "$@" > "$log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$log" && return 0; sleep 0.1; done
  echo "no relay listening: $log" >&2; exit 1
}

# SKIP_COMPARE=1 runs the registrations and the steady state only.
for pairs in $([ -n "${SKIP_COMPARE:-}" ] || echo 8 512); do
  start "$OUT/local.log" --host 127.0.0.1 --port 8471; L=$PID
  start "$OUT/a.log" --host 127.0.0.1 --port 8472 $CLUSTER --node-id a --mesh-listen 127.0.0.1:8482; A=$PID
  start "$OUT/b.log" --host 127.0.0.2 --port 8473 $CLUSTER --node-id b --mesh-listen 127.0.0.2:8483; B=$PID
  timeout 900 "$LT" compare --target local=127.0.0.1:8471,pid=$L \
    --target cluster=127.0.0.1:8472,via=127.0.0.2:8473,pid=$A,pid=$B \
    --rounds 5 --duration 3 --cpu 1 --pairs $pairs --json "$OUT/pairs$pairs.json" > "$OUT/pairs$pairs.txt" 2>&1
  kill $L $A $B; wait $L $A $B 2>/dev/null
done

# Registrations: three relays of one Redis, a storm against each at once.
redis-cli -p $RPORT flushall > /dev/null
for i in 1 2 3; do
  start "$OUT/storm$i.log" --host 127.0.0.$i --port 848$i $CLUSTER --node-id s$i --mesh-listen 127.0.0.$i:849$i
  eval "S$i=$PID"
done
# Redis's commands (a script's own calls included) and the scripts run (EVALSHA, each one claim,
# release or heartbeat: a round trip).
commands() { redis-cli -p $RPORT info stats | grep total_commands_processed | cut -d: -f2 | tr -d '\r'; }
scripts() { redis-cli -p $RPORT info commandstats | grep -E '^cmdstat_(evalsha|eval):' | sed -E 's/^cmdstat_[a-z]+:calls=([0-9]+),.*/\1/' | paste -sd+ | bc; }
# CPU time (clock ticks) of processes.
ticks() { for p in "$@"; do awk '{print $14 + $15}' /proc/$p/stat; done | paste -sd+ | bc; }
HZ=$(getconf CLK_TCK)
before=$(commands); sbefore=$(scripts); rbefore=$(ticks $S1 $S2 $S3); dbefore=$(ticks $REDIS)
t0=$(date +%s.%N)
for i in 1 2 3; do
  timeout 600 "$LT" register --relay 127.0.0.$i:848$i --peers "$STORM" --sockets 4000 --window 200 --cpu 1 --json "$OUT/storm$i.json" > "$OUT/storm$i.txt" 2>&1 &
done
wait $(jobs -p | grep -v -e "^$REDIS\$" -e "^$S1\$" -e "^$S2\$" -e "^$S3\$") 2>/dev/null
t1=$(date +%s.%N)
after=$(commands); safter=$(scripts); rafter=$(ticks $S1 $S2 $S3); dafter=$(ticks $REDIS)
regs=$((3 * STORM))
{
  echo "storm: $regs registrations over three relays in $(echo "$t1 - $t0" | bc) s: $(echo "$regs / ($t1 - $t0)" | bc) /s in all"
  echo "redis: $((safter - sbefore)) scripts ($(echo "scale=3; ($safter - $sbefore) / $regs" | bc) per registration), $((after - before)) commands in all ($(echo "scale=2; ($after - $before) / $regs" | bc) per registration)"
  echo "CPU per registration: relays $(echo "scale=1; ($rafter - $rbefore) * 1000000 / $HZ / $regs" | bc) µs, redis $(echo "scale=1; ($dafter - $dbefore) * 1000000 / $HZ / $regs" | bc) µs (both on core 0)"
  grep -h "registrations/s" "$OUT"/storm?.txt
} > "$OUT/storm.txt"
# Steady state: the peers stay registered (keepalives are local); Redis hears heartbeats only.
before=$(commands); sbefore=$(scripts)
sleep 30
after=$(commands); safter=$(scripts)
keys=$(redis-cli -p $RPORT dbsize)
echo "steady state, $regs peers ($keys keys): in 30 s $((safter - sbefore)) scripts and $((after - before)) commands: $(echo "scale=6; ($safter - $sbefore) * 2 / $regs" | bc) scripts per peer per minute" >> "$OUT/storm.txt"
kill $S1 $S2 $S3; wait $S1 $S2 $S3 2>/dev/null
cat "$OUT/storm.txt"
