"""Tracing: the JSON-lines exporter and trace context through Kafka headers and Ray carriers."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from cluster.telemetry import (
    TRACE_FILE_ENV,
    JsonLinesSpanExporter,
    context_from_carrier,
    context_to_carrier,
    exporters_from_env,
    extract_context,
    inject_headers,
    trace_id_hex,
)


def test_json_lines_exporter_writes_parented_spans(tmp_path):
    path = tmp_path / "traces.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("frame") as root:
        root.set_attribute("frame_id", "f-1")
        with tracer.start_as_current_span("prefilter") as child:
            child.set_attribute("anomaly_score", 1.5)
    provider.shutdown()
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"frame", "prefilter"}
    assert by_name["prefilter"]["parent_span_id"] == by_name["frame"]["span_id"]
    assert by_name["prefilter"]["trace_id"] == by_name["frame"]["trace_id"]
    assert by_name["frame"]["attributes"] == {"frame_id": "f-1"}
    assert by_name["prefilter"]["duration_ms"] >= 0


def test_context_crosses_kafka_headers_and_ray_carriers():
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("producer") as span:
        expected = format(span.get_span_context().trace_id, "032x")
        headers = inject_headers()
        carrier = context_to_carrier()
    assert [h[0] for h in headers] == ["traceparent"]
    assert trace_id_hex(extract_context(headers)) == expected
    assert trace_id_hex(context_from_carrier(carrier)) == expected
    # a child started from the extracted context joins the same trace
    with tracer.start_as_current_span("ingest", context=extract_context(headers)) as child:
        assert format(child.get_span_context().trace_id, "032x") == expected


def test_missing_or_garbage_trace_headers_give_an_empty_context():
    assert trace_id_hex(extract_context([])) == ""
    assert trace_id_hex(extract_context([("traceparent", b"\xff\xfe")])) == ""
    assert trace_id_hex(extract_context([("traceparent", b"00-zz-yy-01")])) == ""


def _exporter_kinds(monkeypatch, env: dict[str, str], **kwargs) -> list[str]:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 TRACE_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return sorted(type(e).__name__ for e in exporters_from_env(kwargs.get("trace_file"), kwargs.get("console")))


def test_traces_exporter_none_wins_over_an_otlp_endpoint(monkeypatch):
    endpoint = "http://127.0.0.1:4318"
    assert _exporter_kinds(monkeypatch, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) == ["OTLPSpanExporter"]
    assert _exporter_kinds(monkeypatch, {"OTEL_TRACES_EXPORTER": "none",
                                         "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) == []
    assert _exporter_kinds(monkeypatch, {"OTEL_TRACES_EXPORTER": "none",
                                         "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint + "/v1/traces"}) == []
    # an explicit exporter list decides; the endpoint only says where OTLP goes
    assert _exporter_kinds(monkeypatch, {"OTEL_TRACES_EXPORTER": "console",
                                         "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) == ["ConsoleSpanExporter"]
    assert _exporter_kinds(monkeypatch, {"OTEL_TRACES_EXPORTER": "otlp"}) == ["OTLPSpanExporter"]


def test_local_trace_file_is_kept_when_traces_exporter_is_none(monkeypatch, tmp_path):
    kinds = _exporter_kinds(monkeypatch, {"OTEL_TRACES_EXPORTER": "none", TRACE_FILE_ENV: str(tmp_path / "t.jsonl")})
    assert kinds == ["JsonLinesSpanExporter"]
