#!/usr/bin/env bash
# The service figures of docs/perf.md, in one run on loopback, each next to
# the transport floor it is measured against:
#   1. the load run: 64 concurrent gRPC streams for 60 s, d=3 and d=5 mixed,
#      failing on any lost or duplicated shot (qecd load);
#   2. gRPC overhead: one stream, one shot in flight, so that the round trip
#      is the engine's step plus the transport alone; first against a tonic
#      echo service driven by the same client (qecd load --echo), the floor;
#      with the in-process server and client on one runtime thread, then on
#      one per core;
#   3. FPGA bridge overhead: an experiment replayed over the bridge (qecd
#      replay), first against a null bridge that answers the same frames on
#      the same threads without decoding (bridge_floor), the floor; at a
#      round every 200 µs and every 50 µs, with the bridge's reader blocking
#      on its socket and polling it (--bridge-poll-us).
# Writes docs/data/service.txt. Run it on an otherwise idle machine.
#
#   scripts/service_perf.sh [SECONDS]     (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo build --release --quiet -p qecd-benches --bin bridge_floor
Q=./target/release/qecd
FLOOR=./target/release/bridge_floor
secs=${1:-60}
out=docs/data/service.txt
mkdir -p docs/data target/experiments
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null || true' EXIT
start_server() { # extra serve arguments
  $Q serve --listen 127.0.0.1:0 --bridge-listen 127.0.0.1:0 "$@" > target/experiments/serve.out 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -q "bridge on" target/experiments/serve.out && break; sleep 0.1; done
  bridge=$(grep -o 'bridge on [0-9.:]*' target/experiments/serve.out | awk '{print $3}')
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; server=; }
{
  echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "== 1. load: 64 streams, ${secs} s, d=3,5"
  $Q load --streams 64 --seconds "$secs" --distances 3,5
  echo
  for threads in 1 0; do
    echo "== 2. gRPC overhead: 1 stream, 1 shot in flight, 10 s each, --runtime-threads $threads (0: one per core):"
    echo "   the echo floor, then d=3 and d=5"
    $Q load --runtime-threads $threads --echo --streams 1 --window 1 --seconds 10 --distances 3
    $Q load --runtime-threads $threads --streams 1 --window 1 --seconds 10 --distances 3
    $Q load --runtime-threads $threads --streams 1 --window 1 --seconds 10 --distances 5
  done
  echo
  echo "== 3. FPGA bridge overhead: 5,000 d=3 shots (3 rounds, 20,000 frames)"
  rm -rf target/experiments/bridge_d3
  $Q sample -d 3 -r 3 --noise si1000 --p 0.003 --shots 5000 --seed 99 --out-dir target/experiments/bridge_d3 >/dev/null
  for period in 200 50; do
    echo
    echo "-- a round every $period µs: the null-bridge floor"
    $FLOOR --frames 20000 --period-us "$period"
    for poll in 0 200; do
      echo
      echo "-- a round every $period µs: qecd serve --bridge-poll-us $poll"
      start_server --bridge-poll-us "$poll"
      $Q replay --dir target/experiments/bridge_d3 --addr "$bridge" --round-period-us "$period"
      stop_server
    done
  done
} 2>&1 | tee "$out.tmp"
mv "$out.tmp" "$out"
