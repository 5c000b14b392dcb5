"""qecd's decoders as sinter decoders.

This module imports sinter; ``qecd`` imports it only when
``qecd.sinter_decoders()`` is called, so qecd works without sinter. The
classes live at module level because sinter's worker processes are spawned
and receive the decoders pickled.

sinter hands each compiled decoder bit-packed detection events (uint8,
little-endian bit order) and wants bit-packed observable flips back; both are
``qecd.Decoder``'s own bit-packed layout, so nothing is converted, written to
disk or run in a subprocess.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sinter

from ._qecd import Decoder, decoder_names


class QecdCompiledDecoder(sinter.CompiledDecoder):
    """A ``qecd.Decoder`` fed sinter's bit-packed arrays directly."""

    def __init__(self, inner: Decoder):
        self.inner = inner

    def decode_shots_bit_packed(self, *, bit_packed_detection_event_data: np.ndarray) -> np.ndarray:
        return self.inner.decode_batch(bit_packed_detection_event_data, bit_packed=True)


class QecdSinterDecoder(sinter.Decoder):
    """One qecd decoder, compiled once per detector error model."""

    def __init__(self, decoder: str, model: str | None = None, num_threads: int = 1):
        self.decoder = decoder
        self.model = model
        self.num_threads = num_threads

    def compile_decoder_for_dem(self, *, dem: Any) -> QecdCompiledDecoder:
        return QecdCompiledDecoder(
            Decoder.from_dem(dem, decoder=self.decoder, model=self.model, num_threads=self.num_threads)
        )

    def decode_via_files(self, **kwargs: Any) -> None:
        raise NotImplementedError("qecd decodes through compile_decoder_for_dem, without files")

    def __repr__(self) -> str:
        return f"QecdSinterDecoder({self.decoder!r}, model={self.model!r}, num_threads={self.num_threads})"


def sinter_decoders(num_threads: int = 1, model: str | None = None) -> dict[str, QecdSinterDecoder]:
    """``{"qecd-<name>": sinter.Decoder}`` for every qecd decoder (see ``qecd.sinter_decoders``)."""
    decoders = {}
    for name in decoder_names():
        if name == "neural" and model is None:
            continue
        decoders[f"qecd-{name}"] = QecdSinterDecoder(name, model if name == "neural" else None, num_threads)
    return decoders
