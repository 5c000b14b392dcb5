#!/usr/bin/env python3
"""Discovers qecd's gRPC API through server reflection, with no generated code.

Uses Python's stock `grpcio-reflection` client (its descriptor database speaks
the v1alpha protocol), then calls ListModels through the descriptors it got:

    python examples/reflection_client.py --addr 127.0.0.1:50051

Prints the services, the Decoder's methods and the served models.
"""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="HOST:PORT of `qecd serve`")
    args = parser.parse_args()
    with grpc.insecure_channel(args.addr) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        print("services:", ", ".join(services))
        pool = DescriptorPool(database)
        decoder = pool.FindServiceByName("qecd.v1.Decoder")
        print("qecd.v1.Decoder methods:", ", ".join(m.name for m in decoder.methods))
        method = decoder.methods_by_name["ListModels"]
        request_type = GetMessageClass(method.input_type)
        reply_type = GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{decoder.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=reply_type.FromString,
        )
        reply = call(request_type(), timeout=30)
        for model in reply.models:
            print(f"model {model.name}: d={model.distance}, width {model.width}, {model.layers} layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
