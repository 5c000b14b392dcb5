#!/usr/bin/env python3
"""Issue 17's agreement check: the same tasks swept by `qecd sweep` (the CLI,
its own threads) and by `qecd.sweep` on a 2-worker Dask LocalCluster give the
same error counts, within statistical agreement.

Each runs into its own sinter CSV for exactly --shots shots per task (no
error limit, so neither stops early on a lucky run). The tasks are
`qecd.sweep_tasks`, the cases `qecd sweep` itself makes (same circuits and
strong ids). Per task, the two error counts are compared with a two-sided
two-proportion z-test; the script prints the table and exits 1 when any |z|
exceeds --z-max (default 3.5: with a dozen tasks, an honest pair passes all
of them with probability about 0.994).

    . scripts/torch-env && pip install ./python
    python scripts/python_sweep_agreement.py > docs/data/python/sweep_agreement.txt
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import sinter

import qecd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def z_score(e1: int, n1: int, e2: int, n2: int) -> float:
    """Two-proportion z statistic with the pooled rate (0 when both rates are 0)."""
    pooled = (e1 + e2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    return 0.0 if var == 0 else (e1 / n1 - e2 / n2) / math.sqrt(var)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decoders", default="matching,correlated")
    ap.add_argument("--distances", default="3,5,7")
    ap.add_argument("--p", default="0.003,0.005")
    ap.add_argument("--shots", type=int, default=200_000, help="shots per task, for each of the two sweeps")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--z-max", type=float, default=3.5)
    a = ap.parse_args()
    qecd_bin = os.environ.get("QECD", str(ROOT / "target" / "release" / "qecd"))
    decoders = a.decoders.split(",")
    distances = [int(d) for d in a.distances.split(",")]
    ps = [float(p) for p in a.p.split(",")]
    tasks = qecd.sweep_tasks(decoders, distances=distances, ps=ps)

    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        cli_csv, dask_csv = pathlib.Path(tmp) / "cli.csv", pathlib.Path(tmp) / "dask.csv"
        t0 = time.perf_counter()
        subprocess.run(
            [qecd_bin, "sweep", "--decoders", a.decoders, "--distances", a.distances, "--p", a.p,
             "--max-shots", str(a.shots), "--max-errors", str(a.shots), "--out", str(cli_csv)],
            check=True, stdout=subprocess.DEVNULL,
        )
        cli_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True) as cluster, \
                Client(cluster) as client:
            qecd.sweep(tasks, out=dask_csv, max_shots=a.shots, client=client)
        dask_s = time.perf_counter() - t0
        cli = {s.strong_id: s for s in sinter.read_stats_from_csv_files(cli_csv)}
        dask = {s.strong_id: s for s in sinter.read_stats_from_csv_files(dask_csv)}

    print(f"{len(tasks)} tasks, {a.shots} shots each: `qecd sweep` ({cli_s:.0f} s) against "
          f"qecd.sweep on a {a.workers}-worker LocalCluster ({dask_s:.0f} s)\n")
    print(f"{'decoder':<11} {'d':>2} {'p':>6} {'qecd sweep':>17} {'LocalCluster':>17} {'z':>6}")
    worst = 0.0
    for t in tasks:
        c, k = cli.get(t.strong_id), dask.get(t.strong_id)
        if c is None or k is None:
            print(f"task {t.strong_id[:12]} is missing from the {'CLI' if c is None else 'Dask'} CSV",
                  file=sys.stderr)
            return 1
        m = c.json_metadata
        z = z_score(c.errors, c.shots, k.errors, k.shots)
        worst = max(worst, abs(z))
        print(f"{t.decoder:<11} {m['d']:>2} {m['p']:>6} {c.errors:>8}/{c.shots:<8} {k.errors:>8}/{k.shots:<8} {z:>+6.2f}")
    verdict = "agree" if worst <= a.z_max else "DISAGREE"
    print(f"\nlargest |z| {worst:.2f} (limit {a.z_max}): the two sweeps {verdict}")
    return 0 if worst <= a.z_max else 1


if __name__ == "__main__":
    sys.exit(main())
