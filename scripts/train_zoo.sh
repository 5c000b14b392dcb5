#!/usr/bin/env bash
# Trains the model-zoo checkpoints in fixtures/models.
#
#   scripts/train_zoo.sh d3 [extra qecd train flags, e.g. --max-minutes 100 --resume]
#   scripts/train_zoo.sh d5 ...
#
# Run it in the background; re-running with --resume continues a checkpoint.
# A CUDA device is used when tch finds one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
which=${1:?d3 or d5}; shift
case "$which" in
  d3) ./target/release/qecd train -d 3 --basis z --noise si1000 --p 0.003 --rounds 1-25 \
        --width 32 --heads 4 --layers 2 --ffn 64 --steps "${STEPS:-40000}" --batch 256 --lr 2e-3 --warmup 1000 \
        --eval-rounds 3,25 --eval-shots 20000 --eval-every 2500 --seed 1 --eval-seed 1000003 \
        --out fixtures/models/d3_z_si1000_p003.safetensors "$@" ;;
  d5) ./target/release/qecd train -d 5 --basis z --noise si1000 --p 0.003 --rounds 1-25 \
        --width 32 --heads 4 --layers 2 --ffn 64 --steps "${STEPS:-60000}" --batch 256 --lr 2e-3 --warmup 1000 \
        --eval-rounds 5,25 --eval-shots 20000 --eval-every 2500 --seed 2 --eval-seed 1000005 \
        --out fixtures/models/d5_z_si1000_p003.safetensors "$@" ;;
  *) echo "unknown zoo entry $which (d3 or d5)" >&2; exit 2 ;;
esac
