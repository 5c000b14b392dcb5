#!/usr/bin/env python3
"""Golden decoding fixtures: a small circuit, its DEM, sampled shots, and the
predictions Python PyMatching 2.4 makes for them (plain and correlated).

The Rust test decoder/tests/golden.rs checks that qecd's matching agrees bit
for bit. Regenerate with:

    ~/.cache/qecd/pyenv/bin/python scripts/make_golden_fixtures.py

It uses the circuit qecd itself wrote (fixtures/golden/d5_si1000.stim, made by
`qecd sample -d 5 -r 5 --p 0.004 --circuit-out ...`), so the fixture tests
PyMatching's decoding, not circuit generation.
"""
import pathlib

import numpy as np
import pymatching
import stim

HERE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "golden"


def main() -> None:
    circuit = stim.Circuit.from_file(HERE / "d5_si1000.stim")
    dem = circuit.detector_error_model(decompose_errors=True)
    (HERE / "d5_si1000.dem").write_text(str(dem))
    sampler = circuit.compile_detector_sampler(seed=20261121)
    dets, obs = sampler.sample(4096, separate_observables=True)
    stim.write_shot_data_file(data=dets, path=str(HERE / "d5_si1000.b8"), format="b8", num_detectors=dem.num_detectors)
    stim.write_shot_data_file(data=obs, path=str(HERE / "d5_si1000.obs.01"), format="01", num_observables=dem.num_observables)
    plain = pymatching.Matching.from_detector_error_model(dem)
    corr = pymatching.Matching.from_detector_error_model(dem, enable_correlations=True)
    for name, matching, kwargs in [("matching", plain, {}), ("correlated", corr, {"enable_correlations": True})]:
        pred = matching.decode_batch(dets, **kwargs).astype(np.bool_)
        stim.write_shot_data_file(data=pred, path=str(HERE / f"d5_si1000.{name}.01"), format="01", num_observables=dem.num_observables)
        print(name, "errors:", int(np.any(pred != obs, axis=1).sum()), "of", len(obs))
    print("pymatching", pymatching.__version__, "stim", stim.__version__)


if __name__ == "__main__":
    main()
