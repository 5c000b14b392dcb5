"""qecd's decoders inside sinter: sinter.collect, and the sinter command line."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

sinter = pytest.importorskip("sinter", reason="sinter is not installed (scripts/torch-env installs it)")
stim = pytest.importorskip("stim")

import qecd  # noqa: E402

from conftest import fixture_circuit  # noqa: E402


def test_sinter_decoders_dict() -> None:
    decoders = qecd.sinter_decoders()
    assert sorted(decoders) == ["qecd-belief", "qecd-correlated", "qecd-matching", "qecd-neural-matching"]
    assert all(isinstance(d, sinter.Decoder) for d in decoders.values())
    assert "qecd-neural" in qecd.sinter_decoders(model="d3_z_si1000_p003")


def test_compiled_decoder_takes_sinter_arrays(d5_dem, d5_shots) -> None:
    import pymatching

    dets, _ = d5_shots
    packed = np.packbits(dets, axis=1, bitorder="little")
    compiled = qecd.sinter_decoders()["qecd-correlated"].compile_decoder_for_dem(dem=d5_dem)
    got = compiled.decode_shots_bit_packed(bit_packed_detection_event_data=packed)
    baseline = pymatching.Matching.from_detector_error_model(d5_dem, enable_correlations=True).decode_batch(
        packed, bit_packed_shots=True, bit_packed_predictions=True, enable_correlations=True
    )
    assert got.dtype == np.uint8 and got.shape == (len(dets), 1)
    np.testing.assert_array_equal(got, baseline)


def _tasks() -> list:
    return [
        sinter.Task(circuit=fixture_circuit(d), json_metadata={"d": d, "p": 0.003, "noise": "si1000"})
        for d in (3, 5)
    ]


def test_sinter_collect() -> None:
    stats = sinter.collect(
        num_workers=2,
        tasks=_tasks(),
        decoders=["qecd-correlated", "qecd-matching", "pymatching"],
        max_shots=3_000,
        max_errors=10_000,
        custom_decoders=qecd.sinter_decoders(),
    )
    by = {(s.decoder, s.json_metadata["d"]): s for s in stats}
    assert sorted(by) == sorted((dec, d) for dec in ("qecd-correlated", "qecd-matching", "pymatching") for d in (3, 5))
    for s in stats:
        assert s.shots == 3_000, s
        assert s.discards == 0
    # qecd-matching is PyMatching: on independent samples of 3,000 shots the
    # counts agree within sampling noise (d=3: about 3% of shots fail).
    for d in (3, 5):
        a, b = by[("qecd-matching", d)].errors, by[("pymatching", d)].errors
        assert abs(a - b) <= 5 * np.sqrt(a + b + 1), (d, a, b)
    assert 0 < by[("qecd-correlated", 3)].errors < 300
    assert by[("qecd-correlated", 5)].errors < by[("qecd-correlated", 3)].errors


def test_sinter_command_line(tmp_path: pathlib.Path) -> None:
    circuit = tmp_path / "d=3,p=0.003,noise=si1000.stim"
    fixture_circuit(3).to_file(circuit)
    csv = tmp_path / "stats.csv"
    # The `sinter` script that pip installed beside this interpreter.
    sinter_cli = pathlib.Path(sys.executable).parent / "sinter"
    assert sinter_cli.exists(), f"pip installs sinter's command line as {sinter_cli}"
    run = subprocess.run(
        [str(sinter_cli)]
        + [
            "collect",
            "--circuits", str(circuit),
            "--decoders", "qecd-correlated", "qecd-matching",
            "--custom_decoders_module_function", "qecd:sinter_decoders",
            "--metadata_func", "auto",
            "--max_shots", "2000",
            "--max_errors", "100000",
            "--processes", "2",
            "--save_resume_filepath", str(csv),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    stats = sinter.read_stats_from_csv_files(csv)
    assert sorted(s.decoder for s in stats) == ["qecd-correlated", "qecd-matching"]
    for s in stats:
        assert s.shots == 2_000 and s.json_metadata == {"d": 3, "p": 0.003, "noise": "si1000"}
        assert 0 < s.errors < 200
