#!/usr/bin/env bash
# Promotes a model of the distance ladder (scripts/train_ladder.sh) into the
# zoo: copies runs/rel_d<d>.safetensors and its training log to
# fixtures/models/d<d>_z_si1000_p003.*, fits its temperature on fresh shots
# (qecd calibrate, seed 2000000 + d, never used in training), writes the
# golden fixture (scripts/make_zoo_fixtures.sh) and the card
# (scripts/zoo_card.py).
#
#   scripts/promote_ladder.sh 7 [CAL_SHOTS]     (default 50000 shots)
#   SRC=runs/zoo/d3 scripts/promote_ladder.sh 3  (another checkpoint, without .safetensors)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:?distance}; shots=${2:-50000}
RUNS=${RUNS:-runs}
src=${SRC:-$RUNS/rel_d$d}
name=d${d}_z_si1000_p003
dst=fixtures/models/$name
[ -f "$src.safetensors" ] || { echo "no $src.safetensors; run scripts/train_ladder.sh d$d first" >&2; exit 2; }
cargo build --release --quiet
cp "$src.safetensors" "$dst.safetensors"
cp "$src.train.csv" "$dst.train.csv"
mkdir -p "docs/data/d$d"
./target/release/qecd calibrate --model "$dst.safetensors" --rounds "$d" --shots "$shots" --seed $((2000000 + d)) \
  --plot "docs/data/d$d/reliability.png" | tee "docs/data/d$d/calibration.txt"
scripts/make_zoo_fixtures.sh "$name" "$d"
python3 scripts/zoo_card.py "$dst.safetensors"
