#!/usr/bin/env python3
"""Speed of qecd against its Python peers, measured in one run on the same data.

- Sampling: `qecd sample --circuit C` against Python Stim's
  `compile_detector_sampler(seed).sample(N, separate_observables=True, bit_packed=True)`
  followed by writing the same b8/01 files.
- Decoding: `qecd predict --dem M --in dets.b8` against Python PyMatching's
  `Matching.from_detector_error_model(dem).decode_batch(dets, bit_packed_shots=True, ...)`.

qecd is timed end to end as a process (start-up, parsing, graph building,
reading and writing files included). Python is timed around the library calls
only, inside an already-running interpreter, which favours Python. Each
measurement is the best of --repeats runs. The throughput ratio printed is
qecd / Python (higher is better for qecd); --threads 1 is the like-for-like
figure, since both Python calls are single-threaded.

Usage: scripts/compare_python.sh [--distance 5] [--shots 200000] [--repeats 3]
"""
import argparse
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import pymatching
import stim

ROOT = pathlib.Path(__file__).resolve().parent.parent
QECD = ROOT / "target" / "release" / "qecd"


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--distance", type=int, default=5)
    ap.add_argument("--shots", type=int, default=200_000)
    ap.add_argument("--p", type=float, default=0.003)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    d, n = a.distance, a.shots
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qecd-compare-"))
    circuit_path, dem_path = tmp / "c.stim", tmp / "m.dem"
    dets_path, obs_path = tmp / "dets.b8", tmp / "obs.01"
    run([QECD, "sample", "-d", str(d), "-r", str(d), "--noise", "si1000", "--p", str(a.p), "--shots", str(n),
         "--seed", "1", "--out", dets_path, "--obs-out", obs_path, "--circuit-out", circuit_path, "--dem-out", dem_path])
    circuit = stim.Circuit.from_file(str(circuit_path))
    dem = stim.DetectorErrorModel.from_file(str(dem_path))
    rows = []

    # Sampling.
    py_dets, py_obs = tmp / "py_dets.b8", tmp / "py_obs.01"

    def py_sample():
        sampler = circuit.compile_detector_sampler(seed=1)
        dets, obs = sampler.sample(n, separate_observables=True, bit_packed=True)
        dets.tofile(py_dets)
        stim.write_shot_data_file(data=obs, path=str(py_obs), format="01", num_observables=circuit.num_observables)

    t_py = best_of(a.repeats, py_sample)
    for threads in (1, 0):
        t_q = best_of(a.repeats, lambda: run([QECD, "sample", "--circuit", circuit_path, "--shots", str(n), "--seed", "1",
                                             "--threads", str(threads), "--out", tmp / "q_dets.b8", "--obs-out", tmp / "q_obs.01"]))
        rows.append(("sampling", f"qecd sample --threads {threads or os.cpu_count()}", "Python Stim sample",
                     t_q, t_py, t_py / t_q))

    # Decoding.
    dets = np.fromfile(dets_path, dtype=np.uint8).reshape(n, -1)
    for name, correlated in (("matching", False), ("correlated", True)):
        kwargs = {"enable_correlations": True} if correlated else {}

        def py_decode():
            m = pymatching.Matching.from_detector_error_model(dem, **kwargs)
            m.decode_batch(dets, bit_packed_shots=True, bit_packed_predictions=True, **kwargs)

        t_py = best_of(a.repeats, py_decode)
        for threads in (1, 0):
            t_q = best_of(a.repeats, lambda: run([QECD, "predict", "--dem", dem_path, "--in", dets_path, "--in-format", "b8",
                                                 "--out", tmp / "pred.01", "--decoder", name, "--threads", str(threads)]))
            rows.append((f"decoding ({name})", f"qecd predict --threads {threads or os.cpu_count()}",
                         f"PyMatching {pymatching.__version__} decode_batch", t_q, t_py, t_py / t_q))

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"d={d}, rounds={d}, SI1000 p={a.p}, {n} shots; stim {stim.__version__}, pymatching {pymatching.__version__}; "
          f"best of {a.repeats}.\n")
    print("| task | qecd | peer | qecd s | peer s | throughput ratio qecd/peer |")
    print("|---|---|---|---|---|---|")
    for task, q, peer, tq, tp, ratio in rows:
        print(f"| {task} | `{q}` | {peer} | {tq:.3f} | {tp:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
