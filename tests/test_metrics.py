"""Prometheus metrics without Ray or Kafka: what the frame path counts, how drivers' reports add up
(a replaced driver's counts stay), and the /metrics page served over HTTP and parsed back.

The same counters scraped from a real ``judo run`` on Kafka and Ray: ``tests/test_sigterm.py``.
"""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.config import MetricsSection
from pipelines.metrics import DriverTotals, PipelineCollector, merge_stats, serve_metrics
from tests.pipeline_support import frame, record_for
from tests.test_frame_path import Judo, chain, records, run


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page, by (sample name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_frame_path_counts_frames_verdicts_and_dead_letters_by_line():
    path = chain()
    run(path, records("a", "b-hot", "c", bad=1) + [record_for(frame(frame_id="d", line_id="l2"), offset=9)])
    metrics = path.stats.as_dict()["metrics"]
    assert metrics["frames"] == {"l1": {"bottle": 3}, "l2": {"bottle": 1}}
    assert metrics["verdicts"] == {"l1": {"bottle": {"prefilter": 2, "judo": 1}}, "l2": {"bottle": {"prefilter": 1}}}
    assert metrics["dead_letters"] == {"ingest": 1}
    stage = metrics["stage_latency"]
    assert {name: stage[name]["count"] for name in stage} == {"ingest": 4, "prefilter": 4, "judo": 1, "sink": 2}
    assert metrics["frame_latency"]["pass"]["count"] == 3 and metrics["frame_latency"]["judo"]["count"] == 1
    for hist in [*stage.values(), *metrics["frame_latency"].values()]:
        counts = list(hist["le"].values())
        assert counts == sorted(counts) and counts[-1] == hist["count"], "buckets are cumulative, +Inf = count"


def test_a_frame_judo_never_answers_is_timed_on_the_judo_path():
    path = chain(judo=Judo(failures=10))
    run(path, records("x-hot"))
    metrics = path.stats.as_dict()["metrics"]
    assert metrics["verdicts"] == {"l1": {"bottle": {"prefilter": 1}}}
    assert set(metrics["frame_latency"]) == {"judo"}


def test_merge_adds_numbers_concatenates_lists_and_merges_nested_dicts():
    a = {"frames_in": 2, "latencies_pass_ms": [1.0], "metrics": {"frames": {"l1": {"bottle": 2}}}}
    b = {"frames_in": 3, "latencies_pass_ms": [2.0], "metrics": {"frames": {"l1": {"bottle": 1}, "l2": {"nut": 3}}}}
    merged = merge_stats([a, b])
    assert merged == {"frames_in": 5, "latencies_pass_ms": [1.0, 2.0],
                      "metrics": {"frames": {"l1": {"bottle": 3}, "l2": {"nut": 3}}}}
    assert a["metrics"]["frames"]["l1"]["bottle"] == 2 and a["latencies_pass_ms"] == [1.0], "inputs untouched"


def test_a_replaced_drivers_counts_stay_in_the_totals():
    totals = DriverTotals()
    assert totals.update({"d1": {"frames_in": 10}, "d2": {"frames_in": 5}})["frames_in"] == 15
    # d1 died (no report) and d3 replaced it: the total does not drop to d2 + d3
    assert totals.update({"d2": {"frames_in": 7}, "d3": {"frames_in": 1}})["frames_in"] == 18
    assert totals.update({"d2": {"frames_in": 8}, "d3": {"frames_in": 4}})["frames_in"] == 22


def test_the_endpoint_serves_counters_gauges_and_histograms():
    path = chain()
    run(path, records("a", "b-hot", bad=1))
    recorded = path.stats.as_dict()
    reports = {"d1": {**recorded, "in_flight": 3, "commits": 4, "commit_failures": 1}}
    collector = PipelineCollector(lambda: reports, lambda: 2, replicas=lambda: {"RUNNING": 2, "STARTING": 1},
                                  lag=lambda: {"0": 5, "1": 0})
    server = serve_metrics(MetricsSection(port=0), collector)
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    assert samples[("judo_records_total", ())] == 3
    assert samples[("judo_frames_total", (("line", "l1"), ("product", "bottle")))] == 2
    assert samples[("judo_verdicts_total", (("line", "l1"), ("product", "bottle"), ("stage", "prefilter")))] == 1
    assert samples[("judo_verdicts_total", (("line", "l1"), ("product", "bottle"), ("stage", "judo")))] == 1
    assert samples[("judo_dead_letters_total", (("stage", "ingest"),))] == 1
    assert samples[("judo_offset_commits_total", (("result", "failed"),))] == 1
    assert samples[("judo_driver_restarts_total", ())] == 2
    assert samples[("judo_frames_in_flight", ())] == 3 and samples[("judo_frame_drivers", ())] == 1
    assert samples[("judo_replicas", (("state", "RUNNING"),))] == 2
    assert samples[("judo_consumer_lag_records", (("partition", "0"),))] == 5
    assert samples[("judo_stage_latency_seconds_count", (("stage", "prefilter"),))] == 2
    assert samples[("judo_stage_latency_seconds_bucket", (("le", "+Inf"), ("stage", "judo")))] == 1
    assert samples[("judo_frame_latency_seconds_count", (("path", "pass"),))] == 1


def test_a_failing_source_leaves_the_rest_of_the_page(caplog):
    def broken():
        raise TimeoutError("broker unreachable")

    collector = PipelineCollector(lambda: {"d1": {"frames_in": 4, "in_flight": 0}}, lambda: 0,
                                  replicas=broken, lag=broken)
    server = serve_metrics(MetricsSection(port=0), collector)
    try:
        with caplog.at_level(logging.WARNING, logger="pipelines.metrics"):
            samples = scrape(server.url)
    finally:
        server.close()
    assert samples[("judo_records_total", ())] == 4
    assert not any(name == "judo_replicas" for name, _ in samples)
    assert "judo_replicas unavailable" in caplog.text and "broker unreachable" in caplog.text


def test_a_taken_port_is_a_warning_and_disabled_metrics_serve_nothing(caplog):
    collector = PipelineCollector(dict, lambda: 0)
    assert serve_metrics(MetricsSection(enabled=False), collector) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING, logger="pipelines.metrics"):
            assert serve_metrics(MetricsSection(port=taken.getsockname()[1]), collector) is None
    assert "metrics.port" in caplog.text


def test_bad_metrics_config_is_a_clear_error():
    with pytest.raises(ValueError, match="port"):
        MetricsSection(port=70000)
