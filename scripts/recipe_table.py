#!/usr/bin/env python3
"""Tabulates training logs (qecd train's .train.csv) as Markdown: for each log,
its last evaluation and, per held-out case, the neural errors over correlated
matching's on the same shots, plus the same ratio at the largest number of
samples every log reached (so runs of different lengths compare at equal
samples).

    python3 scripts/recipe_table.py docs/data/recipe/d3_*.train.csv
"""
import csv
import pathlib
import sys


def read(path):
    rows = [r for r in csv.DictReader(open(path)) if r.get("baseline_errors")]
    evals = {}
    for r in rows:
        evals.setdefault(int(r["samples"]), {})[r["case"]] = (int(r["errors"]), int(r["baseline_errors"]))
    return evals


def main(paths):
    logs = {pathlib.Path(p).name.removesuffix(".train.csv"): read(p) for p in paths}
    logs = {k: v for k, v in logs.items() if v}
    if not logs:
        sys.exit("no usable logs")
    common = min(max(v) for v in logs.values())
    cases = sorted({c for v in logs.values() for e in v.values() for c in e}, key=lambda c: int(c.split("=")[1]))

    def ratio(e):
        return f"{e[0] / e[1]:.3f}" if e else "–"

    def at(evals, samples):
        best = max((s for s in evals if s <= samples), default=None)
        return evals.get(best, {}) if best is not None else {}

    head = ["run", "samples"] + [f"{c} at end" for c in cases] + [f"{c} at {common:,}" for c in cases]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, evals in logs.items():
        last = max(evals)
        cells = [name, f"{last:,}"]
        cells += [ratio(evals[last].get(c)) for c in cases]
        cells += [ratio(at(evals, common).get(c)) for c in cases]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
