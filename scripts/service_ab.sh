#!/usr/bin/env bash
# Two qecd binaries, A and B, run in turn on the same service measurements,
# so that a change's cost shows against this machine's run-to-run noise:
# one gRPC stream with one shot in flight (d=3, 10 s, one runtime thread),
# and an experiment replayed over the FPGA bridge at a round every 200 µs.
#
#   scripts/service_ab.sh OLD_QECD NEW_QECD [PAIRS]     (default 3 pairs)
#
# Build the old binary from another checkout, e.g.
#   git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin qecd)
# Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 OLD_QECD NEW_QECD [PAIRS]" >&2; exit 2; }
pairs=${3:-3}
exp=target/experiments/ab_d3
if [ ! -d "$exp" ]; then
  "$2" sample -d 3 -r 3 --noise si1000 --p 0.003 --shots 5000 --seed 99 --out-dir "$exp" >/dev/null
fi
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null || true' EXIT
bridge_run() { # QECD
  "$1" serve --listen 127.0.0.1:0 --bridge-listen 127.0.0.1:0 > target/experiments/ab_serve.out 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -q "bridge on" target/experiments/ab_serve.out && break; sleep 0.1; done
  local addr
  addr=$(grep -o 'bridge on [0-9.:]*' target/experiments/ab_serve.out | awk '{print $3}')
  "$1" replay --dir "$exp" --addr "$addr" --round-period-us 200 | grep -E "ACK round trip|DECISION round trip"
  kill "$server"; wait "$server" 2>/dev/null || true; server=
}
for i in $(seq "$pairs"); do
  for label in A B; do
    q=$1; [ "$label" = B ] && q=$2
    echo "== pair $i, $label ($q)"
    "$q" load --runtime-threads 1 --streams 1 --window 1 --seconds 10 --distances 3 | grep -E "^ 3 neural"
    bridge_run "$q"
  done
done
