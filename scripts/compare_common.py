"""What the comparison scripts against Python decoders share: running qecd,
scoring predictions, and McNemar's test on the same shots."""
import math
import subprocess
import sys
import time

import numpy as np
import stim


def fail(who, message):
    """Exits with `who: message`."""
    sys.exit(f"{who}: {message}")


def run(who, cmd):
    """Runs cmd and returns its stdout; on failure, exits naming the command
    and showing its stderr."""
    cmd = [str(c) for c in cmd]
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        fail(who, f"could not start {cmd[0]}: {e}")
    if done.returncode != 0:
        fail(who, f"this command failed with exit status {done.returncode}:\n  {' '.join(cmd)}\n"
                  f"{done.stderr.strip() or '(no stderr)'}")
    return done.stdout


def timed_run(who, cmd):
    """Runs cmd as `run` does; returns its wall time in seconds."""
    start = time.perf_counter()
    run(who, cmd)
    return time.perf_counter() - start


def failures(predicted, actual):
    """Per shot: whether any observable was predicted wrongly."""
    return np.any(predicted != actual, axis=1)


def rate(errors, shots):
    """LER and its binomial standard error."""
    ler = errors / shots
    return ler, math.sqrt(ler * (1 - ler) / shots)


def mcnemar(b, c):
    """z and two-sided p for b == c, from the discordant counts b and c."""
    if b + c == 0:
        return 0.0, 1.0
    z = (b - c) / math.sqrt(b + c)
    return z, math.erfc(abs(z) / math.sqrt(2))


def sample_shots(who, qecd, tmp, d, r, p, n, seed):
    """Samples n shots of the SI1000 memory-Z circuit of distance d, r rounds
    and strength p with `qecd sample` into the folder tmp. Returns the
    circuit, its path, the b8 detection-event file's path, and the events and
    observable flips as boolean arrays."""
    circuit_path, dets_path, obs_path = tmp / "c.stim", tmp / "dets.b8", tmp / "obs.01"
    run(who, [qecd, "sample", "-d", d, "-r", r, "--basis", "z", "--noise", "si1000", "--p", p, "--shots", n,
              "--seed", seed, "--out", dets_path, "--out-format", "b8", "--obs-out", obs_path,
              "--circuit-out", circuit_path])
    circuit = stim.Circuit.from_file(str(circuit_path))
    dets = stim.read_shot_data_file(path=str(dets_path), format="b8", num_detectors=circuit.num_detectors)
    obs = stim.read_shot_data_file(path=str(obs_path), format="01", num_observables=circuit.num_observables)
    if len(dets) != n or len(obs) != n:
        fail(who, f"qecd sample wrote {len(dets)} detection-event shots and {len(obs)} observable shots, not {n}")
    return circuit, circuit_path, dets_path, dets, obs
