#!/usr/bin/env python3
"""Accuracy of Tesseract, Google's most-likely-error decoder (A* search over
error sets; PyPI `tesseract-decoder`), beside qecd's decoders on the same shots.

- Shots: `qecd sample` makes the circuit (Z memory, SI1000 at --p), its
  detection events (b8) and the observable flips (01) with one seed.
- Tesseract: `TesseractConfig(dem=..., ...).compile_decoder()` on the circuit's
  DEM built as Tesseract's own command line builds it: decompose_errors=False
  (Tesseract searches over whole hyperedges, so decomposing buys nothing),
  loops flattened; identical errors merged (merge_errors=True). The settings
  come from one of the package's sinter presets (--tesseract-preset, default
  `tesseract`, which is the paper's long-beam setup: det_beam 20, beam
  climbing, no revisits, pqlimit 1e6, 21 DetIndex detector orders with the
  package's seed), and --tesseract-args overrides any of them. `decode_batch`
  on one thread, in chunks so that progress reaches stderr every 10%.
- qecd: `qecd predict --circuit C --in dets.b8 --decoder X --threads 1` for
  each --decoders entry; `neural` reads --model-dir/d{D}_z_si1000_p003.safetensors.
  Correlated matching always runs, as the baseline.

All decoders are scored on the same shots: errors and logical error rate (LER)
with a binomial standard error, errors / correlated matching's errors, and
McNemar's test of Tesseract against each qecd decoder: b shots only Tesseract
gets wrong, c only the other gets wrong, z = (b - c) / sqrt(b + c) (negative:
Tesseract is better), two-sided p from the normal tail.

Speed, in shots per second on one thread: Tesseract is timed around its
decode calls only, after the decoder is built; qecd is timed end to end as a
process (start-up, building the DEM and graph or loading the model, reading
and writing files), which disfavours qecd.

Usage: scripts/compare_tesseract.sh [--distance 3] [--rounds R] [--p 0.003]
  [--shots 20000] [--seed 1] [--decoders correlated,belief,neural-matching]
  [--model-dir fixtures/models] [--tesseract-preset tesseract]
  [--tesseract-args "det_beam=15 num_det_orders=16"] [--json-out PATH]
"""
import argparse
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
import stim
import tesseract_decoder
from tesseract_decoder import tesseract, utils

import compare_common
from compare_common import failures, mcnemar, rate, sample_shots

fail = functools.partial(compare_common.fail, "compare_tesseract")
run = functools.partial(compare_common.run, "compare_tesseract")
timed_run = functools.partial(compare_common.timed_run, "compare_tesseract")

ROOT = pathlib.Path(__file__).resolve().parent.parent
QECD = pathlib.Path(os.environ.get("QECD", ROOT / "target" / "release" / "qecd"))
BASELINE = "correlated"

# TesseractConfig's settings, with the type each --tesseract-args value is read as.
CONFIG_KEYS = {
    "det_beam": int, "beam_climbing": bool, "no_revisit_dets": bool, "merge_errors": bool,
    "pqlimit": int, "det_penalty": float, "sparsify_errors": bool, "sparsify_base_degree": int,
    "sparsify_max_degree": int, "sparsify_reactivate_limit": int,
}
# Settings that shape the detector orders (utils.build_det_orders) rather than the config.
ORDER_KEYS = {"num_det_orders": int, "det_order_method": str, "seed": int}


def parse_value(key, kind, text):
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        fail(f"--tesseract-args: {key}={text} is not a boolean (true or false)")
    try:
        return kind(text)
    except ValueError:
        fail(f"--tesseract-args: {key}={text} is not {kind.__name__}")


