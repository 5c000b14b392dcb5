"""Type stubs of qecd's native module."""

from typing import Literal

import numpy as np
import numpy.typing as npt

__version__: str

DecoderName = Literal["matching", "correlated", "belief", "neural", "neural-matching"]

class Decoder:
    """A qecd decoder for one detector error model.

    It builds one decoder per decoding thread once: the calling thread's,
    and ``num_threads - 1`` worker threads'. Every batch is split across
    them (a small one stays on the calling thread), and decoding releases
    the GIL.
    """

    @staticmethod
    def from_dem(
        dem: object,
        decoder: DecoderName | str = "correlated",
        model: str | None = None,
        num_threads: int = 0,
    ) -> Decoder:
        """Builds a decoder for ``dem``.

        Args:
            dem: a ``stim.DetectorErrorModel``, or its text.
            decoder: ``matching``, ``correlated`` (PyMatching's two-pass
                correlated matching), ``belief``, ``neural`` or ``neural-matching``.
            model: for ``neural``, a checkpoint path or a zoo name (see
                ``qecd.zoo()``); for ``neural-matching``, a posterior model path
                (default: the built-in one). The DEM's detectors must carry
                (x, y, t) coordinates that the model's layout fits.
            num_threads: decoding threads, the calling thread included
                (0: one per core).

        Raises:
            ValueError: an unknown decoder, a DEM that does not parse, a
                missing or unknown model, or a model that does not fit the DEM.
        """

    def decode_batch(
        self, dets: npt.NDArray[np.uint8] | npt.NDArray[np.bool_], *, bit_packed: bool = False
    ) -> npt.NDArray[np.uint8]:
        """Predicts the observable flips of a batch of shots.

        Args:
            dets: ``(shots, num_detectors)`` uint8 or bool array of detection
                events; with ``bit_packed=True``, ``(shots, ceil(num_detectors / 8))``
                uint8 bytes, little-endian bit order (Stim's and sinter's layout).

        Returns:
            ``(shots, num_observables)`` uint8 0/1 array; with ``bit_packed=True``,
            ``(shots, ceil(num_observables / 8))`` bytes.

        Raises:
            ValueError: wrong dimensionality, dtype or width (nothing is decoded).
        """

    def decode_batch_with_confidence(
        self, dets: npt.NDArray[np.uint8] | npt.NDArray[np.bool_], *, bit_packed: bool = False
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
        """As ``decode_batch``, plus each shot's probability of being right.

        Matching and neural-matching calibrate their confidence on 20,000
        held-out shots sampled from the DEM the first time this is called;
        the neural decoder's is its calibrated sigmoid. ``belief`` has none
        (ValueError).
        """

    @property
    def decoder(self) -> str:
        """The decoder's name."""

    @property
    def num_detectors(self) -> int:
        """Detection-event bits per shot."""

    @property
    def num_observables(self) -> int:
        """Observables predicted per shot."""

    @property
    def num_threads(self) -> int:
        """Threads decoding each batch, the calling thread included."""

def decoder_names() -> list[str]:
    """The decoder names ``Decoder.from_dem`` takes."""

def memory_circuit_text(
    distance: int, rounds: int, basis: str = "z", noise: str = "si1000", p: float = 0.003
) -> str:
    """qecd's memory-experiment circuit as Stim text (see ``qecd.memory_circuit``)."""

def sweep_cases_json(
    decoders: list[str],
    distances: list[int],
    rounds: list[str],
    basis: str,
    noise: str,
    ps: list[float],
    models: list[str],
    posterior: str | None,
    decoder_dems: list[str],
) -> tuple[list[str], list[str]]:
    """The cases of ``qecd sweep`` with these arguments (``rounds``: ``"d"`` or
    numbers; empty ``models``: the zoo), one JSON object each (circuit, dem,
    decoder, json_metadata, strong_id, model: ``Decoder.from_dem``'s
    ``model=``), and a warning for each DEM file no case took.

    Raises:
        ValueError: what ``qecd sweep`` refuses (unknown decoder or noise, a
            bad model or DEM file, no checkpoint or DEM file for a case).
    """

def zoo_json() -> list[str]:
    """The built-in neural models' cards, as JSON text."""
