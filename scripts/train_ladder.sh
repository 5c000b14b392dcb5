#!/usr/bin/env bash
# Trains the distance-agnostic (relative-position) models up the distance
# ladder d = 3 → 5 → 7 → 9 → 11, each stage initialized from the one below
# (`qecd train --init`), memory-Z, SI1000 p = 0.003.
#
#   scripts/train_ladder.sh [stage ...]      # stages: d3 d5 d7 d9 d11 (default: all, in order)
#
# Checkpoints go to $RUNS (default runs/, ignored by git) as rel_d{d}.safetensors
# with a .train.csv log beside each; a stage whose checkpoint exists is resumed
# (--resume), so re-running the script continues where it stopped. The d=3
# stage starts from the zoo's per-stabilizer d=3 model projected onto relative
# positions (models::Checkpoint::to_relative).
#
# Budgets: MINUTES_d3, MINUTES_d5, ... (wall-clock minutes per stage, default
# below) and STEPS_d3, ... (the stage's step target). On the 2-vCPU CI machine
# with no GPU the defaults take about 2 hours in all and leave d >= 7 far from
# converged; on a CUDA device tch trains on the GPU and the step targets can be
# raised by an order of magnitude.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
mkdir -p "$RUNS"
# $bin: a private copy of qecd, so rebuilding target/ while a stage runs does not disturb it.
. scripts/private-qecd

stage() {
  local d=$1 init=$2 rounds=$3 eval_rounds=$4 batch=$5 steps=$6 minutes=$7 seed=$8
  local out="$RUNS/rel_d$d.safetensors"
  local start=(--init "$init")
  [ -f "$out" ] && start=(--resume)
  echo "== d=$d: $steps steps, batch $batch, rounds $rounds, at most $minutes min (${start[*]})"
  "$bin" train -d "$d" --basis z --noise si1000 --p 0.003 --rounds "$rounds" \
    --positions relative --width 32 --heads 4 --layers 2 --ffn 64 \
    --steps "$steps" --batch "$batch" --lr "${LR:-1e-3}" --warmup 200 \
    --eval-rounds "$eval_rounds" --eval-shots "${EVAL_SHOTS:-20000}" --eval-every "${EVAL_EVERY:-500}" \
    --seed "$seed" --eval-seed $((1000000 + seed)) --max-minutes "$minutes" \
    --out "$out" "${start[@]}"
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(d3 d5 d7 d9 d11)
for s in "${stages[@]}"; do
  case "$s" in
    d3)  stage 3 fixtures/models/d3_z_si1000_p003.safetensors 1-25 3,25 256 "${STEPS_d3:-3000}" "${MINUTES_d3:-15}" 31 ;;
    d5)  stage 5 "$RUNS/rel_d3.safetensors" 1-25 5,25 256 "${STEPS_d5:-3000}" "${MINUTES_d5:-40}" 51 ;;
    d7)  stage 7 "$RUNS/rel_d5.safetensors" 1-9 7 128 "${STEPS_d7:-2000}" "${MINUTES_d7:-25}" 71 ;;
    d9)  stage 9 "$RUNS/rel_d7.safetensors" 1-11 9 128 "${STEPS_d9:-1500}" "${MINUTES_d9:-20}" 91 ;;
    d11) stage 11 "$RUNS/rel_d9.safetensors" 1-13 11 64 "${STEPS_d11:-1500}" "${MINUTES_d11:-20}" 111 ;;
    *) echo "unknown stage $s (d3 d5 d7 d9 d11)" >&2; exit 2 ;;
  esac
done
