#!/usr/bin/env python3
"""Time to build a correlated-matching decoder: qecd against PyMatching, from
the same `stim.DetectorErrorModel`, on one thread.

Sinter builds one decoder per task and worker (`compile_decoder_for_dem`),
so this cost is paid once per task, outside the decoding rate that
scripts/python_sinter_bench.py measures. Two figures per task:

- build: `qecd.Decoder.from_dem(dem, decoder="correlated", num_threads=1)`
  against `pymatching.Matching.from_detector_error_model(dem,
  enable_correlations=True)`;
- build + first shot: each then decodes one shot with no detection events.
  PyMatching builds its blossom structures (and, when correlated, its search
  graph) on the first decode; qecd builds them with the decoder. This is the
  cost a sinter worker sees before its first batch.

Each figure is the best of --repeats runs of each, alternating which goes
first, in process-CPU time (what a loaded machine disturbs least). The
tasks are the zoo fixture circuits (rotated Z memory, SI1000 p=0.003, d
rounds), as in python_sinter_bench.py.

    . scripts/torch-env && pip install ./python
    python scripts/python_build_time.py > docs/data/python/build_time.txt
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np
import pymatching
import stim

import qecd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def best_cpu_ms(runs: dict, repeats: int) -> dict[str, float]:
    best = {name: float("inf") for name in runs}
    names = list(runs)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.process_time()
            runs[name]()
            best[name] = min(best[name], time.process_time() - start)
    return {name: 1e3 * s for name, s in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--distances", default="5,7,9", help="comma-separated fixture distances (default 5,7,9)")
    ap.add_argument("--repeats", type=int, default=15, help="runs of each figure per decoder (default 15)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    distances = [int(d) for d in args.distances.split(",")]

    print(f"# decoder build time, best of {args.repeats} (process CPU ms, one thread); {os.cpu_count()} cores")
    print(f"# qecd {qecd.__version__}, pymatching {pymatching.__version__}, stim {stim.__version__}")
    print(f"{'d':>3} {'figure':<20} {'qecd ms':>9} {'pymatching ms':>14} {'qecd / pymatching':>18}")
    for d in distances:
        path = ROOT / "fixtures" / "models" / f"d{d}_z_si1000_p003.fixture.stim"
        dem = stim.Circuit.from_file(path).detector_error_model(decompose_errors=True)
        zero = np.zeros((1, (dem.num_detectors + 7) // 8), dtype=np.uint8)

        def qecd_build():
            return qecd.Decoder.from_dem(dem, decoder="correlated", num_threads=1)

        def pymatching_build():
            return pymatching.Matching.from_detector_error_model(dem, enable_correlations=True)

        def qecd_first():
            qecd_build().decode_batch(zero, bit_packed=True)

        def pymatching_first():
            pymatching_build().decode_batch(
                zero, bit_packed_shots=True, bit_packed_predictions=True, enable_correlations=True
            )

        for figure, runs in [
            ("build", {"qecd": qecd_build, "pymatching": pymatching_build}),
            ("build + first shot", {"qecd": qecd_first, "pymatching": pymatching_first}),
        ]:
            ms = best_cpu_ms(runs, args.repeats)
            ratio = ms["qecd"] / ms["pymatching"]
            print(f"{d:>3} {figure:<20} {ms['qecd']:>9.2f} {ms['pymatching']:>14.2f} {ratio:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
