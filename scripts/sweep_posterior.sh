#!/usr/bin/env bash
# Issue 13's sweep: matching, correlated, belief, neural and neural-matching
# at d = 3..11 on the same shots: memory-Z, SI1000 p=0.003, rounds = d.
#
# Each distance runs its own `qecd sweep` with its own shot budget (SHOTS_d3
# .. SHOTS_d11), all decoders of a distance on the same shots (one seed);
# the CSV is appended to, so re-running with larger budgets adds fresh
# shots to every case. neural uses the zoo's global model of each distance;
# neural-matching the posterior model built into qecd (or POSTERIOR).
#
# Writes, in OUT_DIR (default docs/data/posterior):
#   sweep.csv  sinter CSV
#   sweep.png  LER per round against distance (qecd sweep --plot)
#   sweep.md   qecd report: per-round LER over correlated matching's
#
# Time on the 2-vCPU machine with the default budgets: about 25 minutes,
# most of it belief-matching and neural-matching at d=9 and 11 (about 6 ms a
# shot each at d=11, against 0.1 ms for correlated matching).
#
# Environment (defaults in brackets): SHOTS_d3 [300000], SHOTS_d5 [200000],
# SHOTS_d7 [100000], SHOTS_d9 [100000], SHOTS_d11 [100000], DISTANCES
# [3 5 7 9 11], P [0.003], SEED [20261130], THREADS [0: one per core],
# POSTERIOR [built in], OUT_DIR [docs/data/posterior], QECD
# [./target/release/qecd, built first].
set -euo pipefail
cd "$(dirname "$0")/.."

P=${P:-0.003}
SEED=${SEED:-20261130}
THREADS=${THREADS:-0}
OUT_DIR=${OUT_DIR:-docs/data/posterior}
QECD=${QECD:-./target/release/qecd}
DISTANCES=${DISTANCES:-3 5 7 9 11}

if [[ "$QECD" == ./target/release/qecd ]]; then
  cargo build --release --quiet
fi
mkdir -p "$OUT_DIR"
posterior=()
if [[ -n "${POSTERIOR:-}" ]]; then
  posterior=(--posterior "$POSTERIOR")
fi
for d in $DISTANCES; do
  budget_var="SHOTS_d$d"
  default=100000
  case $d in 3) default=300000 ;; 5) default=200000 ;; esac
  shots=${!budget_var:-$default}
  "$QECD" sweep --decoders matching,correlated,belief,neural,neural-matching --distances "$d" --rounds d \
    --basis z --noise si1000 --p "$P" --max-shots "$shots" --max-errors 1000000000 --seed "$SEED" \
    --threads "$THREADS" --out "$OUT_DIR/sweep.csv" "${posterior[@]}"
done
"$QECD" plot --in "$OUT_DIR/sweep.csv" --out "$OUT_DIR/sweep.png"
"$QECD" report --in "$OUT_DIR/sweep.csv" --baseline correlated --out "$OUT_DIR/sweep.md" >/dev/null
echo "wrote $OUT_DIR/sweep.csv, $OUT_DIR/sweep.png and $OUT_DIR/sweep.md" >&2
