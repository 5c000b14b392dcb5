#!/usr/bin/env python3
"""The device loop's decoders beside belief-matching and Tesseract (Google's
most-likely-error decoder), on the same fresh device shots.

Reads what scripts/device_loop.sh left in its work folder (WORK, default
target/device-loop): the d=3 test shots, the lab's prior circuit, the
learned DEM, the device's true circuit and the two neural models. Takes the
first --shots test shots (Tesseract is slow) and scores on them:
correlated matching and belief-matching with the prior, learned and true
DEMs (`qecd predict`), Tesseract with the true DEM (the best decoder this
machine can run with the best noise model there is) and with the prior's,
and the pretrained and fine-tuned neural models. Tesseract uses the
package's `tesseract` sinter preset (compare_tesseract.py's default), on
its own undecomposed DEM.

    QECD=target/release/qecd scripts/compare_tesseract.sh --help >/dev/null  # sets up the venv once
    ~/.cache/qecd/pyenv/bin/python scripts/device_loop_baselines.py [--shots 10000]
    DEVICE=fixtures/devices/crosstalk-strong.toml WORK=target/device-loop-strong \\
      ~/.cache/qecd/pyenv/bin/python scripts/device_loop_baselines.py > docs/data/device_loop_strong_baselines.txt
"""
import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np
import stim

import compare_common
import compare_tesseract

ROOT = pathlib.Path(__file__).resolve().parent.parent
WHO = "device_loop_baselines"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=int, default=10_000)
    ap.add_argument("--work", default=os.environ.get("WORK", str(ROOT / "target" / "device-loop")))
    ap.add_argument("--device", default=os.environ.get("DEVICE", "fixtures/devices/crosstalk.toml"),
                    help="the device file the work folder's shots came from (only named in the output)")
    a = ap.parse_args()
    qecd = os.environ.get("QECD", str(ROOT / "target" / "release" / "qecd"))
    work = pathlib.Path(a.work)
    test, prior = work / "test-d3", work / "exp-d3" / "circuit_noisy.stim"
    true_circuit = stim.Circuit.from_file(str(work / "true-d3.stim"))
    n_det = true_circuit.num_detectors
    dets = stim.read_shot_data_file(path=str(test / "detection_events.b8"), format="b8", num_detectors=n_det)[:a.shots]
    obs = stim.read_shot_data_file(path=str(test / "obs_flips_actual.01"), format="01", num_observables=1)[:a.shots]
    n = len(dets)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        stim.write_shot_data_file(data=dets, path=str(tmp / "d.b8"), format="b8", num_detectors=n_det)
        rows = []

        def qecd_row(name, source, decoder, model=None):
            cmd = [qecd, "predict", *source, "--in", tmp / "d.b8", "--out", tmp / "p.01", "--decoder", decoder]
            if model:
                cmd += ["--model", model]
            compare_common.run(WHO, cmd)
            pred = stim.read_shot_data_file(path=str(tmp / "p.01"), format="01", num_observables=1)
            rows.append((name, compare_common.failures(pred, obs)))

        for label, source in [("prior", ["--circuit", prior]), ("learned", ["--dem", work / "learned-d3.dem"]),
                              ("true", ["--circuit", work / "true-d3.stim"])]:
            qecd_row(f"correlated matching, {label} DEM", source, "correlated")
            qecd_row(f"belief-matching, {label} DEM", source, "belief")
        qecd_row("neural, pretrained", ["--circuit", prior], "neural",
                 ROOT / "fixtures" / "models" / "d3_z_si1000_p003.safetensors")
        qecd_row("neural, fine-tuned", ["--circuit", prior], "neural", work / "finetuned-d3.safetensors")
        settings = compare_tesseract.tesseract_settings("tesseract", "")
        for label, circuit in [("prior", stim.Circuit.from_file(str(prior))), ("true", true_circuit)]:
            dem = circuit.detector_error_model(decompose_errors=False, flatten_loops=True)
            decoder = compare_tesseract.build_tesseract(dem, settings)
            pred, _ = compare_tesseract.decode_with_progress(decoder, dets)
            rows.append((f"Tesseract, {label} DEM", compare_common.failures(pred, obs)))

    base = dict(rows)["correlated matching, prior DEM"]
    pre = dict(rows)["neural, pretrained"]
    print(f"d=3, 10 rounds, the first {n} of scripts/device_loop.sh's fresh device shots "
          f"({a.device}, p=0.003)\n")
    print(f"{'decoder':<34} {'errors':>7} {'LER':>9} {'± 1σ':>8} {'÷ prior corr.':>14} {'÷ pretrained':>13}")
    for name, wrong in rows:
        ler, sigma = compare_common.rate(int(wrong.sum()), n)
        print(f"{name:<34} {int(wrong.sum()):>7} {ler:>9.4f} {sigma:>8.4f} {wrong.sum() / base.sum():>14.3f} {wrong.sum() / pre.sum():>13.3f}")
    tess = dict(rows)["Tesseract, true DEM"]
    print("\nMcNemar against Tesseract with the true DEM (b: only Tesseract wrong, c: only the other wrong):")
    for name, wrong in rows:
        b, c = int((tess & ~wrong).sum()), int((~tess & wrong).sum())
        z, p = compare_common.mcnemar(b, c)
        print(f"  {name:<34} b={b:>5} c={c:>5} z={z:+.2f} p={p:.2g}")


if __name__ == "__main__":
    sys.exit(main())
