#!/usr/bin/env bash
# The neural decoder against correlated and plain matching at d = 3..11:
# memory-Z, SI1000 p=0.003, rounds = d, MAX_SHOTS shots per case (no early
# stop: MAX_ERRORS is far above what the shots can reach), all decoders on
# the same shots (one seed).
#
# Writes, in OUT_DIR (default docs/data/sweep):
#   sweep.csv  sinter CSV; appended to, so re-running resumes each case
#   sweep.png  LER per round against distance (qecd sweep --plot)
#   sweep.md   the table of qecd report: per-round LER over correlated matching's
#
# Neural cases need a model per distance. Without MODELS they take the
# zoo's, which qecd embeds from fixtures/models/d{3,5,7,9,11}_z_si1000_p003
# .safetensors: the distances without such a file are named and swept
# without neural. The zoo's cases carry the model's name only, as the rows
# already in docs/data/sweep/sweep.csv do, so a re-run resumes them. A
# MODELS given (comma-separated checkpoint files) is used at every distance
# (qecd names any it lacks); its cases also carry each file's sha256, so
# they never add to the zoo's rows.
#
# Time, at the default 100,000 shots, on 2 cores: the matching decoders take
# about a minute (correlated matching is 2 us a shot at d=3, 250 us at
# d=11); the neural decoder with the d=3 and d=5 zoo models under a minute
# (0.1 ms a shot at d=5). Its cost grows at least with stabilizers x rounds
# (11 times d=5's at d=11), so models for d=7..11 add roughly 5 to 30 minutes,
# depending on their size.
#
# Environment (defaults in brackets): MAX_SHOTS [100000], MAX_ERRORS
# [1000000000], DISTANCES [3,5,7,9,11], P [0.003], MODELS [above], SEED
# [20261123], THREADS [0: one per core], OUT_DIR [docs/data/sweep],
# QECD [./target/release/qecd, built first].
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_SHOTS=${MAX_SHOTS:-100000}
MAX_ERRORS=${MAX_ERRORS:-1000000000}
DISTANCES=${DISTANCES:-3,5,7,9,11}
P=${P:-0.003}
SEED=${SEED:-20261123}
THREADS=${THREADS:-0}
OUT_DIR=${OUT_DIR:-docs/data/sweep}
QECD=${QECD:-./target/release/qecd}

cargo build --release --quiet
mkdir -p "$OUT_DIR"

# The distances that have a model.
neural_distances=()
missing=()
if [[ -n "${MODELS:-}" ]]; then
  IFS=',' read -r -a neural_distances <<<"$DISTANCES"
else
  IFS=',' read -r -a all <<<"$DISTANCES"
  for d in "${all[@]}"; do
    model=fixtures/models/d${d}_z_si1000_p003.safetensors
    if [[ -f "$model" ]]; then
      neural_distances+=("$d")
    else
      missing+=("$d")
    fi
  done
fi
if ((${#missing[@]} > 0)); then
  echo "no neural model for d=$(IFS=','; echo "${missing[*]}") (want fixtures/models/d<d>_z_si1000_p003.safetensors): neural is left out there" >&2
fi

# --model only for MODELS given; the zoo otherwise.
model_args=()
if [[ -n "${MODELS:-}" ]]; then model_args=(--model "$MODELS"); fi
common=(--rounds d --basis z --noise si1000 --p "$P" --max-shots "$MAX_SHOTS" --max-errors "$MAX_ERRORS"
  --seed "$SEED" --threads "$THREADS" --out "$OUT_DIR/sweep.csv")
if ((${#missing[@]} == 0)); then
  "$QECD" sweep --decoders neural,correlated,matching --distances "$DISTANCES" "${common[@]}" \
    --plot "$OUT_DIR/sweep.png" "${model_args[@]}"
elif ((${#neural_distances[@]} == 0)); then
  "$QECD" sweep --decoders correlated,matching --distances "$DISTANCES" "${common[@]}" --plot "$OUT_DIR/sweep.png"
else
  "$QECD" sweep --decoders correlated,matching --distances "$DISTANCES" "${common[@]}"
  "$QECD" sweep --decoders neural --distances "$(IFS=','; echo "${neural_distances[*]}")" "${common[@]}" \
    --plot "$OUT_DIR/sweep.png" "${model_args[@]}"
fi
"$QECD" report --in "$OUT_DIR/sweep.csv" --baseline correlated --out "$OUT_DIR/sweep.md" >/dev/null
echo "wrote $OUT_DIR/sweep.csv, $OUT_DIR/sweep.png and $OUT_DIR/sweep.md" >&2
