#!/usr/bin/env python3
"""Accuracy and speed of a qecd decoder against the Python `beliefmatching`
package (0.2.0: ldpc's BP, then PyMatching), decoding the same shots.

- Shots: `qecd sample` makes the circuit (SI1000, Z memory), its detection
  events (b8) and the observable flips (01) with one seed.
- Python: `BeliefMatching.from_detector_error_model(dem, max_bp_iters=B)` on the
  circuit's DEM with decompose_errors=True (bp_method product_sum, the package
  default), then `decode_batch` on the first --python-shots shots.
- qecd: `qecd predict --circuit C --decoder D --threads 1` on a b8 file holding
  the same first --python-shots shots, and again on all shots for its LER there.

Both are scored on the common shots: errors and logical error rate (LER) with
a binomial standard error, the shots on which the two disagree, and McNemar's
test that the two LERs are equal: b shots only Python gets wrong, c only qecd
gets wrong, z = (b - c) / sqrt(b + c), two-sided p from the normal tail.

Speed is shots per second on the common shots. qecd is timed end to end as a
process (start-up, building the DEM and graph, reading and writing files);
Python is timed around `decode_batch` only, after the decoder is built, which
favours Python. Both run on one thread. The ratio printed is qecd / Python
(higher is better for qecd).

Usage: scripts/compare_belief.sh [--distance 5] [--rounds R] [--p 0.003]
  [--shots 20000] [--seed 1] [--python-shots N] [--decoder belief]
  [--bp-iters 20] [--json-out PATH]
"""
import argparse
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np
import stim
from beliefmatching import BeliefMatching

import compare_common
from compare_common import failures, mcnemar, rate, sample_shots

fail = functools.partial(compare_common.fail, "compare_belief")
run = functools.partial(compare_common.run, "compare_belief")
timed_run = functools.partial(compare_common.timed_run, "compare_belief")

