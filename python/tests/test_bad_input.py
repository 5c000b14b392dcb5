"""Each bad input raises ValueError naming what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import stim

import qecd


@pytest.fixture(scope="module")
def decoder(d5_dem: stim.DetectorErrorModel) -> qecd.Decoder:
    return qecd.Decoder.from_dem(d5_dem, "matching")


def test_wrong_width(decoder: qecd.Decoder) -> None:
    n = decoder.num_detectors
    with pytest.raises(ValueError, match=f"dets have {n - 1} detectors per shot but the detector error model has {n}"):
        decoder.decode_batch(np.zeros((4, n - 1), dtype=np.uint8))
    with pytest.raises(ValueError, match=f"bit-packed dets have {n} bytes per shot .* take {(n + 7) // 8}"):
        decoder.decode_batch(np.zeros((4, n), dtype=np.uint8), bit_packed=True)


def test_bits_set_in_the_padding() -> None:
    # Three detectors: one byte per shot, five bits of padding.
    decoder = qecd.Decoder.from_dem("error(0.1) D0\nerror(0.1) D0 D1 L0\nerror(0.1) D1 D2\nerror(0.1) D2", "matching")
    packed = np.zeros((3, 1), dtype=np.uint8)
    packed[1, 0] = 0b101
    assert decoder.decode_batch(packed, bit_packed=True).shape == (3, 1)
    packed[2, 0] = 0x80
    with pytest.raises(ValueError, match="shot 2 has bits set past bit 3"):
        decoder.decode_batch(packed, bit_packed=True)


@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.int8])
def test_wrong_dtype(decoder: qecd.Decoder, dtype) -> None:
    with pytest.raises(ValueError, match="dets must have dtype uint8 or bool, got"):
        decoder.decode_batch(np.zeros((4, decoder.num_detectors), dtype=dtype))
    with pytest.raises(ValueError, match="bit-packed dets must have dtype uint8"):
        decoder.decode_batch(np.zeros((4, (decoder.num_detectors + 7) // 8), dtype=dtype), bit_packed=True)


@pytest.mark.parametrize("shape", [(120,), (2, 3, 120), ()])
def test_wrong_dimensionality(decoder: qecd.Decoder, shape) -> None:
    with pytest.raises(ValueError, match=f"dets must be 2-D .* got a {len(shape)}-D array"):
        decoder.decode_batch(np.zeros(shape, dtype=np.uint8))


def test_not_an_array(decoder: qecd.Decoder) -> None:
    with pytest.raises(ValueError, match="dets must be a numpy array, got list"):
        decoder.decode_batch([[0] * decoder.num_detectors])


def test_unknown_decoder_name(d5_dem: stim.DetectorErrorModel) -> None:
    with pytest.raises(ValueError, match="unknown decoder 'tesseract'"):
        qecd.Decoder.from_dem(d5_dem, "tesseract")


def test_not_a_dem() -> None:
    with pytest.raises(ValueError, match="not a detector error model"):
        qecd.Decoder.from_dem("error(0.1) D0 Q7 nonsense", "matching")


def test_neural_needs_a_model(d5_dem: stim.DetectorErrorModel) -> None:
    with pytest.raises(ValueError, match="decoder 'neural' needs model=.*d3_z_si1000_p003"):
        qecd.Decoder.from_dem(d5_dem, "neural")
    with pytest.raises(ValueError, match="model 'no-such-model' is neither a checkpoint file nor a zoo model"):
        qecd.Decoder.from_dem(d5_dem, "neural", model="no-such-model")
    with pytest.raises(ValueError, match="model= goes with decoder 'neural' or 'neural-matching', not 'matching'"):
        qecd.Decoder.from_dem(d5_dem, "matching", model="d5_z_si1000_p003")


def test_model_geometry_that_does_not_fit() -> None:
    # A repetition code's detectors are not laid out as a rotated surface code's.
    circuit = stim.Circuit.generated(
        "repetition_code:memory", distance=5, rounds=5, after_clifford_depolarization=0.003
    )
    dem = circuit.detector_error_model(decompose_errors=True)
    with pytest.raises(ValueError, match="model 'd5_z_si1000_p003' does not fit this detector error model"):
        qecd.Decoder.from_dem(dem, "neural", model="d5_z_si1000_p003")
    with pytest.raises(ValueError, match="does not fit this detector error model"):
        qecd.Decoder.from_dem(dem, "neural-matching")


def test_belief_has_no_confidence(d5_dem: stim.DetectorErrorModel) -> None:
    decoder = qecd.Decoder.from_dem(d5_dem, "belief", num_threads=1)
    with pytest.raises(ValueError, match="decoder 'belief' reports no confidence"):
        decoder.decode_batch_with_confidence(np.zeros((2, decoder.num_detectors), dtype=np.uint8))
