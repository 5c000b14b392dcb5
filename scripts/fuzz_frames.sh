#!/usr/bin/env bash
# Fuzzes the FPGA bridge's streaming frame decoder (fuzz/fuzz_targets/frame_parser.rs)
# for a bounded time. Not part of CI.
#
#   scripts/fuzz_frames.sh         # 60 s
#   scripts/fuzz_frames.sh 3600    # an hour
#
# Needs cargo-fuzz (installed from crates.io when missing) and a nightly rustc
# for the sanitizer flags. Without a nightly toolchain, or with
# FUZZ_TOOLCHAIN=stable, it uses the stable one with RUSTC_BOOTSTRAP=1.
# The corpus grows in fuzz/corpus/frame_parser, seeded with the example frames
# of docs/fpga-bridge.md. A crash stops the run (non-zero exit) and leaves its
# input in fuzz/artifacts/frame_parser/; replay it with
#   cargo +nightly fuzz run frame_parser fuzz/artifacts/frame_parser/<file>
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  echo "usage: $0 [seconds]   (default 60)" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

toolchain=()
if [[ "${FUZZ_TOOLCHAIN:-auto}" != stable ]] && command -v rustup >/dev/null &&
  rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1 # lets stable rustc accept -Zsanitizer and the other -Z flags cargo-fuzz passes
fi
echo "fuzzing with $(rustc "${toolchain[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)} for ${seconds}s"

# The bytes of the fenced block after `<!-- golden: $1 -->` in the doc (`#` starts a comment).
golden() {
  awk -v marker="<!-- golden: $1 -->" '
    $0 == marker { found = 1; next }
    found && /^```/ { if (++fences == 2) exit; next }
    found && fences == 1' docs/fpga-bridge.md |
    perl -ne 's/#.*//; print pack("H*", join("", split))'
}

# seed NAME CONTROL GOLDEN...: a control byte (see the fuzz target), then example frames.
corpus=fuzz/corpus/frame_parser
mkdir -p "$corpus"
seed() {
  local name=$1 control=$2
  shift 2
  {
    printf "\\x$control"
    for frame in "$@"; do golden "$frame"; done
  } >"$corpus/seed-$name"
}
seed open 00 open
seed round 07 round
seed session 40 open round round round
seed decision 80 decision
seed replies c0 decision decision

cargo "${toolchain[@]}" fuzz run frame_parser "$corpus" -- \
  -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
