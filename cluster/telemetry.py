"""OpenTelemetry tracing for every process of the pipeline.

Configured from the standard environment variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ...) plus ``JUDO_TRACE_FILE`` for a local
JSON-lines file that ``judo traces summarize`` reads. Trace context crosses Kafka
as W3C ``traceparent``/``tracestate`` headers, and Ray calls as a plain dict
carrier, explicitly — Ray's own tracing hook is not relied upon.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACE_FILE_ENV = "JUDO_TRACE_FILE"
_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None
_trace_files: set[str] = set()


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (one ``write`` per span).

    Several processes may share the file: each span is written with a single
    ``O_APPEND`` write, so lines do not interleave on a local filesystem.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        payload = "".join(json.dumps(span_to_dict(s), separators=(",", ":")) + "\n" for s in spans).encode()
        with self._lock:
            if self._fd < 0:
                return SpanExportResult.FAILURE
            os.write(self._fd, payload)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_to_dict(span: ReadableSpan) -> dict:
    ctx = span.get_span_context()
    parent = span.parent
    start, end = span.start_time or 0, span.end_time or 0
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "start_ns": start,
        "end_ns": end,
        "duration_ms": (end - start) / 1e6,
        "service": span.resource.attributes.get("service.name"),
        "kind": span.kind.name,
        "status": span.status.status_code.name,
        "attributes": {k: _jsonable(v) for k, v in (span.attributes or {}).items()},
    }


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return list(value)


def setup_tracing(
    service_name: str | None = None,
    *,
    trace_file: str | Path | None = None,
    console: bool | None = None,
    synchronous: bool = False,
) -> TracerProvider:
    """Install the process-wide tracer provider once; later calls return the same one
    (adding their ``trace_file`` to it when it is new).

    Exporters: a JSON-lines file (``trace_file`` or ``$JUDO_TRACE_FILE``) and those of
    :func:`exporters_from_env` (OTLP/HTTP, console).
    The JSON-lines file is written as each span ends; ``synchronous`` does the same for the
    other exporters.
    """
    global _provider
    with _lock:
        if _provider is not None:
            if trace_file and str(trace_file) not in _trace_files:
                _trace_files.add(str(trace_file))
                _provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
            return _provider
        attributes = {}
        if service_name and not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = service_name
        provider = TracerProvider(resource=Resource.create(attributes))
        for exporter in exporters_from_env(trace_file, console):
            # the local file is written span by span: an actor killed without a flush loses nothing
            local = isinstance(exporter, JsonLinesSpanExporter)
            processor = SimpleSpanProcessor if synchronous or local else BatchSpanProcessor
            provider.add_span_processor(processor(exporter))
            if local:
                _trace_files.add(str(exporter.path))
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


def exporters_from_env(trace_file: str | Path | None, console: bool | None) -> list[SpanExporter]:
    """The span exporters the environment asks for.

    ``OTEL_TRACES_EXPORTER`` (comma list of ``otlp``, ``console``, ``none``) decides when set; an OTLP
    endpoint variable alone turns OTLP on only when it is unset. ``none`` turns off every OTel exporter,
    the endpoint too; the project's own JSON-lines file (``trace_file``/``$JUDO_TRACE_FILE``) stays.
    """
    setting = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    names = {n.strip() for n in setting.split(",") if n.strip()}
    if "none" in names:
        names.clear()
    exporters: list[SpanExporter] = []
    path = trace_file or os.environ.get(TRACE_FILE_ENV)
    if path:
        exporters.append(JsonLinesSpanExporter(path))
    if console or "console" in names:
        exporters.append(ConsoleSpanExporter())
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if "otlp" in names or (not setting and endpoint):
        exporters.append(OTLPSpanExporter())
    return exporters


def shutdown_tracing() -> None:
    """Flush and close exporters (call before a process exits)."""
    with _lock:
        if _provider is not None:
            _provider.shutdown()


def flush_tracing(timeout_ms: int = 10_000) -> None:
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def tracer(name: str = "judo_inspect") -> trace.Tracer:
    return trace.get_tracer(name)


# --------------------------------------------------------------------------- propagation


def inject_headers(context: otel_context.Context | None = None) -> list[tuple[str, bytes]]:
    """W3C trace-context headers for a Kafka record, from ``context`` or the current one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return [(k, v.encode("ascii")) for k, v in carrier.items()]


def extract_context(headers: Iterable[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context carried by Kafka headers (an empty context when there is none)."""
    carrier: dict[str, str] = {}
    for name, value in headers or []:
        if name in ("traceparent", "tracestate") and value:
            try:
                carrier[name] = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                continue
    return _PROPAGATOR.extract(carrier)


def context_to_carrier(context: otel_context.Context | None = None) -> dict[str, str]:
    """A plain dict to pass trace context through a Ray call or an HTTP request."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def context_from_carrier(carrier: dict[str, str] | None) -> otel_context.Context:
    return _PROPAGATOR.extract(dict(carrier or {}))


def trace_id_hex(context: otel_context.Context | None = None) -> str:
    """The 32-hex trace id of ``context`` (or the current span); empty when not sampled."""
    span = trace.get_current_span(context)
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


# --------------------------------------------------------------------------- reading trace files


def read_spans(path: str | Path) -> list[dict]:
    """Spans from a JSON-lines trace file; unreadable lines are skipped (a crash may cut the last one)."""
    spans = []
    with open(path) as handle:
        for line in handle:
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return spans


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(-(-q / 100 * len(ordered) // 1)) - 1))
    return float(ordered[rank])


def summarize_spans(spans: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per span name: count and p50/p90/p99/max duration in milliseconds."""
    by_name: dict[str, list[float]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(float(span["duration_ms"]))
    return {
        name: {"count": len(v), "p50_ms": percentile(v, 50), "p90_ms": percentile(v, 90),
               "p99_ms": percentile(v, 99), "max_ms": max(v)}
        for name, v in sorted(by_name.items())
    }
