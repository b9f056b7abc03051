#!/usr/bin/env bash
# What an idle test network costs: loopback bytes sent per node per second
# (IP headers included) and the testnet process's CPU per node, over
# SECONDS seconds starting WARMUP seconds after its control API answers.
# Usage: scripts/idle-directory.sh NODES [SECONDS] [WARMUP] [extra testnet flags...]
# Needs a release build (cargo build --release -p veilnet). Loopback only;
# the network is stopped at the end, also on failure. The machine should be
# otherwise idle: other loopback traffic and other jobs' CPU are counted.
set -euo pipefail
nodes=${1:?usage: $0 NODES [SECONDS] [WARMUP] [testnet flags...]}
secs=${2:-20}
warmup=${3:-15}
shift $(( $# < 3 ? $# : 3 ))
bin=${VEILNET:-target/release/veilnet}
port=$(( 20000 + RANDOM % 20000 ))
"$bin" testnet --nodes "$nodes" --no-measure --socks "127.0.0.1:$port" \
    --control "127.0.0.1:$((port + 1))" "$@" >/tmp/idle-directory.$$.log 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$((port + 1))/v1/status" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat /tmp/idle-directory.$$.log; exit 1; }
    sleep 0.5
done
curl -sf "http://127.0.0.1:$((port + 1))/v1/status" >/dev/null || { echo "control API never answered"; exit 1; }
sleep "$warmup"
tx() { awk '$1 == "lo:" { print $10 }' /proc/net/dev; }
cpu() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
tx0=$(tx); cpu0=$(cpu)
sleep "$secs"
tx1=$(tx); cpu1=$(cpu)
hz=$(getconf CLK_TCK)
awk -v n="$nodes" -v s="$secs" -v b=$((tx1 - tx0)) -v c=$((cpu1 - cpu0)) -v hz="$hz" 'BEGIN {
    printf "%d nodes: %.2f KB/s of loopback per node, %.3f of a core in all, %.3f%% of a core per node\n",
        n, b / n / s / 1000, c / hz / s, 100 * c / hz / s / n }'
