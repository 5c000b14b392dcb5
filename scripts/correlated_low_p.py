#!/usr/bin/env python3
"""PyMatching's own correlated matching against its plain matching on one
circuit, in Python, so that a finding about correlated matching can be told
apart from a qecd bug.

    qecd sample -d 3 -r 25 --p 0.0003 --shots 1 --out /tmp/x.b8 --circuit-out /tmp/c.stim
    ~/.cache/qecd/pyenv/bin/python scripts/correlated_low_p.py /tmp/c.stim [SHOTS]

Prints the error count of each on the same Stim-sampled shots (seed 5).
"""
import sys

import numpy as np
import pymatching
import stim


def main() -> None:
    circuit = stim.Circuit.from_file(sys.argv[1])
    shots = int(sys.argv[2]) if len(sys.argv) > 2 else 300_000
    dem = circuit.detector_error_model(decompose_errors=True)
    dets, obs = circuit.compile_detector_sampler(seed=5).sample(shots, separate_observables=True)
    print(f"pymatching {pymatching.__version__}, stim {stim.__version__}")
    for correlated in (False, True):
        m = pymatching.Matching.from_detector_error_model(dem, enable_correlations=correlated)
        wrong = int(np.any(m.decode_batch(dets, enable_correlations=correlated) != obs, axis=1).sum())
        print(f"{'correlated' if correlated else 'matching':<10} {wrong} errors / {shots}")


if __name__ == "__main__":
    main()
