#!/usr/bin/env python3
"""Writes the model card (NAME.json) beside a zoo checkpoint, from the
checkpoint's own metadata plus the machine it was trained on.

    python3 scripts/zoo_card.py fixtures/models/d3_z_si1000_p003.safetensors

The card holds the exact commands, the time taken, the hardware, the samples
seen and the evaluation figures recorded in the checkpoint.
"""
import json
import os
import pathlib
import platform
import struct
import sys


def read_meta(path: pathlib.Path) -> dict:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return json.loads(header["__metadata__"]["qecd"])


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    path = pathlib.Path(sys.argv[1])
    meta = read_meta(path)
    prov = meta["provenance"]
    card = {
        "checkpoint": path.name,
        "code": {"distance": meta["layout"]["distance"], "basis": meta["layout"]["basis"]},
        "noise": {"model": prov["noise"], "p": prov["p"]},
        "rounds_trained": prov["rounds"],
        "config": meta["config"],
        "commands": prov["commands"],
        "seeds": prov["seeds"],
        "samples_seen": prov["samples_seen"],
        "steps": prov["steps"],
        "training_seconds": round(prov["seconds"], 1),
        "samples_per_second": round(prov["samples_seen"] / max(prov["seconds"], 1e-9), 1),
        "device": prov["device"],
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores",
        "temperature": meta["temperature"],
        "evaluation": meta["evaluation"],
    }
    out = path.with_suffix(".json")
    out.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
