#!/usr/bin/env bash
# The training-recipe comparison of docs/results.md §Recipe: short fused runs
# that differ in one choice each, held-out LER against correlated matching
# logged every EVAL_EVERY steps on the same held-out shots (seed 1000003 at
# d=3, 1000005 at d=5), two or three runs at a time on one thread each.
#
#   scripts/train_recipe.sh d3            # per-round loss weight, optimizer, batch, rounds mix, denser noise first at d=3
#   scripts/train_recipe.sh d5            # from scratch against the d=3 → 5 ladder at d=5
#
# Logs and checkpoints go to $RUNS (default runs/recipe); the logs are copied
# to docs/data/recipe/. STEPS (default 6000 at d=3, 3000 at d=5) sets each
# run's length; every run sees STEPS·batch samples.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/recipe}
mkdir -p "$RUNS" docs/data/recipe
# $bin: a private copy of qecd, so rebuilding target/ while a stage runs does not disturb it.
. scripts/private-qecd

run() {
  local name=$1; shift
  local out="$RUNS/$name.safetensors"
  rm -f "$out" "$RUNS/$name.optim.safetensors" "$RUNS/$name.train.csv"
  "$bin" train --basis z --noise si1000 --width 32 --heads 4 --layers 2 --ffn 64 \
    --eval-shots "${EVAL_SHOTS:-20000}" --eval-every "${EVAL_EVERY:-500}" --threads 1 \
    --out "$out" "$@" > "$RUNS/$name.out" 2>&1
  cp "$RUNS/$name.train.csv" docs/data/recipe/
  tail -1 "$RUNS/$name.out"
}

case "${1:-d3}" in
  d3)
    S=${STEPS:-6000}
    common=(-d 3 --p 0.003 --eval-rounds 3,25 --seed 11 --eval-seed 1000003)
    adamw=(--lr 2e-3 --warmup 500)
    run d3_final "${common[@]}" "${adamw[@]}" --rounds 1-25 --steps "$S" --batch 256 --aux-weight 0 &
    run d3_aux05 "${common[@]}" "${adamw[@]}" --rounds 1-25 --steps "$S" --batch 256 --aux-weight 0.5 &
    wait
    run d3_aux1 "${common[@]}" "${adamw[@]}" --rounds 1-25 --steps "$S" --batch 256 --aux-weight 1 &
    run d3_aux05_lion "${common[@]}" --rounds 1-25 --steps "$S" --batch 256 --aux-weight 0.5 \
      --optimizer lion --lr 3e-4 --warmup 500 --weight-decay 1e-3 &
    wait
    run d3_aux05_b1024 "${common[@]}" --rounds 1-25 --steps $((S / 4)) --batch 1024 --aux-weight 0.5 --lr 4e-3 --warmup 125 &
    run d3_aux05_rounds1-12 "${common[@]}" "${adamw[@]}" --rounds 1-12 --steps "$S" --batch 256 --aux-weight 0.5 &
    run d3_aux05_first-p006 "${common[@]}" "${adamw[@]}" --rounds 1-25 --steps "$S" --batch 256 --aux-weight 0.5 \
      --first-p 0.006 --first-steps $((S / 3)) &
    wait
    ;;
  d5)
    S=${STEPS:-3000}
    common=(-d 5 --p 0.003 --rounds 1-25 --eval-rounds 5,25 --seed 15 --eval-seed 1000005 --lr 1e-3 --warmup 300 --aux-weight 0.5)
    run d5_scratch "${common[@]}" --steps "$S" --batch 256 --positions relative &
    run d5_ladder "${common[@]}" --steps "$S" --batch 256 --init "$RUNS/d3_best_rel.safetensors" &
    wait
    ;;
  *) echo "unknown case ${1} (d3 d5)" >&2; exit 2 ;;
esac
