#!/usr/bin/env bash
# The README's performance tables: one interleaved `loadtest compare` per shape, every target on
# CPU 0 and the generator on CPU 1. Targets: the relay on each backend (JSON relays and channel
# frames), coturn with one relay thread, the plain reflector and the reflector with segmentation
# offload (each at the JSON and at the frame size).
#
# usage: loadtest/scripts/compare-shapes.sh OUT_DIR [ROUNDS] [SHAPE...]   (from the repository
# root, after `cargo build --release --workspace`). Shapes: small (8 pairs, 100 B), mixed
# (512 pairs interleaved, 100 B), large (512 pairs interleaved, 1,200 B). Writes SHAPE.json,
# SHAPE.txt and SHAPE.svg to OUT_DIR.
set -euo pipefail
out=${1:?usage: compare-shapes.sh OUT_DIR [ROUNDS] [SHAPE...]}
rounds=${2:-5}
shift $(($# < 2 ? $# : 2))
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(small mixed large)
mkdir -p "$out"
relay=./target/release/udp-relay
lt=./target/release/loadtest
nolimits=(--source-rate 0 --source-bytes 0 --prefix-rate 0 --prefix-bytes 0 --registration-rate 0
    --reply-credit 0 --reply-prefix-credit 0 --reply-global-credit 0 --fanout-allowance 0
    --presence-rate 0)
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT

start() { # NAME COMMAND...: starts COMMAND on CPU 0, logging to $dir/NAME.log
    local name=$1
    shift
    taskset -c 0 "$@" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    eval "pid_$name=$!"
}
start uring "$relay" --host 127.0.0.1 --port 8420 --workers 1 --io uring "${nolimits[@]}"
start mmsg "$relay" --host 127.0.0.1 --port 8421 --workers 1 --io mmsg "${nolimits[@]}"
start refl "$lt" reflector --port 8422
start reflgso "$lt" reflector --port 8423 --gso
start coturn turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port 8424 \
    --min-port 61000 --max-port 65000 --lt-cred-mech --user u:p --realm test \
    --allow-loopback-peers --no-cli --no-tls --no-dtls --no-tcp --relay-threads 1 \
    --log-file stdout --pidfile "$dir/turnserver.pid" --userdb "$dir/turndb"
# Each target is ready when it answers: the relays and reflectors log, coturn answers STUN.
for name in uring mmsg; do
    for _ in $(seq 100); do grep -q "listening on" "$dir/$name.log" && break; sleep 0.05; done
done
for _ in $(seq 50); do timeout 1 turnutils_stunclient -p 8424 127.0.0.1 >/dev/null 2>&1 && break; done

for shape in "${shapes[@]}"; do
    case $shape in
    small) load=(--pairs 8 --payload 100) ;;
    mixed) load=(--pairs 512 --payload 100 --interleave) ;;
    large) load=(--pairs 512 --payload 1200 --interleave) ;;
    *) echo "unknown shape $shape" >&2; exit 2 ;;
    esac
    "$lt" compare "${load[@]}" --rounds "$rounds" --duration 2 --warmup 0.5 --cpu 1 \
        --target "uring-json=127.0.0.1:8420,pid=$pid_uring" \
        --target "uring-channels=127.0.0.1:8420,channels,pid=$pid_uring" \
        --target "mmsg-json=127.0.0.1:8421,pid=$pid_mmsg" \
        --target "mmsg-channels=127.0.0.1:8421,channels,pid=$pid_mmsg" \
        --target "coturn=127.0.0.1:8424,turn=u:p,pid=$pid_coturn" \
        --target "reflector-json=127.0.0.1:8422,echo,pid=$pid_refl" \
        --target "reflector-frames=127.0.0.1:8422,echo,channels,pid=$pid_refl" \
        --target "reflector-gso-json=127.0.0.1:8423,echo,pid=$pid_reflgso" \
        --target "reflector-gso-frames=127.0.0.1:8423,echo,channels,pid=$pid_reflgso" \
        --json "$out/$shape.json" --chart "$out/$shape.svg" | tee "$out/$shape.txt"
done
