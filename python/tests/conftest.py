"""Shared circuits for the qecd Python tests: the repository's SI1000 fixtures."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import stim

#: The repository's fixtures (SI1000 p=0.003 memory circuits, golden shots).
FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures"


def fixture_circuit(d: int) -> stim.Circuit:
    """The zoo fixture circuit at distance d (Z memory, SI1000 p=0.003, d rounds)."""
    return stim.Circuit.from_file(FIXTURES / "models" / f"d{d}_z_si1000_p003.fixture.stim")


@pytest.fixture(scope="session")
def d5() -> stim.Circuit:
    return fixture_circuit(5)


@pytest.fixture(scope="session")
def d5_dem(d5: stim.Circuit) -> stim.DetectorErrorModel:
    return d5.detector_error_model(decompose_errors=True)


@pytest.fixture(scope="session")
def d5_shots(d5: stim.Circuit) -> tuple[np.ndarray, np.ndarray]:
    """20,000 shots of d=5: (detection events as bool, observable flips)."""
    return d5.compile_detector_sampler(seed=5).sample(20_000, separate_observables=True)
