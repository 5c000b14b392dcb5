#!/usr/bin/env bash
# The perf report of docs/perf.md: per-round step latency percentiles, batch
# throughput and decision latency of the neural engine, with the tch forward
# and PyMatching measured in the same run as peers.
#
#   scripts/perf.sh            # full run (a few minutes), writes docs/data/perf.{csv,md}
#   scripts/perf.sh --quick    # fewer iterations, prints only
#
# Run it on an otherwise idle machine: the tails (p99, p99.9) are the first
# thing any other load spoils.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/torch-env
cargo build --release -p qecd-benches --features train --bin perf --quiet
if [[ "${1:-}" == "--quick" ]]; then
  exec ./target/release/perf --quick
fi
mkdir -p docs/data
./target/release/perf --csv docs/data/perf.csv | tee docs/data/perf.md.tmp
mv docs/data/perf.md.tmp docs/data/perf.md
