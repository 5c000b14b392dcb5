"""qecd's matching decoders against PyMatching's Python package, bit for bit.

qecd links PyMatching's C++ (the pymatching crate), so on the same shots
the predictions must be identical, not merely close.
"""

from __future__ import annotations

import numpy as np
import pymatching
import pytest
import stim

import qecd

from conftest import fixture_circuit


@pytest.mark.parametrize("d", [3, 5, 7])
@pytest.mark.parametrize("name,correlated", [("matching", False), ("correlated", True)])
def test_predictions_equal_pymatching(d: int, name: str, correlated: bool) -> None:
    circuit = fixture_circuit(d)
    dem = circuit.detector_error_model(decompose_errors=True)
    dets, obs = circuit.compile_detector_sampler(seed=100 + d).sample(10_000, separate_observables=True)
    want = pymatching.Matching.from_detector_error_model(dem, enable_correlations=correlated).decode_batch(
        dets, enable_correlations=correlated
    )
    decoder = qecd.Decoder.from_dem(dem, decoder=name, num_threads=2)
    got = decoder.decode_batch(dets)
    assert got.dtype == np.uint8 and got.shape == (10_000, dem.num_observables)
    np.testing.assert_array_equal(got, want)
    # The decoder is not vacuous: at p=0.003 it corrects most shots but not all.
    mistakes = int(np.any(got != obs, axis=1).sum())
    assert 0 < mistakes < 1_000


def test_bit_packed_equals_pymatching(d5_dem: stim.DetectorErrorModel, d5_shots) -> None:
    dets, _ = d5_shots
    packed = np.packbits(dets, axis=1, bitorder="little")
    want = pymatching.Matching.from_detector_error_model(d5_dem, enable_correlations=True).decode_batch(
        packed, bit_packed_shots=True, bit_packed_predictions=True, enable_correlations=True
    )
    got = qecd.Decoder.from_dem(d5_dem).decode_batch(packed, bit_packed=True)
    assert got.dtype == np.uint8 and got.shape == want.shape == (len(dets), 1)
    np.testing.assert_array_equal(got, want)


def test_thread_counts_and_input_forms_agree(d5_dem: stim.DetectorErrorModel, d5_shots) -> None:
    dets, _ = d5_shots
    one = qecd.Decoder.from_dem(str(d5_dem), "correlated", num_threads=1)
    three = qecd.Decoder.from_dem(d5_dem, "correlated", num_threads=3)
    assert (one.num_threads, three.num_threads) == (1, 3)
    base = one.decode_batch(dets)
    np.testing.assert_array_equal(three.decode_batch(dets), base)
    np.testing.assert_array_equal(three.decode_batch(dets.astype(np.uint8)), base)
    # A strided (non-contiguous) view decodes as its copy does.
    np.testing.assert_array_equal(three.decode_batch(dets[::2]), base[::2])
    # Small batches, which the calling thread decodes alone, and one just
    # big enough to be split.
    for n in (1, 40, 65):
        np.testing.assert_array_equal(three.decode_batch(dets[:n]), base[:n])
    # An empty batch is no error.
    assert three.decode_batch(dets[:0]).shape == (0, 1)


def test_decoding_from_python_threads_releases_the_gil(d5_dem: stim.DetectorErrorModel, d5_shots) -> None:
    from concurrent.futures import ThreadPoolExecutor

    dets, _ = d5_shots
    decoder = qecd.Decoder.from_dem(d5_dem, "correlated", num_threads=2)
    base = decoder.decode_batch(dets)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda i: decoder.decode_batch(dets[i::4]), range(4)))
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part, base[i::4])


def test_confidence(d5_dem: stim.DetectorErrorModel, d5_shots) -> None:
    dets, obs = d5_shots
    decoder = qecd.Decoder.from_dem(d5_dem, "correlated")
    predictions, confidence = decoder.decode_batch_with_confidence(dets)
    np.testing.assert_array_equal(predictions, decoder.decode_batch(dets))
    assert confidence.dtype == np.float64 and confidence.shape == (len(dets),)
    assert np.all((confidence >= 0) & (confidence <= 1))
    # Calibrated: the mean confidence is close to the fraction decoded right.
    right = np.all(predictions == obs, axis=1).mean()
    assert abs(confidence.mean() - right) < 0.01
    # And informative: shots it is least sure of fail far more often.
    wrong = np.any(predictions != obs, axis=1)
    unsure = confidence < np.quantile(confidence, 0.05)
    assert wrong[unsure].mean() > 5 * wrong[~unsure].mean()
