#!/usr/bin/env python3
"""Writes the Stim result-format fixtures under fixtures/formats/.

Every case is a random boolean array (fixed numpy seed, plus a few hand-placed
edge rows) written with `stim.write_shot_data_file` in each result format Stim
can write it in. The `01` file doubles as the truth: the Rust tests in
simulator-bridge/src/formats.rs read every other format and compare it with the
`01` file, then write the bits back and compare bytes with Stim's output.

`manifest.json` lists each case's shot count, bit split and formats;
`README.md` shows the same as a table. Run it with the project's Python
(Stim 1.16):

    ~/.cache/qecd/pyenv/bin/python scripts/make_format_fixtures.py

The output is deterministic, so rerunning it leaves the files unchanged.
"""

import json
import pathlib

import numpy as np
import stim

SEED = 20240611
FORMATS = ["01", "b8", "r8", "ptb64", "hits", "dets"]
OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "formats"


def random_bits(rng, shots, bits, density):
    return rng.random((shots, bits)) < density


def edge_rows(data):
    """Overwrites the first rows with patterns that stress r8, hits and dets."""
    shots, bits = data.shape
    if shots < 6 or bits == 0:
        return data
    data[0, :] = False  # no hits: an r8 run of the whole width, an empty hits line, a bare "shot"
    data[1, :] = True  # every bit: r8 all zero bytes, the longest hits/dets lines
    data[2, :] = False
    data[2, -1] = True  # only the last bit (the last observable in dets)
    data[3, :] = False
    data[3, 0] = True  # only the first bit
    if bits > 255:
        data[4, :] = False
        data[4, 255] = True  # exactly 255 zeros, then a one: r8 0xFF 0x00
        data[5, :] = False
        data[5, 254] = True  # 254 zeros, then a one: r8 0xFE
    return data


def cases(rng):
    """(name, data, labels, density, note); labels as stim keyword arguments."""
    yield (
        "dense_128x37",
        edge_rows(random_bits(rng, 128, 37, 0.5)),
        {"num_detectors": 33, "num_observables": 4},
        0.5,
        "width not a multiple of 8; D and L labels",
    )
    yield (
        "bytes_64x8",
        random_bits(rng, 64, 8, 0.5),
        {"num_detectors": 8},
        0.5,
        "exactly one byte per shot, one ptb64 group",
    )
    yield (
        "sparse_128x300",
        edge_rows(random_bits(rng, 128, 300, 0.01)),
        {"num_measurements": 300},
        0.01,
        "long zero runs (r8 0xFF bytes), M labels, ptb64 blocks past 256 bits",
    )
    yield (
        "heavy_64x70",
        edge_rows(random_bits(rng, 64, 70, 0.9)),
        {"num_detectors": 60, "num_observables": 10},
        0.9,
        "mostly ones: r8 zero bytes, long hits and dets lines, L indices >= 10",
    )
    yield (
        "observables_64x5",
        random_bits(rng, 64, 5, 0.3),
        {"num_observables": 5},
        0.3,
        "observables only: dets writes L0..L4",
    )
    yield (
        "small_3x10",
        random_bits(rng, 3, 10, 0.4),
        {"num_detectors": 10},
        0.4,
        "3 shots: no ptb64 file (Stim needs a multiple of 64 shots)",
    )
    yield (
        "nobits_64x0",
        np.zeros((64, 0), dtype=np.bool_),
        {"num_detectors": 0},
        0.0,
        "0 bits per shot: b8 and ptb64 files are empty and read back as 0 shots",
    )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = {
        "generator": "scripts/make_format_fixtures.py",
        "stim_version": stim.__version__,
        "numpy_seed": SEED,
        "truth": "the .01 file of each case",
        "cases": [],
    }
    for name, data, labels, density, note in cases(rng):
        shots, bits = data.shape
        formats = [f for f in FORMATS if f != "ptb64" or shots % 64 == 0]
        for fmt in formats:
            path = OUT / f"{name}.{fmt}"
            stim.write_shot_data_file(data=data, path=str(path), format=fmt, **labels)
            back = stim.read_shot_data_file(path=str(path), format=fmt, **labels)
            expected_shots = 0 if bits == 0 and fmt in ("b8", "ptb64") else shots
            assert back.shape == (expected_shots, bits), (name, fmt, back.shape)
            if expected_shots:
                assert np.array_equal(back, data), (name, fmt)
        manifest["cases"].append(
            {
                "name": name,
                "shots": shots,
                "bits": bits,
                "measurements": labels.get("num_measurements", 0),
                "detectors": labels.get("num_detectors", 0),
                "observables": labels.get("num_observables", 0),
                "density": density,
                "formats": formats,
                "note": note,
            }
        )

    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    lines = [
        "# Stim result-format fixtures",
        "",
        f"Written by `{manifest['generator']}` with Stim {manifest['stim_version']} "
        f"(numpy seed {SEED}); do not edit by hand. Each case `NAME` has one file "
        "`NAME.FORMAT` per format; `NAME.01` is the truth. `manifest.json` holds the "
        "same table for the tests in `simulator-bridge/src/formats.rs`.",
        "",
        "| case | shots | bits | M | D | L | density | formats | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in manifest["cases"]:
        lines.append(
            f"| {c['name']} | {c['shots']} | {c['bits']} | {c['measurements']} | "
            f"{c['detectors']} | {c['observables']} | {c['density']} | "
            f"{' '.join(c['formats'])} | {c['note']} |"
        )
    (OUT / "README.md").write_text("\n".join(lines) + "\n")

    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(manifest['cases'])} cases to {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
