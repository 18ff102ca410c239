"""The gRPC protocol's message classes, built from `proto/inference.desc` in a private descriptor
pool (see tools/make_proto.py): `messages()["ModelInferRequest"]` etc."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"


@cache
def _file() -> Any:
    """The proto's FileDescriptorProto."""
    from google.protobuf import descriptor_pb2

    data = resources.files("service.kserve").joinpath("proto/inference.desc").read_bytes()
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(data).file
    return file


@cache
def messages() -> dict[str, Any]:
    """Top-level message classes by name (nested ones are their attributes)."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    classes = message_factory.GetMessageClassesForFiles([_file().name], pool)
    return {name.removeprefix(PACKAGE + "."): cls for name, cls in classes.items() if name.count(".") == 1}


def methods() -> dict[str, tuple[str, str]]:
    """RPC name -> (request, response) message names, from the service descriptor."""
    (service,) = _file().service
    strip = f".{PACKAGE}."
    return {
        m.name: (m.input_type.removeprefix(strip), m.output_type.removeprefix(strip)) for m in service.method
    }