def tesseract_settings(preset, overrides):
    """The preset's settings from the package's sinter dictionary, then the
    `key=value` overrides (space- or comma-separated)."""
    presets = tesseract_decoder.make_tesseract_sinter_decoders_dict()
    if preset not in presets:
        fail(f"--tesseract-preset {preset} is not one of {', '.join(sorted(presets))}")
    base = presets[preset]
    settings = {key: getattr(base, key) for key in (*CONFIG_KEYS, *ORDER_KEYS)}
    settings["det_order_method"] = base.det_order_method.name
    for item in (overrides or "").replace(",", " ").split():
        key, sep, text = item.partition("=")
        kind = CONFIG_KEYS.get(key) or ORDER_KEYS.get(key)
        if not sep or kind is None:
            fail(f"--tesseract-args: {item!r} is not key=value with a key among "
                 f"{', '.join([*CONFIG_KEYS, *ORDER_KEYS])}")
        settings[key] = parse_value(key, kind, text)
    if settings["det_order_method"] not in utils.DetOrder.__members__:
        fail(f"--tesseract-args: det_order_method {settings['det_order_method']} is not one of "
             f"{', '.join(utils.DetOrder.__members__)}")
    return settings


def build_tesseract(dem, settings):
    det_orders = utils.build_det_orders(
        dem, settings["num_det_orders"], utils.DetOrder.__members__[settings["det_order_method"]],
        settings["seed"])
    config = tesseract.TesseractConfig(dem=dem, det_orders=det_orders,
                                       **{key: settings[key] for key in CONFIG_KEYS})
    return config.compile_decoder()


