"""KServe v2 over gRPC (`inference.GRPCInferenceService`, Triton's service name): grpcio's asyncio
server in the app's event loop, answering from the same state, batcher and infer core as HTTP.

Off unless `YOLOR_GRPC_PORT` is set. API keys travel as metadata (`authorization: Bearer <key>` or
`x-api-key`); health RPCs need none, as `/v2/health/*`. Service errors map to gRPC status codes
(400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 413
RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, ...). Inputs may come as
`raw_input_contents` (what tritonclient sends) or typed `contents`; outputs always go back as
`raw_output_contents`, one entry per output, which is all Triton's clients read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from service.core.auth import presented_key
from service.core.errors import Forbidden, InvalidTensor, ServiceError
from service.core.state import ServiceState
from service.kserve import inference, model_repository, models
from service.kserve.messages import SERVICE, messages, methods
from service.kserve.statistics import StatisticsBook
from service.kserve.tensors import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    Tensor,
    TensorError,
    datatype_of,
    from_raw,
    parse_shape,
    to_raw,
)
from service.logs import start_request
from service.tracing import RequestTrace, exemplar

log = logging.getLogger(__name__)

# Not traced: the probes (a span per probe would drown the requests' traces).
_UNTRACED = frozenset({"ServerLive", "ServerReady", "ModelReady"})
# A server span's error statuses (OpenTelemetry's gRPC conventions; the rest are the client's doing).
_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Typed `contents` field of each datatype (FP16 has none: raw contents only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_PUBLIC = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})  # no API key, as /v2/health
_ADMIN = frozenset({"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})  # admin keys only


def _parameter(value: Any) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _contents(tensor: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise TensorError(f"{where}: {datatype} needs raw_input_contents")
    values = list(getattr(tensor.contents, field))
    count = int(np.prod(shape, dtype=np.int64))
    if len(values) != count:
        raise TensorError(f"{where}: {len(values)} values for shape {list(shape)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [bytes(v) for v in values]
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=DATATYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as e:
        raise TensorError(f"{where}: contents do not fit {datatype}: {e}") from None


def to_infer_request(message: Any) -> InferRequest:
    """A ModelInferRequest as the transport-free InferRequest; TensorError when malformed."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise TensorError(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    if not message.inputs:
        raise TensorError("'inputs' must be a non-empty list")
    inputs = []
    for i, tensor in enumerate(message.inputs):
        where = f"input {tensor.name!r}"
        datatype_of(tensor.datatype, f"{where}: datatype")
        shape = parse_shape(list(tensor.shape), f"{where}: shape")
        if raw:
            data = from_raw(raw[i], tensor.datatype, shape, where)
        else:
            data = _contents(tensor, tensor.datatype, shape, where)
        params = {k: _parameter(v) for k, v in tensor.parameters.items()}
        inputs.append(Tensor(tensor.name, tensor.datatype, data, params))
    return InferRequest(
        id=message.id,
        parameters={k: _parameter(v) for k, v in message.parameters.items()},
        inputs=inputs,
        outputs=[RequestedOutput(out.name) for out in message.outputs],
    )


