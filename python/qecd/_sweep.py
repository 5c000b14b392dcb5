"""Logical-error-rate sweeps on a Dask ``distributed`` cluster, in the sinter
CSV that ``qecd sweep`` writes.

The driver (the process that calls ``sweep``) owns the CSV: it reads what is
there, hands batches of shots to the cluster's workers, and appends one line
per finished batch, so a run that is stopped loses at most its batches in
flight and the next run resumes from the file. A task stops receiving
batches once its shots (done plus in flight) reach ``max_shots`` or its
errors reach ``max_errors``; batches already in flight still count, as in
sinter. Cases made by ``sweep_tasks`` carry ``qecd sweep``'s own strong ids,
so ``qecd sweep`` and ``qecd.sweep`` add to the same rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import time
import warnings
from typing import Any, Iterable

import numpy as np

from ._qecd import Decoder, sweep_cases_json

#: Decoders each worker process has built, by (decoder, DEM text, model).
_DECODERS: dict[tuple[str, str, str | None], Decoder] = {}


@dataclasses.dataclass(frozen=True)
class SweepTask:
    """One case: a circuit, the DEM to decode it with, a decoder, and its identity."""

    circuit: str
    """The noisy circuit, as Stim text."""
    dem: str
    """The decoding detector error model, as Stim text."""
    decoder: str
    """A qecd decoder name (``matching``, ``correlated``, ``belief``, ``neural``, ``neural-matching``)."""
    json_metadata: dict[str, Any]
    """sinter's ``json_metadata`` column."""
    strong_id: str
    """sinter's ``strong_id`` column: rows with the same id add up."""
    model: str | None = None
    """``Decoder.from_dem``'s ``model=``: for ``neural``, the name of a zoo
    model (built into the extension, so it resolves on every worker) or a
    checkpoint's absolute path; for ``neural-matching``, the posterior model's
    absolute path, or ``None`` for the built-in one. A path must exist, with
    the same file, on every worker."""


def _absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def sweep_tasks(
    decoders: Iterable[str],
    distances: Iterable[int],
    ps: Iterable[float] = (0.003,),
    rounds: int | str = "d",
    basis: str = "z",
    noise: str = "si1000",
    *,
    models: Iterable[str | os.PathLike[str]] | None = None,
    posterior: str | os.PathLike[str] | None = None,
    decoder_dems: Iterable[str | os.PathLike[str]] | None = None,
) -> list[SweepTask]:
    """The cases ``qecd sweep --decoders ... --distances ... --p ... --rounds ...
    [--model ...] [--posterior ...] [--decoder-dem ...]`` runs, in its order.

    ``rounds`` is a number or ``"d"`` (rounds = distance). The circuit, DEM,
    model, metadata and strong id of every case come from qecd's sweep code
    itself, so the CLI and ``qecd.sweep`` add to the same rows.

    Args:
        models: neural checkpoints (``--model``); each ``neural`` case takes
            the one of its distance and basis. ``None``: the zoo built into
            qecd (``qecd.zoo()``), which every worker has.
        posterior: the posterior model of ``neural-matching`` cases
            (``--posterior``); ``None``: the built-in one.
        decoder_dems: DEM files (``--decoder-dem``) that every decoder but
            ``neural`` decodes with instead of its circuit's DEM: each case
            takes the one file that fits its circuit. Shots still come from
            the circuit; the metadata names the file and its hash, and the
            DEM's text travels in the task (workers need no copy).

    Model paths are made absolute here; workers on other machines need the
    same files at the same paths.

    Raises:
        ValueError: an unknown decoder or noise model, a model file that is
            missing or not a model, no checkpoint for a neural case's distance
            and basis, a DEM file that does not parse or that no case (or two
            files for one case) fits, or a model that does not fit its case's
            DEM.
    """
    cases, unused = sweep_cases_json(
        list(decoders),
        [int(d) for d in distances],
        [str(rounds)],
        basis,
        noise,
        [float(p) for p in ps],
        [_absolute(m) for m in models or ()],
        None if posterior is None else _absolute(posterior),
        [_absolute(f) for f in decoder_dems or ()],
    )
    for warning in unused:
        warnings.warn(warning, stacklevel=2)
    tasks = []
    for text in cases:
        case = json.loads(text)
        task = SweepTask(
            case["circuit"], case["dem"], case["decoder"], case["json_metadata"], case["strong_id"], case["model"]
        )
        if task.model is not None or task.decoder == "neural-matching":
            # Refuse here, not on a worker, a model that does not fit the case's DEM.
            try:
                Decoder.from_dem(task.dem, task.decoder, model=task.model, num_threads=1)
            except ValueError as e:
                meta = task.json_metadata
                raise ValueError(
                    f"case {task.decoder} d={meta['d']} r={meta['r']} p={meta['p']} "
                    f"(model {meta.get('model')}): {e}"
                ) from None
        tasks.append(task)
    return tasks


