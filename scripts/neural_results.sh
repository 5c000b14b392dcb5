#!/usr/bin/env bash
# The measurements of docs/results.md for one zoo checkpoint:
#   0. training throughput on this machine;
#   1. calibration: τ, ECE before/after, reliability diagram, postselection;
#   2. LER of the neural decoder and of correlated matching on the same fresh
#      shots (a seed never used in training or calibration), per rounds case;
#   3. fine-tuning on an "experiment" simulated with noise the pretraining
#      never saw (SI1000 with per-qubit rates scaled by factors in [0.5, 2]).
#
#   scripts/neural_results.sh d3 [SHOTS]     (default 200000 shots per case)
#
# SKIP_THROUGHPUT=1 and SKIP_FINETUNE=1 leave out steps 0 and 3. CAL_SEED (default
# 2000003) seeds the calibration shots; qecd calibrate refuses a seed the
# checkpoint (or a model it was initialised from) already used.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
Q=./target/release/qecd
which=${1:?d3 or d5}; shots=${2:-200000}
case "$which" in
  d3) d=3; rounds=3,25 ;;
  d5) d=5; rounds=5,25 ;;
  *) echo "unknown zoo entry $which" >&2; exit 2 ;;
esac
model=fixtures/models/${which}_z_si1000_p003.safetensors
out=docs/data/$which
mkdir -p "$out"

if [[ -z "${SKIP_THROUGHPUT:-}" ]]; then
echo "== training throughput of this configuration (300 steps from scratch, discarded)"
rm -f target/throughput.safetensors target/throughput.train.csv
case "$which" in
  d3) arch="--width 32 --heads 4 --layers 2 --ffn 64" ;;
  d5) arch="--width 32 --heads 4 --layers 2 --ffn 64" ;;
esac
$Q train -d $d --rounds 1-25 $arch --steps 300 --batch 256 --eval-rounds $d --eval-shots 1000 --eval-every 300 \
  --seed 11 --eval-seed 12 --out target/throughput.safetensors | tail -1 | tee "$out/throughput.txt"
fi

echo "== calibration"
$Q calibrate --model "$model" --rounds "$rounds" --shots 100000 --seed "${CAL_SEED:-2000003}" --plot "$out/reliability.png" | tee "$out/calibration.txt"

echo "== neural vs correlated matching on the same shots (seed 3000003)"
rm -f "$out/ler.csv"
$Q sweep --decoders neural,correlated --distances $d --rounds "$rounds" --p 0.003 --model "$model" \
  --max-shots "$shots" --max-errors 1000000000 --seed 3000003 --out "$out/ler.csv" | tee "$out/ler.txt"

[[ -n "${SKIP_FINETUNE:-}" ]] && exit 0
echo "== fine-tuning on an unseen noise model"
exp=target/experiments/${which}_varied
rm -rf "$exp" "$out/finetuned.safetensors" "$out/finetuned.finetune.csv"
mkdir -p target/experiments
$Q sample -d $d -r $d --noise si1000-varied:4242 --p 0.003 --shots 100000 --seed 31337 --out-dir "$exp"
$Q finetune --model "$model" --data "$exp" --out "$out/finetuned.safetensors" --finetune-shots 20000 \
  --val-shots 10000 --seed 17 --steps 3000 --lr 3e-4 --eval-every 100 --patience 8 | tee "$out/finetune.txt"