class GrpcServer:
    """`start()` binds and serves; `stop(grace_s)` lets calls in flight finish."""

    def __init__(self, state: ServiceState, statistics: StatisticsBook) -> None:
        self.state, self.statistics = state, statistics
        self._server: Any = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        import grpc

        limit = self.state.settings.max_body_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1)]
        self._server = grpc.aio.server(options=options)
        handlers = {}
        for name, (request_type, response_type) in methods().items():
            request_cls, response_cls = messages()[request_type], messages()[response_type]
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._wrap(name, getattr(self, f"_{name}")),
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        await self._server.start()
        log.info("KServe v2 gRPC on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace_s: float) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)

    def _wrap(
        self, name: str, fn: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        import grpc

        metrics = self.state.metrics
        route = f"grpc:{name}"

        async def handler(request: Any, context: Any) -> Any:
            start, status = time.perf_counter(), "OK"
            metadata = dict(context.invocation_metadata() or ())
            request_id = start_request(metadata.get("x-request-id"))
            traced = self._trace(name, metadata, request_id)
            try:
                answer = {"x-request-id": request_id, **(traced.headers() if traced is not None else {})}
                await context.send_initial_metadata(tuple(answer.items()))
                if name not in _PUBLIC:
                    self._authorize(context, admin=name in _ADMIN)
                return await fn(request, context)
            except ServiceError as e:
                status = _STATUS.get(e.status, "INTERNAL")
                if e.status not in (404, 500):
                    metrics.reject(e.code)
                await context.abort(getattr(grpc.StatusCode, status), e.message)
            except TensorError as e:
                status = "INVALID_ARGUMENT"
                metrics.reject(InvalidTensor.code)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except asyncio.CancelledError:
                status = "CANCELLED"
                raise
            except Exception:
                status = "INTERNAL"
                log.exception("unhandled error in gRPC %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            finally:
                metrics.requests.labels(route=route, status=status).inc()
                metrics.request_duration.labels(route=route).observe(time.perf_counter() - start, exemplar())
                if traced is not None:
                    code = getattr(grpc.StatusCode, status).value[0]
                    traced.end(
                        {"rpc.grpc.status_code": code}, error=status if status in _SERVER_ERRORS else None
                    )

        return handler

    def _trace(self, name: str, metadata: dict[str, str], request_id: str) -> RequestTrace | None:
        """The call's server span, the child of the client's `traceparent` metadata when it sent one,
        while tracing is on (not for the probes)."""
        if self.state.tracing is None or name in _UNTRACED:
            return None
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}
        return self.state.tracing.start(f"{SERVICE}/{name}", metadata, attributes, request_id=request_id)

    def _authorize(self, context: Any, *, admin: bool = False) -> None:
        """An API key (none needed when none is set), or with `admin` one of the admin keys (403 for
        everyone when none is set), as the HTTP routes."""
        keys = self.state.admin_keys if admin else self.state.api_keys
        if admin and not keys.enabled:
            raise Forbidden("the admin API is disabled: set YOLOR_ADMIN_KEYS to enable it")
        if not keys.enabled:
            return
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        presented = presented_key(metadata.get("authorization"), metadata.get("x-api-key"))
        how = "metadata 'authorization: Bearer <key>' or 'x-api-key: <key>'"
        keys.check(presented, what="an admin key" if admin else "an API key", how=how)

    # The RPCs -------------------------------------------------------------------------------------
    async def _ServerLive(self, request: Any, context: Any) -> Any:
        return messages()["ServerLiveResponse"](live=True)

    async def _ServerReady(self, request: Any, context: Any) -> Any:
        return messages()["ServerReadyResponse"](ready=self.state.readiness.ready)

    async def _ServerMetadata(self, request: Any, context: Any) -> Any:
        return messages()["ServerMetadataResponse"](**models.server_metadata())

    async def _ModelReady(self, request: Any, context: Any) -> Any:
        inference.target(self.state, request.name, request.version).loaded(self.state)
        return messages()["ModelReadyResponse"](ready=self.state.readiness.ready)

    async def _ModelMetadata(self, request: Any, context: Any) -> Any:
        from google.protobuf import json_format

        meta = models.metadata(inference.target(self.state, request.name, request.version).served(self.state))
        return json_format.ParseDict(meta, messages()["ModelMetadataResponse"]())

    async def _ModelConfig(self, request: Any, context: Any) -> Any:
        from google.protobuf import json_format

        config = inference.config_json(self.state, request.name, request.version)
        return messages()["ModelConfigResponse"](
            config=json_format.ParseDict(config, messages()["ModelConfig"]())
        )

    async def _ModelStatistics(self, request: Any, context: Any) -> Any:
        from google.protobuf import json_format

        body = inference.statistics_json(self.state, self.statistics, request.name or None, request.version)
        return json_format.ParseDict(body, messages()["ModelStatisticsResponse"]())

    async def _ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.monotonic()
        at = inference.target(self.state, request.model_name, request.model_version)
        parsed = to_infer_request(request)
        gone = asyncio.Event()
        context.add_done_callback(lambda _: gone.set())  # the call ended: cancelled by the client

        async def disconnected() -> None:
            await gone.wait()

        ran = await inference.infer(
            self.state, self.statistics, at, parsed, started=started, disconnected=disconnected
        )
        response = messages()["ModelInferResponse"](
            model_name=request.model_name, model_version=str(ran.version), id=request.id
        )
        for out in ran.outputs:
            response.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.shape))
            response.raw_output_contents.append(to_raw(out.data, out.datatype))
        return response

    async def _RepositoryIndex(self, request: Any, context: Any) -> Any:
        response = messages()["RepositoryIndexResponse"]()
        for entry in model_repository.index(self.state, ready=request.ready):
            response.models.add(**entry)
        return response

    async def _RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        parameters = {k: _parameter(v) for k, v in request.parameters.items()}
        await model_repository.load(self.state, request.model_name, parameters)
        return messages()["RepositoryModelLoadResponse"]()

    async def _RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        parameters = {k: _parameter(v) for k, v in request.parameters.items()}
        await model_repository.unload(self.state, request.model_name, parameters)
        return messages()["RepositoryModelUnloadResponse"]()