def _from_sinter_task(task: Any) -> SweepTask:
    """A ``sinter.Task`` whose decoder is a qecd decoder (``correlated`` or ``qecd-correlated``)."""
    import copy

    decoder = task.decoder.removeprefix("qecd-")
    if task.detector_error_model is None:
        task = copy.copy(task)
        task.detector_error_model = task.circuit.detector_error_model(decompose_errors=True)
    return SweepTask(str(task.circuit), str(task.detector_error_model), decoder, task.json_metadata, task.strong_id())


def run_batch(task: SweepTask, shots: int, seed: int) -> tuple[int, int, float]:
    """Samples ``shots`` shots of the task's circuit with ``seed`` and decodes
    them on this worker: (shots, errors, seconds)."""
    import stim

    start = time.monotonic()
    key = (task.decoder, task.dem, task.model)
    decoder = _DECODERS.get(key)
    if decoder is None:
        decoder = _DECODERS[key] = Decoder.from_dem(task.dem, task.decoder, model=task.model, num_threads=1)
    sampler = stim.Circuit(task.circuit).compile_detector_sampler(seed=seed)
    dets, obs = sampler.sample(shots, separate_observables=True, bit_packed=True)
    predictions = decoder.decode_batch(dets, bit_packed=True)
    errors = int(np.any(predictions != obs, axis=1).sum())
    return shots, errors, time.monotonic() - start


#: Shots in an adaptive batch before the task has a measured rate.
FIRST_BATCH_SHOTS = 1_000
#: The most shots in an adaptive batch (a d=3 batch of this size takes a
#: worker a few seconds; bit-packed it is a few MiB).
MAX_BATCH_SHOTS = 1_000_000
#: The fewest shots in an adaptive batch.
MIN_BATCH_SHOTS = 100


def _adaptive_batch(p: "_Progress", max_errors: int | None, batch_seconds: float) -> int:
    """The next batch of task ``p`` when batches are sized as it goes: what a
    worker decodes in ``batch_seconds`` at the rate measured so far (shots
    over worker-seconds, resumed rows included), and, when the task stops at
    ``max_errors`` and has seen errors, no more than the shots expected to
    bring the errors still missing (less those expected from batches in
    flight), so that it stops near its limit rather than a batch past it."""
    if p.shots < FIRST_BATCH_SHOTS or p.seconds <= 0:
        return FIRST_BATCH_SHOTS
    n = int(p.shots / p.seconds * batch_seconds)
    if max_errors is not None and p.errors > 0:
        missing = (max_errors - p.errors) * p.shots / p.errors - p.in_flight
        n = min(n, int(missing))
    return max(MIN_BATCH_SHOTS, min(n, MAX_BATCH_SHOTS))


@dataclasses.dataclass
class _Progress:
    task: SweepTask
    shots: int = 0
    errors: int = 0
    seconds: float = 0.0
    in_flight: int = 0


