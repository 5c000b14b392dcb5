#!/usr/bin/env bash
# Issue 16's calibration loop on a device the zoo never saw
# (fixtures/devices/crosstalk.toml: SI1000 p=0.003 plus ZZ/XX crosstalk,
# three hot qubits and readout asymmetry), memory-Z, d=3 with 10 rounds and
# d=5 with 5 rounds:
#   1. the lab's "experiment": 20,000 device shots, in a directory whose
#      circuit_noisy.stim is only the lab's prior (plain SI1000 p=0.003);
#   2. qecd learn-noise learns a DEM from those shots alone;
#   3. (d=3) qecd finetune adapts the zoo's d=3 model to the directory: on
#      15,000 of its shots plus 2,000,000 drawn from the learned DEM
#      (--dem-shots), which is also the matching baseline it reports against;
#   4. 100,000 fresh device shots are decoded by correlated matching with the
#      prior DEM, the learned DEM and the device's true DEM (the bound a
#      perfect noise model gives), and (d=3) by the pretrained and the
#      fine-tuned neural model.
# Writes docs/data/device_loop.txt, ending with the ratios the issue asks for.
#
#   scripts/device_loop.sh            (WORK=dir to keep the files elsewhere)
#   DEVICE=fixtures/devices/crosstalk-strong.toml WORK=target/device-loop-strong \
#     OUT=docs/data/device_loop_strong.txt scripts/device_loop.sh
# SEEDS="EXP TEST FINETUNE" draws other shots and another fine-tune split
# (default "101 202 17"), to see how far a figure moves between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# QECD=path runs that binary instead of building one (a copy stays put while
# other builds replace target/release/qecd).
if [ -z "${QECD:-}" ]; then cargo build --release --quiet --bin qecd; fi
Q=${QECD:-./target/release/qecd}
device=${DEVICE:-fixtures/devices/crosstalk.toml}
work=${WORK:-target/device-loop}
out=${OUT:-docs/data/device_loop.txt}
read -r seed_exp seed_test seed_finetune <<<"${SEEDS:-101 202 17}"
if [ -z "$seed_finetune" ]; then
  echo "SEEDS must hold three seeds (experiment, test, fine-tune), not '${SEEDS:-}'" >&2
  exit 2
fi
rm -rf "$work" && mkdir -p "$work"

errors() { # predict arguments...: prints the mistakes it counted
  $Q predict "$@" --out "$work/pred.01" 2>&1 | grep -o '[0-9]* of [0-9]* shots decoded wrongly' | awk '{print $1}'
}

{
  echo "== device $device, p=0.003; seeds $seed_exp $seed_test $seed_finetune; $(nproc) cores; $(date -u +%F)"
  for case in "3 10" "5 5"; do
    set -- $case
    d=$1 r=$2 exp="$work/exp-d$d" test="$work/test-d$d"
    echo "== d=$d, $r rounds"
    $Q sample -d "$d" -r "$r" --noise "device:$device" --p 0.003 --shots 20000 --seed "$seed_exp" --out-dir "$exp" >/dev/null
    $Q sample -d "$d" -r "$r" --noise si1000 --p 0.003 --shots 1 --seed 1 --out-dir "$work/prior-d$d" >/dev/null
    # The device's own circuit is the bound; the lab has only its prior.
    cp "$exp/circuit_noisy.stim" "$work/true-d$d.stim"
    cp "$work/prior-d$d/circuit_noisy.stim" "$exp/circuit_noisy.stim"
    rm -f "$exp"/*.dem
    $Q learn-noise --data "$exp" --out "$work/learned-d$d.dem" | tail -3
    $Q sample -d "$d" -r "$r" --noise "device:$device" --p 0.003 --shots 100000 --seed "$seed_test" --out-dir "$test" >/dev/null
    shots=(--in "$test/detection_events.b8" --obs-in "$test/obs_flips_actual.01")
    prior=$(errors --circuit "$exp/circuit_noisy.stim" "${shots[@]}" --decoder correlated)
    learned=$(errors --dem "$work/learned-d$d.dem" "${shots[@]}" --decoder correlated)
    truth=$(errors --circuit "$work/true-d$d.stim" "${shots[@]}" --decoder correlated)
    echo "correlated matching on 100000 fresh shots: prior DEM $prior, learned DEM $learned, true DEM $truth errors"
    echo "RATIO d=$d learned/prior $(python3 -c "print(f'{$learned/$prior:.3f}')") (goal <= 0.92); true/prior $(python3 -c "print(f'{$truth/$prior:.3f}')")"
    if [ "$d" = 3 ]; then
      cp "$work/learned-d$d.dem" "$exp/circuit_detector_error_model.dem"
      # 15,000 of the lab's shots, plus 2,000,000 drawn from the learned DEM;
      # early stopping on 4,000 of the lab's shots.
      $Q finetune --model fixtures/models/d3_z_si1000_p003.safetensors --data "$exp" --out "$work/finetuned-d3.safetensors" \
        --finetune-shots 15000 --val-shots 4000 --dem-shots 2000000 --steps 20000 --patience 15 --eval-every 250 --seed "$seed_finetune" \
        2>&1 | grep -v '^\s*$' | tail -8
      pre=$(errors --circuit "$exp/circuit_noisy.stim" "${shots[@]}" --decoder neural \
        --model fixtures/models/d3_z_si1000_p003.safetensors)
      fine=$(errors --circuit "$exp/circuit_noisy.stim" "${shots[@]}" --decoder neural \
        --model "$work/finetuned-d3.safetensors")
      echo "neural on the same shots: pretrained $pre, fine-tuned $fine errors"
      echo "RATIO d=3 finetuned/pretrained $(python3 -c "print(f'{$fine/$pre:.3f}')") (goal <= 0.90)"
      echo "RATIO d=3 finetuned/prior-correlated $(python3 -c "print(f'{$fine/$prior:.3f}')") (goal <= 0.95); finetuned/true-correlated $(python3 -c "print(f'{$fine/$truth:.3f}')")"
    fi
  done
} 2>&1 | tee "$out"
