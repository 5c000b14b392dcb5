"""qecd's decoders from Python.

``Decoder.from_dem`` builds any decoder the ``qecd`` CLI has (matching,
correlated, belief, neural, neural-matching) for a detector error model;
``decode_batch`` takes detection events as a numpy array (unpacked, or
bit-packed as Stim and sinter write them) and returns predicted observable
flips. Decoding runs in Rust on every core (``num_threads=`` to limit it),
with the GIL released.

``sinter_decoders()`` gives sinter's ``custom_decoders`` dict, so that
``sinter collect --custom_decoders_module_function qecd:sinter_decoders``
works from the shell. ``sweep()`` runs ``qecd sweep``'s cases (or sinter
tasks) on a Dask cluster, in the same sinter CSV.
"""

from __future__ import annotations

import json
from typing import Any

from ._qecd import Decoder, __version__, decoder_names, memory_circuit_text, zoo_json

from ._sweep import SweepTask, sweep, sweep_tasks

__all__ = [
    "Decoder",
    "SweepTask",
    "decoder_names",
    "memory_circuit",
    "sinter_decoders",
    "sweep",
    "sweep_tasks",
    "zoo",
    "__version__",
]


def zoo() -> list[dict[str, Any]]:
    """The neural models built into qecd, one card (a dict) each.

    Each card holds ``name`` (what ``Decoder.from_dem(..., model=name)``
    takes), ``distance``, ``basis``, ``num_stabilizers``, ``relative`` (whether
    the weights run at any distance), ``temperature``, and the checkpoint's
    ``config``, ``provenance`` (noise, p, rounds, training commands) and
    ``evaluation``.
    """
    return [json.loads(card) for card in zoo_json()]


def memory_circuit(distance: int, rounds: int, basis: str = "z", noise: str = "si1000", p: float = 0.003) -> Any:
    """qecd's memory experiment as a ``stim.Circuit`` (needs stim).

    A rotated surface code of ``distance``, ``rounds`` rounds of stabilizer
    measurement, memory in ``basis`` (``"x"`` or ``"z"``), with ``noise``
    (``si1000``, qecd's true SI1000, or the other models ``qecd sample
    --noise`` takes) at physical error rate ``p``; the same circuit as
    ``qecd sample --circuit-out`` writes, with (x, y, t) detector coordinates.
    Raises ValueError for a distance, basis, noise or p qecd does not take.
    """
    import stim

    return stim.Circuit(memory_circuit_text(distance, rounds, basis, noise, p))


def sinter_decoders(num_threads: int = 1, model: str | None = None) -> dict[str, Any]:
    """The ``custom_decoders`` dict for sinter: ``{"qecd-<name>": sinter.Decoder}``.

    Every qecd decoder is there (``qecd-matching``, ``qecd-correlated``,
    ``qecd-belief``, ``qecd-neural-matching``, and ``qecd-neural`` when
    ``model`` names a checkpoint or zoo model). sinter runs one process per
    worker, so each decodes on ``num_threads`` threads (default 1). This is
    what ``sinter collect --custom_decoders_module_function qecd:sinter_decoders``
    calls. Needs sinter installed.
    """
    from ._sinter import sinter_decoders as make

    return make(num_threads=num_threads, model=model)
