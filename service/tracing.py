"""OpenTelemetry traces, off unless asked for: `YOLOR_TRACING=1`, or (unset) an OTLP endpoint in
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. Configured by the standard
`OTEL_*` variables: the exporter and its protocol, endpoint, headers and timeout, the sampler, the
service name and resource attributes, the batch processor's queue.

Off, the SDK is never imported: no span exists, no exporter thread runs, and the hot path reads a
context variable (`recording()`: None) where it would trace. On, a request is a server span (the
HTTP middleware, the gRPC port) whose W3C `traceparent` / `tracestate` come from the client when it
sends them and go back in the answer; its stages are child spans with the times the detector
measured (`decode`, `letterbox`, `queue.wait`, `inference`, `postprocess`, a sliced image's `tile`s
and `merge`), made on the event loop after the fact, so that no context has to cross into the
worker threads. A batch serves many traces: each backend batch is a span of its own (a root) with a
link to every traced image it ran, and each image's `inference` span links back to it. A batch is
sampled when one of the images it ran is (`_linked_roots`): sampling off exports nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from service.logs import REQUEST_ID, TRACE_IDS

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Tracer

log = logging.getLogger(__name__)

SERVICE_NAME = "yolor-serving"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACE_HEADERS = ("traceparent", "tracestate")  # W3C Trace Context: taken from a request, set on its answer
EXEMPLAR_TRACE_ID = "trace_id"  # the exemplar label Grafana's Prometheus datasource links to a trace
SHUTDOWN_TIMEOUT_S = 5.0  # flushing what is queued at exit; an unreachable collector costs no more
# Unless OTEL_BSP_* say otherwise: exports of at most 64 spans every 0.5 s instead of the SDK's 512
# every 5 s. Encoding spans holds the GIL; smaller exports spread that out, which lowers the p99 of
# requests beside them for the same CPU (measured: docs/benchmarks.md, "Tracing (issue 31)").
EXPORT_BATCH_SPANS, EXPORT_DELAY_MS = 64, 500
Attributes = Mapping[str, "str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]"]


def start_tracing(setting: bool | None) -> Tracing | None:
    """A `Tracing` when tracing is `wanted`, else None (nothing imported)."""
    return Tracing() if wanted(setting) else None


def wanted(setting: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether tracing is on: `YOLOR_TRACING` when set, else whether an OTLP endpoint is; never
    with `OTEL_SDK_DISABLED=true`."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if setting is not None:
        return setting
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


# The request (or gRPC call) being served in this task, while it is traced: set by `Tracing.start`.
CURRENT: ContextVar[RequestTrace | None] = ContextVar("yolor_trace", default=None)


def detach() -> None:
    """At the start of a task that outlives the request that started it (a batcher's loop, a
    stream, a webhook sender, a model's closing): neither its log lines nor its spans are that
    request's (a task starts with a copy of its creator's context)."""
    CURRENT.set(None)
    TRACE_IDS.set(None)
    REQUEST_ID.set(None)


def recording() -> RequestTrace | None:
    """This task's request trace when it is sampled (its spans are recorded), else None."""
    trace = CURRENT.get()
    return trace if trace is not None and trace.sampled else None


def exemplar() -> dict[str, str] | None:
    """An OpenMetrics exemplar for a latency observed now: the sampled request's trace and span."""
    trace = recording()
    return None if trace is None else {EXEMPLAR_TRACE_ID: trace.trace_id, "span_id": trace.span_id}


