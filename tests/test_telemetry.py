"""Tracing: the JSON-lines exporter and trace context through Kafka headers and Ray carriers."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from cluster.telemetry import (
    JsonLinesSpanExporter,
    context_from_carrier,
    context_to_carrier,
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
