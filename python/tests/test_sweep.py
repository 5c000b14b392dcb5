"""qecd.sweep on a 2-worker Dask LocalCluster: the sinter CSV, resuming, the
stopping rules, and the rows `qecd sweep` writes."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess

import pytest

sinter = pytest.importorskip("sinter", reason="sinter is not installed (scripts/torch-env installs it)")
distributed = pytest.importorskip("distributed", reason="distributed is not installed (scripts/torch-env installs it)")

import qecd  # noqa: E402
import qecd._sweep  # noqa: E402

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


def _batches(path: pathlib.Path) -> list[tuple[int, int]]:
    """(shots, errors) of each CSV line, in the order written."""
    lines = path.read_text().splitlines()[1:]
    return [(int(line.split(",")[0]), int(line.split(",")[1])) for line in lines]


def test_adaptive_batches_grow_with_the_measured_rate(tmp_path: pathlib.Path) -> None:
    # Batches sized as the task goes (the default): the first is FIRST_BATCH_SHOTS, later
    # ones what 0.5 s of this machine's measured rate decodes; the task still ends at
    # exactly max_shots.
    [task] = qecd.sweep_tasks(["matching"], [3], ps=[0.003])
    out = tmp_path / "s.csv"
    [s] = qecd.sweep([task], out=out, max_shots=300_000, batch_seconds=0.5)
    sizes = [n for n, _ in _batches(out)]
    assert s.shots == sum(sizes) == 300_000
    assert sizes[0] == qecd._sweep.FIRST_BATCH_SHOTS
    assert max(sizes) > 4 * qecd._sweep.FIRST_BATCH_SHOTS, sizes  # needs > 8,000 shots/s at d=3
    assert len(sizes) < 300_000 // qecd._sweep.FIRST_BATCH_SHOTS


def test_adaptive_batches_stop_near_max_errors(client, tmp_path: pathlib.Path) -> None:
    # d=3 with matching fails about 2% of shots. Adaptive batches are capped by the shots
    # expected to bring the missing errors, so the task stops near 200 errors, not a
    # large batch past them, even with batches that would otherwise take 30 s.
    [task] = qecd.sweep_tasks(["matching"], [3], ps=[0.003])
    out = tmp_path / "s.csv"
    [s] = qecd.sweep([task], out=out, max_shots=10**8, max_errors=200, batch_seconds=30, client=client)
    assert 200 <= s.errors < 400, s
    assert s.shots < 40_000, s


@pytest.mark.parametrize("bad", [{"batch_shots": 0}, {"batch_seconds": 0}, {"batch_seconds": float("nan")}])
def test_bad_batch_sizes_are_refused(tmp_path: pathlib.Path, bad) -> None:
    [task] = qecd.sweep_tasks(["matching"], [3], ps=[0.003])
    with pytest.raises(ValueError, match="batch_"):
        qecd.sweep([task], out=tmp_path / "s.csv", max_shots=1_000, **bad)
    assert not (tmp_path / "s.csv").exists()


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


def _cli_sweep(out: pathlib.Path, *args: str) -> list:
    run = subprocess.run(
        [_qecd_binary(), "sweep", "--distances", "3", "--p", "0.003", "--threads", "2", "--seed", "1",
         "--max-errors", "100000", "--out", str(out), *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_COLOR="1"),
    )
    assert run.returncode == 0, run.stderr
    return list(sinter.read_stats_from_csv_files(out))


MODELS = ROOT / "fixtures" / "models"
POSTERIOR = ROOT / "fixtures" / "posterior" / "posterior_z_si1000_p003.safetensors"


@pytest.mark.skipif(_qecd_binary() is None, reason="no qecd binary (cargo build --release builds target/release/qecd)")
def test_neural_cases_are_qecd_sweep_rows(tmp_path: pathlib.Path) -> None:
    rows = _cli_sweep(tmp_path / "cli.csv", "--decoders", "neural,neural-matching", "--max-shots", "1000")
    cli = {s.decoder: s for s in rows}
    tasks = {t.decoder: t for t in qecd.sweep_tasks(["neural", "neural-matching"], [3], ps=[0.003])}
    assert sorted(cli) == sorted(tasks) == ["neural", "neural-matching"]
    for name, task in tasks.items():
        assert (task.strong_id, task.json_metadata) == (cli[name].strong_id, cli[name].json_metadata), name
    assert tasks["neural"].json_metadata["model"] == "d3_z_si1000_p003.safetensors"
    assert tasks["neural"].model == "d3_z_si1000_p003"  # the zoo's name: every worker has it
    assert tasks["neural-matching"].json_metadata["model"] == "posterior_z_si1000_p003"
    assert tasks["neural-matching"].model is None  # the built-in posterior model
    # Model files (--model, --posterior): their cases are the CLI's too, and
    # the task carries each file's absolute path for the workers.
    ckpt = MODELS / "d3_z_si1000_p003.safetensors"
    rows = _cli_sweep(tmp_path / "files.csv", "--decoders", "neural,neural-matching", "--max-shots", "1000",
                      "--model", str(ckpt), "--posterior", str(POSTERIOR))
    files = {t.decoder: t for t in qecd.sweep_tasks(["neural", "neural-matching"], [3], models=[ckpt],
                                                    posterior=POSTERIOR)}
    assert {s.decoder: s.strong_id for s in rows} == {k: t.strong_id for k, t in files.items()}
    assert files["neural"].model == str(ckpt) and files["neural-matching"].model == str(POSTERIOR)


@pytest.mark.skipif(_qecd_binary() is None, reason="no qecd binary (cargo build --release builds target/release/qecd)")
def test_neural_rates_agree_with_qecd_sweep(tmp_path: pathlib.Path) -> None:
    [cli] = _cli_sweep(tmp_path / "cli.csv", "--decoders", "neural", "--max-shots", "20000")
    [task] = qecd.sweep_tasks(["neural"], [3], ps=[0.003])
    [ours] = qecd.sweep([task], out=tmp_path / "py.csv", max_shots=20_000, batch_shots=5_000)
    assert (cli.shots, ours.shots, ours.strong_id) == (20_000, 20_000, cli.strong_id)
    # The zoo's d=3 model fails about 1.7% of shots: about 340 errors each.
    assert 100 < ours.errors < 1_000, ours.errors
    pooled = (cli.errors + ours.errors) / 40_000
    z = (ours.errors - cli.errors) / 20_000 / (pooled * (1 - pooled) * 2 / 20_000) ** 0.5
    assert abs(z) < 4, (ours.errors, cli.errors, z)


def test_decoder_dem_round_trip(tmp_path: pathlib.Path) -> None:
    [plain_nm, plain_neural] = qecd.sweep_tasks(["neural-matching", "neural"], [3])
    own = tmp_path / "own.dem"
    own.write_text(plain_nm.dem)
    [nm, neural] = qecd.sweep_tasks(["neural-matching", "neural"], [3], decoder_dems=[own])
    assert nm.strong_id != plain_nm.strong_id and nm.dem == plain_nm.dem
    assert nm.json_metadata == {**plain_nm.json_metadata, "dem": "own.dem",
                                "dem_sha256": hashlib.sha256(own.read_bytes()).hexdigest()[:12]}
    # The neural decoder uses no DEM: its case is unchanged.
    assert neural == plain_neural
    # The same seeds decode the same shots to the same errors.
    for seed in (1, 2):
        shots, errors, _ = qecd._sweep.run_batch(nm, 5_000, seed)
        assert errors > 0 and (shots, errors) == qecd._sweep.run_batch(plain_nm, 5_000, seed)[:2]
    if _qecd_binary() is not None:
        [row] = _cli_sweep(tmp_path / "cli.csv", "--decoders", "neural-matching", "--max-shots", "1000",
                           "--decoder-dem", str(own))
        assert (row.strong_id, row.json_metadata) == (nm.strong_id, nm.json_metadata)


def test_bad_models_and_dem_files_are_refused_by_name(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ValueError, match=f"{re.escape(str(missing))}: No such file"):
        qecd.sweep_tasks(["neural"], [3], models=[missing])
    d5 = MODELS / "d5_z_si1000_p003.safetensors"
    with pytest.raises(ValueError, match=rf"no neural model for d=3 memory-Z \(models: {re.escape(str(d5))}\)"):
        qecd.sweep_tasks(["neural"], [3], models=[d5])
    # A neural checkpoint is no posterior model.
    with pytest.raises(ValueError, match="d3_z_si1000_p003.safetensors: no 'qecd_posterior' metadata"):
        qecd.sweep_tasks(["neural-matching"], [3], posterior=MODELS / "d3_z_si1000_p003.safetensors")
    # The built-in posterior model is for Z memory.
    with pytest.raises(ValueError, match="neural-matching d=3 .* posterior model 'posterior_z_si1000_p003' does not fit"):
        qecd.sweep_tasks(["neural-matching"], [3], basis="x")
    [d5_task] = qecd.sweep_tasks(["correlated"], [5])
    d5_dem = tmp_path / "d5.dem"
    d5_dem.write_text(d5_task.dem)
    with pytest.raises(ValueError, match=rf"case d=3 r=3 .*no --decoder-dem file fits it \({re.escape(str(d5_dem))}: it has 120"):
        qecd.sweep_tasks(["correlated"], [3], decoder_dems=[d5_dem])
    # A file that fits no case, beside one that fits every case, is a warning.
    [d3_task] = qecd.sweep_tasks(["correlated"], [3])
    d3_dem = tmp_path / "d3.dem"
    d3_dem.write_text(d3_task.dem)
    with pytest.warns(UserWarning, match=f"decoder DEM {re.escape(str(d5_dem))} .* fits no case"):
        [task] = qecd.sweep_tasks(["correlated"], [3], decoder_dems=[d3_dem, d5_dem])
    assert task.json_metadata["dem"] == "d3.dem"


def test_neural_tasks_run_on_dask_workers(client, tmp_path: pathlib.Path) -> None:
    tasks = qecd.sweep_tasks(["neural", "neural-matching"], [3], models=[MODELS / "d3_z_si1000_p003.safetensors"])
    stats = qecd.sweep(tasks, out=tmp_path / "s.csv", max_shots=4_000, batch_shots=1_000, client=client)
    assert [s.shots for s in stats] == [4_000, 4_000]
    assert all(0 < s.errors < 400 for s in stats), stats
    built = client.run(lambda: sorted({(k[0], k[2]) for k in qecd._sweep._DECODERS if k[0].startswith("neural")}))
    assert set().union(*map(set, built.values())) == {(t.decoder, t.model) for t in tasks}