def decode_with_progress(decoder, dets):
    """Tesseract's predictions for every shot, and the seconds spent in its
    decode calls; reports progress on stderr every 10%."""
    n = len(dets)
    chunk = max(1, n // 100)
    parts, spent, next_report = [], 0.0, 10
    for begin in range(0, n, chunk):
        part = dets[begin:begin + chunk]
        start = time.perf_counter()
        parts.append(np.asarray(decoder.decode_batch(part), dtype=bool))
        spent += time.perf_counter() - start
        done = begin + len(part)
        while done * 100 >= next_report * n and next_report <= 100:
            print(f"compare_tesseract: Tesseract {next_report}% ({done}/{n} shots, {spent:.1f} s, "
                  f"{done / spent:.0f} shots/s)", file=sys.stderr, flush=True)
            next_report += 10
    return np.concatenate(parts), spent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--distance", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None, help="default: the distance")
    ap.add_argument("--p", type=float, default=0.003)
    ap.add_argument("--shots", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--decoders", default="correlated,belief,neural-matching",
                    help="qecd decoders, comma-separated; `neural` reads a model from --model-dir")
    ap.add_argument("--model-dir", type=pathlib.Path, default=ROOT / "fixtures" / "models")
    ap.add_argument("--tesseract-preset", default="tesseract",
                    help="a name from tesseract_decoder.make_tesseract_sinter_decoders_dict()")
    ap.add_argument("--tesseract-args", default="",
                    help="overrides, e.g. 'det_beam=15 num_det_orders=16 pqlimit=200000'")
    ap.add_argument("--json-out", type=pathlib.Path)
    a = ap.parse_args()
    d = a.distance
    r = a.rounds if a.rounds is not None else d
    n = a.shots
    if n < 1:
        fail("--shots must be at least 1")
    if not QECD.is_file():
        fail(f"{QECD} is missing; build it with `cargo build --release --bin qecd`, or point $QECD at a qecd binary")
    decoders = [x for x in a.decoders.split(",") if x]
    if BASELINE not in decoders:
        decoders.insert(0, BASELINE)
    model = a.model_dir / f"d{d}_z_si1000_p003.safetensors"
    if "neural" in decoders and not model.is_file():
        fail(f"--decoders has neural but {model} is missing")
    settings = tesseract_settings(a.tesseract_preset, a.tesseract_args)

    with tempfile.TemporaryDirectory(prefix="qecd-tesseract-") as tmp:
        tmp = pathlib.Path(tmp)
        circuit, circuit_path, dets_path, dets, obs = sample_shots(
            "compare_tesseract", QECD, tmp, d, r, a.p, n, a.seed)
        num_obs = circuit.num_observables

        # qecd first: it is quick, and a failure shows before Tesseract's long run.
        predictions, seconds = {}, {}
        for name in decoders:
            out = tmp / f"pred_{name}.01"
            model_flags = ["--model", model] if name == "neural" else []
            seconds[name] = timed_run([QECD, "predict", "--circuit", circuit_path, "--in", dets_path,
                                       "--in-format", "b8", "--out", out, "--decoder", name,
                                       "--threads", "1", *model_flags])
            pred = stim.read_shot_data_file(path=str(out), format="01", num_observables=num_obs)
            if len(pred) != n:
                fail(f"qecd predict --decoder {name} wrote {len(pred)} predictions for {n} shots")
            predictions[name] = pred

        dem = circuit.detector_error_model(decompose_errors=False, flatten_loops=True)
        start = time.perf_counter()
        decoder = build_tesseract(dem, settings)
        t_build = time.perf_counter() - start
        t_pred, t_decode = decode_with_progress(decoder, dets)

    t_wrong = failures(t_pred, obs)
    t_errors = int(t_wrong.sum())
    base_errors = int(failures(predictions[BASELINE], obs).sum())

    def ratio(errors):
        return errors / base_errors if base_errors else float("nan")

    t_ler, t_se = rate(t_errors, n)
    rows = [{"decoder": "tesseract", "errors": t_errors, "ler": t_ler, "ler_se": t_se,
             "errors_over_correlated": ratio(t_errors), "seconds": t_decode, "shots_per_s": n / t_decode,
             "build_seconds": t_build}]
    for name in decoders:
        wrong = failures(predictions[name], obs)
        errors = int(wrong.sum())
        ler, se = rate(errors, n)
        only_t, only_q = int((t_wrong & ~wrong).sum()), int((wrong & ~t_wrong).sum())
        z, p_value = mcnemar(only_t, only_q)
        rows.append({"decoder": name, "errors": errors, "ler": ler, "ler_se": se,
                     "errors_over_correlated": ratio(errors), "seconds": seconds[name],
                     "shots_per_s": n / seconds[name],
                     "disagree_with_tesseract": int(np.any(predictions[name] != t_pred, axis=1).sum()),
                     "only_tesseract_wrong": only_t, "only_this_wrong": only_q,
                     "mcnemar_z": z, "mcnemar_p": p_value})

    versions = {name: importlib.metadata.version(name) for name in ("tesseract-decoder", "stim", "numpy")}
    versions["qecd"] = run([QECD, "--version"]).strip()
    shown = " ".join(f"{k}={v}" for k, v in settings.items())
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"d={d}, rounds={r}, Z memory, SI1000 p={a.p}, seed {a.seed}, {n} shots. "
          f"Tesseract: tesseract-decoder {versions['tesseract-decoder']}, preset `{a.tesseract_preset}`"
          f"{' with ' + a.tesseract_args if a.tesseract_args else ''} ({shown}), DEM decompose_errors=False, "
          f"one thread, timed around decode_batch ({t_build:.2f} s to build it). "
          f"qecd: `qecd predict --threads 1`, timed as a process"
          f"{f'; neural model {model.name}' if 'neural' in decoders else ''}.\n")
    print("| decoder | errors | LER | errors ÷ correlated | only Tesseract wrong / only this wrong "
          "| McNemar z (p) | shots/s |")
    print("|" + "---|" * 7)
    for row in rows:
        if row["decoder"] == "tesseract":
            versus = "— | —"
        else:
            versus = (f"{row['only_tesseract_wrong']} / {row['only_this_wrong']} "
                      f"| {row['mcnemar_z']:+.2f} ({row['mcnemar_p']:.3f})")
        print(f"| {row['decoder']} | {row['errors']} | {row['ler']:.2e} ± {row['ler_se']:.1e} "
              f"| {row['errors_over_correlated']:.3f} | {versus} | {row['shots_per_s']:.0f} |")

    if a.json_out:
        report = {
            "distance": d, "rounds": r, "p": a.p, "noise": "si1000", "basis": "z", "seed": a.seed, "shots": n,
            "versions": versions, "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "tesseract": {"preset": a.tesseract_preset, "args": a.tesseract_args, "settings": settings,
                          "dem": "decompose_errors=False, flatten_loops=True"},
            "neural_model": str(model.relative_to(ROOT)) if "neural" in decoders and model.is_relative_to(ROOT)
            else (str(model) if "neural" in decoders else None),
            "baseline": BASELINE, "decoders": rows,
        }
        a.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
