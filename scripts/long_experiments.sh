#!/usr/bin/env bash
# Long memory experiments: does a decoder hold its logical error rate per
# round as the rounds grow? The neural decoder (the d=3 and d=5 zoo models,
# trained at rounds <= 25) against correlated matching, memory-Z, SI1000,
# d = 3 and 5, rounds 25, 100, 1,000 and 10,000, MAX_SHOTS shots per case (no
# early stop), both decoders on the same shots (one seed).
#
# Why p = 0.001 and not the models' p = 0.003: at 0.003, d=3 loses about 0.6% of
# its logical state per round, so by a few hundred rounds a shot's logical
# error rate is 0.5 and the per-round rate can no longer be measured (qecd
# report says "saturated"). At 0.001 (about 6e-4 a round at d=3, 4e-5 at d=5)
# d=3 stays measurable to 1,000 rounds and d=5 to 10,000; d=3 at 10,000 rounds
# saturates even so, and shows only a lower bound.
#
# Writes, in OUT_DIR (default docs/data/long):
#   long.csv  sinter CSV; appended to, so re-running resumes each case
#   long.png  LER per round against rounds (qecd plot --x rounds)
#   long.md   per-round LER at each number of rounds, and its ratio to that at
#             25 rounds (qecd report --by rounds)
#
# Time, at the default 20,000 shots, on 2 cores: about 1.5 to 3 hours, nearly
# all of it at 10,000 rounds. Measured per shot on one thread: at 1,000
# rounds, neural 4 ms (d=3) and 15 ms (d=5), correlated 0.3 ms and about 3 ms;
# at 10,000 rounds, neural 41 ms and 144 ms, correlated 9 ms and 120-420 ms.
# Building each 10,000-round case takes a minute (its DEM is 270 MB at d=5),
# and correlated matching there needs about 1.4 GB a thread (5.3 GB in all
# with 2 threads).
#
# Environment (defaults in brackets): P [0.001], MAX_SHOTS [20000],
# MAX_ERRORS [1000000000], DISTANCES [3,5], ROUNDS [25,100,1000,10000],
# DECODERS [neural,correlated], MODELS [fixtures/models/d3_z_si1000_p003.safetensors,
# fixtures/models/d5_z_si1000_p003.safetensors], SEED [20261122], THREADS
# [0: one per core], OUT_DIR [docs/data/long], QECD [./target/release/qecd,
# built first].
set -euo pipefail
cd "$(dirname "$0")/.."

P=${P:-0.001}
MAX_SHOTS=${MAX_SHOTS:-20000}
MAX_ERRORS=${MAX_ERRORS:-1000000000}
DISTANCES=${DISTANCES:-3,5}
ROUNDS=${ROUNDS:-25,100,1000,10000}
DECODERS=${DECODERS:-neural,correlated}
MODELS=${MODELS:-fixtures/models/d3_z_si1000_p003.safetensors,fixtures/models/d5_z_si1000_p003.safetensors}
SEED=${SEED:-20261122}
THREADS=${THREADS:-0}
OUT_DIR=${OUT_DIR:-docs/data/long}
QECD=${QECD:-./target/release/qecd}

cargo build --release --quiet
mkdir -p "$OUT_DIR"

"$QECD" sweep --decoders "$DECODERS" --distances "$DISTANCES" --rounds "$ROUNDS" --basis z --noise si1000 \
  --p "$P" --max-shots "$MAX_SHOTS" --max-errors "$MAX_ERRORS" --seed "$SEED" --threads "$THREADS" \
  --model "$MODELS" --out "$OUT_DIR/long.csv"
"$QECD" plot --x rounds --in "$OUT_DIR/long.csv" --out "$OUT_DIR/long.png"
"$QECD" report --by rounds --in "$OUT_DIR/long.csv" --out "$OUT_DIR/long.md" >/dev/null
echo "wrote $OUT_DIR/long.csv, $OUT_DIR/long.png and $OUT_DIR/long.md" >&2