def sweep(
    tasks: Iterable[Any],
    *,
    out: str | pathlib.Path,
    max_shots: int,
    max_errors: int | None = None,
    client: Any = None,
    batch_shots: int | None = None,
    batch_seconds: float = 2.0,
    max_batches: int | None = None,
) -> list[Any]:
    """Runs ``tasks`` until each has ``max_shots`` shots or ``max_errors`` errors,
    appending one sinter CSV line per batch to ``out``.

    Args:
        tasks: ``SweepTask``s (from ``sweep_tasks``, matching ``qecd sweep``'s
            rows) or ``sinter.Task``s whose decoder is a qecd decoder.
        out: the sinter CSV; existing rows count, so a stopped run resumes.
        max_shots: shots per task, over all runs and workers.
        max_errors: stop a task once it has this many errors (``None``: no limit).
        client: a ``distributed.Client``; ``None`` decodes in this process.
        batch_shots: shots per batch sent to a worker; ``None`` (the
            default) sizes each task's batches as it goes, as sinter does:
            the first holds ``FIRST_BATCH_SHOTS`` shots, later ones what a
            worker decodes in about ``batch_seconds`` at the task's measured
            rate (at most ``MAX_BATCH_SHOTS``), and, under ``max_errors``, no
            more than the shots expected to reach the errors still missing.
        batch_seconds: the worker time an adaptive batch aims at.
        max_batches: stop after this many batches (a bounded slice of work).

    Returns:
        The totals per task, as ``sinter.TaskStats``.
    """
    import sinter

    if batch_shots is not None and batch_shots < 1:
        raise ValueError(f"batch_shots must be a positive number of shots or None, not {batch_shots}")
    if not batch_seconds > 0:
        raise ValueError(f"batch_seconds must be positive, not {batch_seconds}")

    progress = {}
    for t in tasks:
        task = t if isinstance(t, SweepTask) else _from_sinter_task(t)
        progress[task.strong_id] = _Progress(task)
    out = pathlib.Path(out)
    if out.exists() and out.stat().st_size > 0:
        for s in sinter.read_stats_from_csv_files(out):
            if s.strong_id in progress:
                p = progress[s.strong_id]
                p.shots, p.errors, p.seconds = s.shots, s.errors, s.seconds
    else:
        out.write_text(sinter.CSV_HEADER + "\n")

    def next_batch() -> tuple[_Progress, int] | None:
        for p in progress.values():
            if max_errors is not None and p.errors >= max_errors:
                continue
            size = batch_shots if batch_shots is not None else _adaptive_batch(p, max_errors, batch_seconds)
            n = min(size, max_shots - p.shots - p.in_flight)
            if n > 0:
                p.in_flight += n
                return p, n
        return None

    def record(f: Any, p: _Progress, result: tuple[int, int, float]) -> None:
        shots, errors, seconds = result
        p.in_flight -= shots
        p.shots += shots
        p.errors += errors
        p.seconds += seconds
        row = sinter.TaskStats(
            strong_id=p.task.strong_id,
            decoder=p.task.decoder,
            json_metadata=p.task.json_metadata,
            shots=shots,
            errors=errors,
            discards=0,
            seconds=seconds,
        )
        print(row.to_csv_line(), file=f, flush=True)

    submitted = 0
    with out.open("a") as f:
        if client is None:
            while (max_batches is None or submitted < max_batches) and (batch := next_batch()) is not None:
                p, n = batch
                record(f, p, run_batch(p.task, n, secrets.randbits(63)))
                submitted += 1
        else:
            from distributed import as_completed

            slots = 2 * max(1, sum(client.nthreads().values()))
            pending = as_completed()
            owner = {}

            def submit() -> bool:
                nonlocal submitted
                if max_batches is not None and submitted >= max_batches:
                    return False
                batch = next_batch()
                if batch is None:
                    return False
                p, n = batch
                future = client.submit(run_batch, p.task, n, secrets.randbits(63), pure=False)
                owner[future.key] = p
                pending.add(future)
                submitted += 1
                return True

            while len(owner) < slots and submit():
                pass
            for future in pending:
                p = owner.pop(future.key)
                record(f, p, future.result())
                while len(owner) < slots and submit():
                    pass

    return [
        sinter.TaskStats(
            strong_id=p.task.strong_id,
            decoder=p.task.decoder,
            json_metadata=p.task.json_metadata,
            shots=p.shots,
            errors=p.errors,
            discards=0,
            seconds=p.seconds,
        )
        for p in progress.values()
    ]