class Tracing:
    """The tracer provider and its exporter, built from the `OTEL_*` variables (the SDK's exporters
    and resource read theirs themselves); `shutdown` at exit."""

    def __init__(self) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        env = os.environ
        named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
        resource = Resource.create({} if named else {"service.name": SERVICE_NAME})  # + the variables
        self.provider: TracerProvider = TracerProvider(
            sampler=_linked_roots(_sampler(env)), resource=resource, shutdown_on_exit=False
        )
        exporters = _exporters(env)
        queue = int(env.get("OTEL_BSP_MAX_QUEUE_SIZE", "2048"))
        size = None if "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in env else min(EXPORT_BATCH_SPANS, queue)
        delay = None if "OTEL_BSP_SCHEDULE_DELAY" in env else EXPORT_DELAY_MS  # None: the variable's
        for exporter in exporters:  # each queue bounded (OTEL_BSP_MAX_QUEUE_SIZE): spans over it are dropped
            processor = BatchSpanProcessor(exporter, schedule_delay_millis=delay, max_export_batch_size=size)
            self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("yolor-serving")
        # A monotonic time (what the service measures with) as the epoch nanoseconds spans carry.
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        exporting = ", ".join(type(e).__module__ for e in exporters) or "no exporter"
        log.info("tracing on (%s), sampler %s", exporting, self.provider.sampler.get_description())

    def wall(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset_ns

    def start(
        self,
        name: str,
        carrier: Mapping[str, str],
        attributes: Attributes,
        *,
        request_id: str | None = None,
        kind: Literal["server", "consumer"] = "server",
    ) -> RequestTrace:
        """The span of a request that starts now in this task (a server span; a stream's frame: a
        consumer span), the child of the client's `traceparent` in `carrier` when it sent one; set as
        this task's `CURRENT`, its ids in the task's log records."""
        from opentelemetry import propagate, trace

        parent = propagate.extract(carrier)
        if request_id is not None:
            attributes = {**attributes, "yolor.request_id": request_id}
        span_kind = trace.SpanKind.SERVER if kind == "server" else trace.SpanKind.CONSUMER
        start = self.wall(time.monotonic())  # the clock its children's times are on
        span = self.tracer.start_span(
            name, context=parent, kind=span_kind, attributes=attributes, start_time=start
        )
        request = RequestTrace(self, span, trace.set_span_in_context(span))
        request.tokens = (CURRENT.set(request), TRACE_IDS.set((request.trace_id, request.span_id)))
        return request

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Flush what is queued and stop the exporter thread, waiting at most about `timeout_s` (an
        exporter stuck on an unreachable collector is left to its daemon thread); whether it ended."""
        ended = threading.Event()

        def run() -> None:
            self.provider.force_flush(int(timeout_s * 1000))
            self.provider.shutdown()
            ended.set()

        threading.Thread(target=run, name="yolor-tracing-shutdown", daemon=True).start()
        return ended.wait(timeout_s + 1.0)


@dataclass(eq=False)
class RequestTrace:
    """One traced request: its server span, and the spans of its stages."""

    tracing: Tracing
    span: Span
    context: Context  # the server span's, for its children
    tokens: tuple[Token[RequestTrace | None], Token[tuple[str, str] | None]] | None = None  # to end CURRENT

    @property
    def sampled(self) -> bool:
        return bool(self.span.get_span_context().trace_flags.sampled)

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"

    @property
    def span_id(self) -> str:
        return f"{self.span.get_span_context().span_id:016x}"

    def headers(self) -> dict[str, str]:
        """`traceparent` (and `tracestate`: what the propagators write, baggage aside) naming the
        server span, for the answer."""
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=self.context)
        return {k: v for k, v in carrier.items() if k != "baggage"}

    def open(
        self,
        name: str,
        start: float,
        *,
        parent: Span | None = None,
        attributes: Attributes | None = None,
        links: Sequence[SpanContext] = (),
    ) -> Span:
        """A child span (of `parent`, else of the server span) started at monotonic `start`: the
        caller ends it (`close`)."""
        from opentelemetry import trace

        context = self.context if parent is None else trace.set_span_in_context(parent)
        return self.tracing.tracer.start_span(
            name,
            context=context,
            attributes=attributes,
            links=[_link(c) for c in links],
            start_time=self.tracing.wall(start),
        )

    def close(
        self, span: Span, end: float, attributes: Attributes | None = None, *, error: str | None = None
    ) -> None:
        """End `span` at monotonic `end`; `error`: its status is an error with that description."""
        from opentelemetry.trace import Status, StatusCode

        if attributes:
            span.set_attributes(attributes)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=self.tracing.wall(end))

    def record(
        self,
        name: str,
        start: float,
        end: float,
        *,
        parent: Span | None = None,
        attributes: Attributes | None = None,
        links: Sequence[SpanContext] = (),
        error: str | None = None,
    ) -> None:
        """A finished child span from `start` to `end` (monotonic seconds); `error`: as `close`."""
        span = self.open(name, start, parent=parent, attributes=attributes, links=links)
        self.close(span, end, error=error)

    def end(self, attributes: Attributes, *, error: str | None = None) -> None:
        """End the server span (`error`: its status is an error with that description); in the
        task it started in, the task is no longer traced."""
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attributes(attributes)
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end(end_time=self.tracing.wall(time.monotonic()))
        if self.tokens is not None:
            with contextlib.suppress(ValueError):  # another context's (the call ended elsewhere)
                CURRENT.reset(self.tokens[0])
                TRACE_IDS.reset(self.tokens[1])


@dataclass(frozen=True, eq=False)
class PassTrace:
    """What the batcher keeps of a traced image: the request, and the span its batch links to."""

    request: RequestTrace
    span: Span


def batch_span(
    traced: Sequence[PassTrace], start: float, end: float, attributes: Attributes
) -> SpanContext | None:
    """The span of one backend batch (a root, linked to every traced image it ran), from `start` to
    `end` (monotonic seconds): its context, for those images' `inference` spans to link back to."""
    if not traced:
        return None
    from opentelemetry.context import Context

    tracing = traced[0].request.tracing
    linked = {t.span.get_span_context().span_id: t.span.get_span_context() for t in traced}  # once each
    span = tracing.tracer.start_span(
        "batch",
        context=Context(),  # a root: it serves many traces
        attributes=attributes,
        links=[_link(context) for context in linked.values()],
        start_time=tracing.wall(start),
    )
    span.end(end_time=tracing.wall(end))
    return span.get_span_context()


def _link(context: SpanContext) -> Link:
    from opentelemetry.trace import Link

    return Link(context)


def _sampler(env: Mapping[str, str]) -> Sampler:
    """`OTEL_TRACES_SAMPLER` (+ `_ARG`), the SDK's names; default `parentbased_always_on`."""
    from opentelemetry.sdk.trace import sampling

    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    try:
        rate = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        rate = 1.0
    rate = min(1.0, max(0.0, rate))
    samplers: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(rate),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(rate)),
    }
    if name not in samplers:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r}: one of {', '.join(samplers)}")
    return samplers[name]


def _exporters(env: Mapping[str, str]) -> list[Any]:
    """`OTEL_TRACES_EXPORTER`, a comma-separated list: `otlp` (the default), `console`, `none`
    (spans for the logs' trace ids and the exemplars only)."""
    kinds = [k.strip().lower() for k in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if k.strip()]
    return [_exporter(kind, env) for kind in kinds if kind != "none"]


def _exporter(kind: str, env: Mapping[str, str]) -> Any:
    """One exporter: `otlp` (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` `http/protobuf`, the default, or
    `grpc`) or `console`."""
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r}: one of otlp, console, none")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: http/protobuf or grpc")


def _linked_roots(inner: Sampler) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    class LinkedRoots(sampling.Sampler):
        """`inner`, except that a root span with a sampled link (a batch that ran a sampled
        image) is sampled: a batch belongs to no single trace, but is kept when one it served is."""

        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Link] | None = None,
            trace_state: Any = None,
        ) -> sampling.SamplingResult:
            from opentelemetry import trace

            is_root = not trace.get_current_span(parent_context).get_span_context().is_valid
            if is_root and links and any(link.context.trace_flags.sampled for link in links):
                return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"LinkedRoots{{{inner.get_description()}}}"

    return LinkedRoots()
