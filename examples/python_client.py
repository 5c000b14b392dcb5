#!/usr/bin/env python3
"""Decode surface-code shots with a qecd server from Python, through stubs
generated from proto/qecd/v1/decoder.proto by grpcio-tools (stock gRPC
tooling, nothing qecd-specific).

    python3 -m pip install grpcio grpcio-tools stim numpy
    qecd serve --listen 127.0.0.1:50051 &
    python3 examples/python_client.py --addr 127.0.0.1:50051 --shots 2000

It samples shots of Stim's rotated memory-Z circuit (d=3, 3 rounds, uniform
depolarizing noise, so not the noise the zoo model was trained on), streams
them round by round through one Decode stream with the neural decoder checked
by correlated matching, and prints both decoders' logical error rates on the
same shots, the mean confidence and the decision latencies. Exits 1 if any
shot is not answered exactly once.
"""
import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time

import grpc
import numpy as np
import stim
from grpc_tools import protoc


def load_stubs():
    """Generates the stubs into a temporary package `qecd_stubs.v1`: not
    `qecd.v1`, the proto file's own path, which the qecd Python package
    (python/) would shadow. The proto's package, and so the service's name
    on the wire, stays qecd.v1."""
    proto = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto", "qecd", "v1", "decoder.proto")
    out = tempfile.mkdtemp(prefix="qecd-stubs-")
    stage = os.path.join(out, "proto")
    os.makedirs(os.path.join(stage, "qecd_stubs", "v1"))
    shutil.copy(proto, os.path.join(stage, "qecd_stubs", "v1", "decoder.proto"))
    rc = protoc.main(["protoc", f"-I{stage}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "qecd_stubs/v1/decoder.proto"])
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed with status {rc}")
    sys.path.insert(0, out)
    return (importlib.import_module("qecd_stubs.v1.decoder_pb2"),
            importlib.import_module("qecd_stubs.v1.decoder_pb2_grpc"))


def pack(bits):
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--shots", type=int, default=2000)
    ap.add_argument("--p", type=float, default=0.003)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    pb, rpc = load_stubs()

    d, rounds = 3, 3
    circuit = stim.Circuit.generated("surface_code:rotated_memory_z", distance=d, rounds=rounds,
                                     after_clifford_depolarization=args.p, before_measure_flip_probability=args.p,
                                     after_reset_flip_probability=args.p)
    dets, obs = circuit.compile_detector_sampler(seed=args.seed).sample(args.shots, separate_observables=True)
    coords = circuit.get_detector_coordinates()

    channel = grpc.insecure_channel(args.addr)
    stub = rpc.DecoderStub(channel)
    models = stub.ListModels(pb.ListModelsRequest()).models
    print("models on the server:", ", ".join(f"{m.name} (d={m.distance})" for m in models))

    code = pb.Code(distance=d, basis=pb.BASIS_Z, rounds=rounds, noise="depolarizing", p=args.p)
    opened = {}

    def requests():
        yield pb.DecodeRequest(open=pb.OpenSession(code=code, decoder=pb.DECODER_KIND_NEURAL_CHECKED,
                                                   max_backlog=1 << 30))
        # The session's bit order: stabilizers by (x, y) as SessionOpened lists them.
        while "order" not in opened:
            time.sleep(0.001)
        order = opened["order"]
        for shot in range(args.shots):
            per_round = {}
            for k, (x, y, t) in ((k, tuple(coords[k][:3])) for k in range(len(coords))):
                per_round.setdefault(int(t), {})[order[(x, y)]] = bool(dets[shot, k])
            for t in range(rounds + 1):
                cells = per_round[t]
                bits = [cells[s] for s in sorted(cells)]
                if t < rounds:
                    yield pb.DecodeRequest(round=pb.Round(shot=shot, round=t, num_events=len(bits), events=pack(bits)))
                else:
                    yield pb.DecodeRequest(final=pb.FinalRound(shot=shot, num_events=len(bits), events=pack(bits)))

    results, checks, acks = {}, {}, 0
    for response in stub.Decode(requests()):
        kind = response.WhichOneof("message")
        if kind == "opened":
            o = response.opened
            opened["order"] = {(x, y): i for i, (x, y) in enumerate(zip(o.stabilizer_x, o.stabilizer_y))}
        elif kind == "ack":
            acks += 1
        elif kind == "result":
            if response.result.shot in results:
                sys.exit(f"shot {response.result.shot} answered twice")
            results[response.result.shot] = response.result
        elif kind == "check":
            checks[response.check.shot] = response.check
    if len(results) != args.shots or acks != args.shots * rounds:
        sys.exit(f"{args.shots} shots sent, {len(results)} answered, {acks} of {args.shots * rounds} rounds acknowledged")
    actual = obs[:, 0]
    neural = np.array([results[s].prediction[0] & 1 for s in range(args.shots)], dtype=bool)
    baseline = np.array([checks[s].baseline_prediction[0] & 1 for s in sorted(checks)], dtype=bool)
    latency = np.array([results[s].decision_latency_ns for s in range(args.shots)]) / 1e3
    print(f"{args.shots} shots of d={d}, {rounds} rounds, depolarizing p={args.p}, each answered once")
    print(f"neural LER/shot {np.mean(neural != actual):.4f}; correlated matching on the same shots "
          f"{np.mean(baseline != actual[sorted(checks)]):.4f} ({len(checks)} checked)")
    print(f"mean confidence {np.mean([results[s].confidence for s in range(args.shots)]):.4f}; "
          f"server decision latency p50 {np.percentile(latency, 50):.1f} µs, p99 {np.percentile(latency, 99):.1f} µs")


if __name__ == "__main__":
    main()