ROOT = pathlib.Path(__file__).resolve().parent.parent
QECD = ROOT / "target" / "release" / "qecd"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--distance", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=None, help="default: the distance")
    ap.add_argument("--p", type=float, default=0.003)
    ap.add_argument("--shots", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--python-shots", type=int, default=None,
                    help="decode only the first N shots in Python, and compare both on those (default: all)")
    ap.add_argument("--decoder", default="belief", help="the qecd decoder to compare")
    ap.add_argument("--bp-iters", type=int, default=20)
    ap.add_argument("--json-out", type=pathlib.Path)
    a = ap.parse_args()
    d = a.distance
    r = a.rounds if a.rounds is not None else d
    n = a.shots
    m = min(a.python_shots if a.python_shots is not None else n, n)
    if n < 1 or m < 1:
        fail("--shots and --python-shots must be at least 1")
    if not QECD.is_file():
        fail(f"{QECD} is missing; build it with `cargo build --release --bin qecd`")

    with tempfile.TemporaryDirectory(prefix="qecd-belief-") as tmp:
        tmp = pathlib.Path(tmp)
        circuit, circuit_path, dets_path, dets, obs = sample_shots(
            "compare_belief", QECD, tmp, d, r, a.p, n, a.seed)
        num_dets, num_obs = circuit.num_detectors, circuit.num_observables
        common_path = tmp / "common.b8"
        stim.write_shot_data_file(data=dets[:m], path=str(common_path), format="b8", num_detectors=num_dets)

        # Python beliefmatching on the first m shots.
        dem = circuit.detector_error_model(decompose_errors=True)
        bm = BeliefMatching.from_detector_error_model(dem, max_bp_iters=a.bp_iters)
        syndromes = dets[:m].astype(np.uint8)
        start = time.perf_counter()
        py_pred = bm.decode_batch(syndromes)
        t_py = time.perf_counter() - start

        # qecd on the same m shots, then on all n.
        bp_flags = ["--bp-iters", a.bp_iters] if a.decoder == "belief" else []

        def predict(in_path, out_path):
            return timed_run([QECD, "predict", "--circuit", circuit_path, "--in", in_path, "--in-format", "b8",
                              "--out", out_path, "--decoder", a.decoder, "--threads", "1", *bp_flags])

        def read_predictions(path, shots):
            pred = stim.read_shot_data_file(path=str(path), format="01", num_observables=num_obs)
            if len(pred) != shots:
                fail(f"qecd predict wrote {len(pred)} predictions for {shots} shots ({path.name})")
            return pred

        t_q = predict(common_path, tmp / "pred_common.01")
        q_pred = read_predictions(tmp / "pred_common.01", m)
        if m < n:
            predict(dets_path, tmp / "pred_all.01")
            q_pred_all = read_predictions(tmp / "pred_all.01", n)
        else:
            q_pred_all = q_pred

    truth = obs[:m]
    py_wrong, q_wrong = failures(py_pred, truth), failures(q_pred, truth)
    py_errors, q_errors = int(py_wrong.sum()), int(q_wrong.sum())
    q_errors_all = int(failures(q_pred_all, obs).sum())
    py_ler, py_se = rate(py_errors, m)
    q_ler, q_se = rate(q_errors, m)
    q_ler_all, q_se_all = rate(q_errors_all, n)
    disagree = int(np.any(py_pred != q_pred, axis=1).sum())
    only_py = int((py_wrong & ~q_wrong).sum())
    only_q = int((q_wrong & ~py_wrong).sum())
    z, p_value = mcnemar(only_py, only_q)
    py_sps, q_sps = m / t_py, m / t_q
    versions = {name: importlib.metadata.version(name) for name in ("beliefmatching", "ldpc", "pymatching", "stim")}

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"d={d}, rounds={r}, SI1000 p={a.p}, seed {a.seed}; {m} common shots of {n}; "
          f"beliefmatching {versions['beliefmatching']} (ldpc {versions['ldpc']}, "
          f"pymatching {versions['pymatching']}), max_bp_iters={a.bp_iters}, product_sum; "
          f"qecd predict --decoder {a.decoder} --threads 1.\n")
    print("| d | r | p | common shots | qecd decoder | qecd errors | qecd LER | beliefmatching errors "
          "| beliefmatching LER | disagree | only Python wrong / only qecd wrong | McNemar z (p) "
          "| qecd shots/s | Python shots/s | speed qecd/Python | qecd LER, all shots |")
    print("|" + "---|" * 16)
    print(f"| {d} | {r} | {a.p} | {m} | {a.decoder} | {q_errors} | {q_ler:.2e} ± {q_se:.1e} | {py_errors} "
          f"| {py_ler:.2e} ± {py_se:.1e} | {disagree} | {only_py} / {only_q} | {z:+.2f} ({p_value:.3f}) "
          f"| {q_sps:.0f} | {py_sps:.0f} | {q_sps / py_sps:.1f}x | {q_ler_all:.2e} ± {q_se_all:.1e} ({n}) |")

    if a.json_out:
        report = {
            "distance": d, "rounds": r, "p": a.p, "noise": "si1000", "basis": "z", "seed": a.seed,
            "shots": n, "common_shots": m, "qecd_decoder": a.decoder, "bp_iters": a.bp_iters,
            "bp_method": "product_sum", "versions": versions,
            "qecd": {"errors": q_errors, "ler": q_ler, "ler_se": q_se, "seconds": t_q, "shots_per_s": q_sps,
                     "all_shots": {"shots": n, "errors": q_errors_all, "ler": q_ler_all, "ler_se": q_se_all}},
            "python": {"errors": py_errors, "ler": py_ler, "ler_se": py_se, "seconds": t_py, "shots_per_s": py_sps},
            "disagree": disagree, "only_python_wrong": only_py, "only_qecd_wrong": only_q,
            "mcnemar_z": z, "mcnemar_p": p_value, "speed_ratio_qecd_over_python": q_sps / py_sps,
        }
        a.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
