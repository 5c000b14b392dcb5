"""qecd.sweep on a 2-worker Dask LocalCluster: the sinter CSV, resuming, the
stopping rules, and the rows `qecd sweep` writes."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

sinter = pytest.importorskip("sinter", reason="sinter is not installed (scripts/torch-env installs it)")
distributed = pytest.importorskip("distributed", reason="distributed is not installed (scripts/torch-env installs it)")

import qecd  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def _totals(path: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {s.strong_id: (s.shots, s.errors) for s in sinter.read_stats_from_csv_files(path)}


def test_interrupted_sweep_resumes_to_exact_totals(client, tmp_path: pathlib.Path) -> None:
    tasks = qecd.sweep_tasks(["matching", "correlated"], [3, 5], ps=[0.003])
    out = tmp_path / "stats.csv"
    # Interrupted after 5 batches of 2,000 shots.
    first = qecd.sweep(tasks, out=out, max_shots=12_000, batch_shots=2_000, client=client, max_batches=5)
    assert sum(s.shots for s in first) == 10_000
    # The batches ran on both worker processes, not in this one.
    from qecd import _sweep

    built = client.run(lambda: len(_sweep._DECODERS))
    assert len(built) == 2 and all(n > 0 for n in built.values()), built
    assert not any(key[1] == tasks[0].dem for key in _sweep._DECODERS)
    assert sum(_totals(out)[t.strong_id][0] for t in tasks if t.strong_id in _totals(out)) == 10_000
    # Resumed: every task ends at exactly max_shots, the CSV's totals equal
    # the returned ones, and nothing was counted twice.
    second = qecd.sweep(tasks, out=out, max_shots=12_000, batch_shots=2_000, client=client)
    totals = _totals(out)
    assert len(out.read_text().splitlines()) == 1 + 4 * 6  # header + 6 batches per task
    for s in second:
        assert s.shots == 12_000 and totals[s.strong_id] == (s.shots, s.errors)
        assert 0 < s.errors < 1_200  # d=3 fails about 2% of shots, d=5 less
    assert sorted(s.decoder for s in sinter.read_stats_from_csv_files(out)) == sorted(t.decoder for t in tasks)
    # A finished sweep submits nothing more.
    again = qecd.sweep(tasks, out=out, max_shots=12_000, batch_shots=2_000, client=client)
    assert [s.shots for s in again] == [12_000] * 4 and _totals(out) == totals


def test_a_task_stops_at_max_errors_across_workers(client, tmp_path: pathlib.Path) -> None:
    # d=3 with matching fails about 2% of shots: 30 errors come long before 200,000 shots.
    tasks = qecd.sweep_tasks(["matching"], [3], ps=[0.003])
    out = tmp_path / "stats.csv"
    [s] = qecd.sweep(tasks, out=out, max_shots=200_000, max_errors=30, batch_shots=500, client=client)
    assert s.errors >= 30
    # Batches in flight when the limit is hit still count: at most 2 per worker thread.
    assert s.shots <= (30 / 0.01) + 4 * 500
    assert s.shots < 200_000


def test_sinter_tasks_run_without_a_client(tmp_path: pathlib.Path) -> None:
    circuit = qecd.memory_circuit(3, 3)
    task = sinter.Task(circuit=circuit, decoder="qecd-correlated", json_metadata={"d": 3})
    [s] = qecd.sweep([task], out=tmp_path / "s.csv", max_shots=3_000, batch_shots=1_000)
    dem = circuit.detector_error_model(decompose_errors=True)
    strong_id = sinter.Task(
        circuit=circuit, decoder="qecd-correlated", detector_error_model=dem, json_metadata={"d": 3}
    ).strong_id()
    assert s.shots == 3_000 and s.strong_id == strong_id and s.decoder == "correlated"
    assert 0 < s.errors < 300
    assert _totals(tmp_path / "s.csv") == {strong_id: (3_000, s.errors)}


def _qecd_binary() -> str | None:
    built = ROOT / "target" / "release" / "qecd"
    return str(built) if built.exists() else shutil.which("qecd")


@pytest.mark.skipif(_qecd_binary() is None, reason="no qecd binary (cargo build --release builds target/release/qecd)")
def test_same_rows_and_rates_as_qecd_sweep(client, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "stats.csv"
    run = subprocess.run(
        [_qecd_binary(), "sweep", "--decoders", "correlated", "--distances", "3", "--p", "0.003",
         "--max-shots", "20000", "--max-errors", "100000", "--threads", "2", "--seed", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_COLOR="1"),
    )
    assert run.returncode == 0, run.stderr
    [cli] = sinter.read_stats_from_csv_files(out)
    assert cli.shots == 20_000
    [task] = qecd.sweep_tasks(["correlated"], [3], ps=[0.003])
    assert task.strong_id == cli.strong_id, "qecd.sweep's case is qecd sweep's row"
    # qecd.sweep resumes the CLI's row and doubles it with fresh shots.
    [both] = qecd.sweep([task], out=out, max_shots=40_000, batch_shots=5_000, client=client)
    assert both.shots == 40_000
    ours = both.errors - cli.errors
    # The two halves agree within sampling noise (about 450 errors each).
    assert abs(ours - cli.errors) <= 4 * (ours + cli.errors) ** 0.5, (ours, cli.errors)
    assert _totals(out) == {cli.strong_id: (40_000, both.errors)}
