#!/usr/bin/env bash
# Issue 16's swaps under load, on loopback against `qecd serve --models DIR`
# (copies of the zoo's d=3 and d=5 checkpoints; in DIR/alt, which the server
# does not load at start, the d=3 one fine-tuned on a crosstalk device,
# fixtures/models/finetuned/d3_z_crosstalk.safetensors, and the d=5 one
# trained on to step 38,406, docs/data/d5/run/d5.safetensors: same codes,
# other weights):
#   1. 64 streams for SECONDS, d=3 and d=5 mixed, each stream opening a new
#      session every REOPEN shots, no swaps: the baseline;
#   2. the same with 10 swaps spread over the run, each a LoadModel call per
#      model: d3_z_si1000_p003 and d5_z_si1000_p003 each alternate between
#      the alt/ weights (swaps 1, 3, ...) and the zoo's (swaps 2, 4, ...), so
#      every swap serves each name as a new version NAME@N:HASH with the
#      other hash.
# Each phase fails on a lost or duplicated shot; phase 2 also fails unless
# every stream's sessions got versions in swap order (never backwards, and
# never older than a swap answered before the session opened), every
# neural result named its session's version, each version's hash is the
# sha256 of the file loaded then, and, for CHECK sessions of each version,
# every neural answer equals offline decoding of the same shots with that
# file's weights (src/cmd/load/swaps.rs).
#
#   scripts/hot_swap_load.sh [SECONDS] [REOPEN]     (default 60, 100)
#   OUT=FILE (default docs/data/hot_swap.txt), CHECK=SESSIONS (default 16)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin qecd
Q=./target/release/qecd
secs=${1:-60}
reopen=${2:-100}
out=${OUT:-docs/data/hot_swap.txt}
check=${CHECK:-16}
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/models/alt"
cp fixtures/models/d3_z_si1000_p003.safetensors fixtures/models/d5_z_si1000_p003.safetensors "$work/models/"
cp fixtures/models/finetuned/d3_z_crosstalk.safetensors docs/data/d5/run/d5.safetensors "$work/models/alt/"
m=$work/models
swap="d3_z_si1000_p003=$m/alt/d3_z_crosstalk.safetensors,d3_z_si1000_p003=$m/d3_z_si1000_p003.safetensors"
swap="$swap,d5_z_si1000_p003=$m/alt/d5.safetensors,d5_z_si1000_p003=$m/d5_z_si1000_p003.safetensors"

start_server() {
  $Q serve --listen 127.0.0.1:0 --models "$work/models" > "$work/serve.out" 2>"$work/serve.err" &
  server=$!
  for _ in $(seq 300); do grep -q "gRPC on" "$work/serve.out" && break; sleep 0.1; done
  addr=$(grep -o 'gRPC on [0-9.:]*' "$work/serve.out" | awk '{print $3}')
  [ -n "$addr" ] || { cat "$work/serve.err" >&2; exit 1; }
  cat "$work/serve.out"
}
stop_server() {
  echo "server peak RSS: $(grep VmHWM /proc/$server/status | awk '{print $2, $3}'); models it loaded:"
  sed 's/\x1b\[[0-9;]*m//g' "$work/serve.err" | grep -o 'serving model version=[^ ]*' | sed 's/^/  /' || true
  kill "$server"; wait "$server" 2>/dev/null || true; server=
}
{
  echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== 1. baseline: 64 streams, ${secs} s, a new session every ${reopen} shots, no swaps"
  start_server
  $Q load --addr "http://$addr" --streams 64 --seconds "$secs" --reopen-every "$reopen"
  stop_server
  echo "== 2. swaps: 64 streams, ${secs} s, a new session every ${reopen} shots, 10 swaps (LoadModel), each model alternating between two checkpoints"
  start_server
  echo "sha256 of the files swapped in (under the models directory):"
  (cd "$m" && sha256sum alt/*.safetensors *.safetensors | sed 's/^/  /')
  $Q load --addr "http://$addr" --streams 64 --seconds "$secs" --reopen-every "$reopen" --swap-models "$swap" --swaps 10 \
    --check-sessions "$check"
  stop_server
} 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -v ' INFO ' | tee "$out"

python3 - "$out" <<'PY' | tee -a "$out"
import re, sys
text = open(sys.argv[1]).read()
phases = re.split(r"^== ", text, flags=re.M)[2:]
row = re.compile(r"^\s*(\d+) (\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+(\S+) / (\S+) / (\S+)\s+(\S+) / (\S+) / (\S+)", re.M)
table = [{int(m[1]): dict(shots=int(m[4]), lost=int(m[5]), dup=int(m[6]), p99=float(m[9]), dp99=float(m[12]))
          for m in row.finditer(p)} for p in phases]
print("\n== summary (client round trips, µs)")
for d in sorted(table[0]):
    a, b = table[0][d], table[1].get(d)
    if b is None:
        continue
    print(f"d={d}: shots {a['shots']} -> {b['shots']}, lost {a['lost']}/{b['lost']}, dup {a['dup']}/{b['dup']}; "
          f"round-ack p99 {a['p99']:.0f} -> {b['p99']:.0f} ({b['p99'] / a['p99']:.2f}x); "
          f"decision p99 {a['dp99']:.0f} -> {b['dp99']:.0f} ({b['dp99'] / a['dp99']:.2f}x)")
PY
