#!/usr/bin/env bash
# Trains the model-zoo checkpoints with the fused CPU trainer and the recipe of
# docs/results.md §Recipe: relative positions, the per-round loss on dense
# labels (--aux-weight 1), AdamW, batch 256, rounds 1..25. d=5 starts from the
# d=3 model (the distance ladder).
#
#   scripts/train_zoo.sh d3 [extra qecd train flags, e.g. --max-minutes 40]
#   scripts/train_zoo.sh d5 [...]
#   scripts/train_zoo.sh d3 --resume     # continue a run (its optimizer state is beside it)
#
# Checkpoints go to $RUNS (default runs/zoo) with a .train.csv log beside
# each; `SRC=runs/zoo/d3 scripts/promote_ladder.sh 3` puts one into
# fixtures/models. STEPS overrides each stage's step target. Add
# --engine tch to train through libtorch (on CUDA when present; build with
# --features train).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/zoo}
mkdir -p "$RUNS"
# $bin: a private copy of qecd, so rebuilding target/ while a stage runs does not disturb it.
. scripts/private-qecd
which=${1:?d3 or d5}; shift
arch=(--positions relative --width 32 --heads 4 --layers 2 --ffn 64 --aux-weight 1 --batch 256 --rounds 1-25)
case "$which" in
  d3) "$bin" train -d 3 --basis z --noise si1000 --p 0.003 "${arch[@]}" --steps "${STEPS:-60000}" --lr 2e-3 --warmup 1000 \
        --eval-rounds 3,25 --eval-shots 20000 --eval-every 2500 --seed 1 --eval-seed 1000003 \
        --out "$RUNS/d3.safetensors" "$@" ;;
  d5) start=(--init "$RUNS/d3.safetensors")
      for a in "$@"; do [ "$a" = --resume ] && start=(); done
      "$bin" train -d 5 --basis z --noise si1000 --p 0.003 "${arch[@]}" --steps "${STEPS:-20000}" --lr 1e-3 --warmup 300 \
        --eval-rounds 5,25 --eval-shots 20000 --eval-every 1000 --seed 2 --eval-seed 1000005 \
        "${start[@]}" --out "$RUNS/d5.safetensors" "$@" ;;
  *) echo "unknown zoo entry $which (d3 or d5)" >&2; exit 2 ;;
esac
