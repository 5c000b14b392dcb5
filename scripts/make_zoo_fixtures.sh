#!/usr/bin/env bash
# Golden shots for each zoo checkpoint: 2,000 fresh shots (seed never used in
# training), their circuit, and the predictions the checkpoint makes on them.
# tests/zoo.rs checks that the checkpoint still decodes them the same way.
#
#   scripts/make_zoo_fixtures.sh d3_z_si1000_p003 3
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
name=${1:?checkpoint name}; d=${2:?distance}
base=fixtures/models/$name
Q=./target/release/qecd
$Q sample -d "$d" -r "$d" --noise si1000 --p 0.003 --shots 2000 --seed 4040404 \
  --out "$base.fixture.b8" --obs-out "$base.fixture.obs.01" --circuit-out "$base.fixture.stim"
$Q predict --circuit "$base.fixture.stim" --in "$base.fixture.b8" --out "$base.fixture.pred.01" \
  --decoder neural --model "$base.safetensors" --obs-in "$base.fixture.obs.01"
