#!/usr/bin/env bash
# The service figures of docs/perf.md, in one run on loopback:
#   1. the load run: 64 concurrent gRPC streams for 60 s, d=3 and d=5 mixed,
#      failing on any lost or duplicated shot (qecd load);
#   2. gRPC overhead: one stream, one shot in flight, so that the round trip
#      is the engine's step plus the transport alone;
#   3. FPGA bridge overhead: an experiment replayed over the bridge at a
#      round period the engine keeps up with (qecd replay).
# Writes docs/data/service.txt. Run it on an otherwise idle machine.
#
#   scripts/service_perf.sh [SECONDS]     (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
Q=./target/release/qecd
secs=${1:-60}
out=docs/data/service.txt
mkdir -p docs/data target/experiments
{
  echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "== 1. load: 64 streams, ${secs} s, d=3,5"
  $Q load --streams 64 --seconds "$secs" --distances 3,5
  echo
  echo "== 2. gRPC overhead: 1 stream, 1 shot in flight, d=3 then d=5, 15 s each"
  $Q load --streams 1 --window 1 --seconds 15 --distances 3
  $Q load --streams 1 --window 1 --seconds 15 --distances 5
  echo
  echo "== 3. FPGA bridge overhead: replay of 5,000 d=3 shots (3 rounds), one round every 50 µs"
  rm -rf target/experiments/bridge_d3
  $Q sample -d 3 -r 3 --noise si1000 --p 0.003 --shots 5000 --seed 99 --out-dir target/experiments/bridge_d3 >/dev/null
  $Q serve --listen 127.0.0.1:0 --bridge-listen 127.0.0.1:0 > target/experiments/serve.out &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 50); do grep -q "bridge on" target/experiments/serve.out && break; sleep 0.1; done
  bridge=$(grep -o 'bridge on [0-9.:]*' target/experiments/serve.out | awk '{print $3}')
  $Q replay --dir target/experiments/bridge_d3 --addr "$bridge" --round-period-us 50
} 2>&1 | tee "$out.tmp"
mv "$out.tmp" "$out"
