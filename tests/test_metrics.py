"""Prometheus metrics without Ray or Kafka: what the frame path counts, how drivers' reports add up
(a replaced driver's counts stay), and the /metrics page served over HTTP and parsed back.

The endpoint is the real one: every scrape needs the bearer token named by ``metrics.bearer_token_file``
or ``_env`` (401 without it or with a wrong one), HTTPS when a certificate is given, a clear error when
no token is configured, and no token in any log line. The same counters scraped from a real
``judo run`` on Kafka and Ray: ``tests/test_sigterm.py``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.secrets import write_secret_file
from cluster.tls import write_tls_files
from pipelines.config import ConfigError, MetricsSection
from pipelines.metrics import DriverTotals, PipelineCollector, merge_stats, serve_metrics
from pipelines.metrics_http import check_metrics_settings
from tests.pipeline_support import frame, record_for
from tests.test_frame_path import Judo, chain, records, run

TOKEN = "metrics-Token-5c1e7a"


def fetch(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, dict, str]:
    """(status, headers, body) of one GET, the token sent as ``Authorization: Bearer`` when given."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read().decode()


def scrape(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page, by (sample name, sorted labels)."""
    status, _, text = fetch(url, token, context)
    assert status == 200, (status, text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def token_file(tmp_path) -> Path:
    return write_secret_file(tmp_path / "metrics.token", TOKEN)


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


def test_the_endpoint_serves_counters_gauges_and_histograms(token_file):
    path = chain()
    run(path, records("a", "b-hot", bad=1))
    recorded = path.stats.as_dict()
    reports = {"d1": {**recorded, "in_flight": 3, "commits": 4, "commit_failures": 1}}
    collector = PipelineCollector(lambda: reports, lambda: 2, replicas=lambda: {"RUNNING": 2, "STARTING": 1},
                                  lag=lambda: {"0": 5, "1": 0})
    server = serve_metrics(MetricsSection(port=0, bearer_token_file=token_file), collector)
    try:
        samples = scrape(server.url, TOKEN)
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


def test_a_failing_source_leaves_the_rest_of_the_page(caplog, token_file):
    def broken():
        raise TimeoutError("broker unreachable")

    collector = PipelineCollector(lambda: {"d1": {"frames_in": 4, "in_flight": 0}}, lambda: 0,
                                  replicas=broken, lag=broken)
    server = serve_metrics(MetricsSection(port=0, bearer_token_file=token_file), collector)
    try:
        with caplog.at_level(logging.WARNING, logger="pipelines.metrics"):
            samples = scrape(server.url, TOKEN)
    finally:
        server.close()
    assert samples[("judo_records_total", ())] == 4
    assert not any(name == "judo_replicas" for name, _ in samples)
    assert "judo_replicas unavailable" in caplog.text and "broker unreachable" in caplog.text


def test_a_taken_port_is_a_warning_and_disabled_metrics_serve_nothing(caplog, token_file):
    collector = PipelineCollector(dict, lambda: 0)
    assert serve_metrics(MetricsSection(enabled=False), collector) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING, logger="pipelines.metrics"):
            assert serve_metrics(MetricsSection(port=taken.getsockname()[1], bearer_token_file=token_file),
                                 collector) is None
    assert "metrics.port" in caplog.text


def test_bad_metrics_config_is_a_clear_error():
    with pytest.raises(ValueError, match="port"):
        MetricsSection(port=70000)


def test_only_a_scrape_with_the_token_gets_the_page_and_the_token_is_never_logged(tmp_path, monkeypatch, caplog):
    collector = PipelineCollector(lambda: {"d1": {"frames_in": 7, "in_flight": 0}}, lambda: 0)
    monkeypatch.setenv("JUDO_TEST_METRICS_TOKEN", TOKEN)
    with caplog.at_level(logging.DEBUG):
        server = serve_metrics(MetricsSection(port=0, bearer_token_env="JUDO_TEST_METRICS_TOKEN"), collector)
        try:
            assert server.authenticated and not server.tls
            for token in (None, "wrong-token", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
                status, headers, body = fetch(server.url, token)
                assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), (token, status)
                assert "judo_records_total" not in body
            raw = urllib.request.Request(server.url, headers={"Authorization": TOKEN})  # no "Bearer " prefix
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(raw, timeout=10)
            assert refused.value.code == 401
            assert scrape(server.url, TOKEN)[("judo_records_total", ())] == 7
        finally:
            server.close()
    assert "JUDO_TEST_METRICS_TOKEN" in caplog.text, "the log names where the token is, never the token"
    assert TOKEN not in caplog.text and TOKEN not in repr(MetricsSection(bearer_token_env="JUDO_TEST_METRICS_TOKEN"))


def test_metrics_enabled_without_a_token_is_a_clear_error_before_anything_is_served(tmp_path):
    collector = PipelineCollector(dict, lambda: 0)
    for settings in (MetricsSection(port=0), MetricsSection(port=0, host="0.0.0.0")):
        with pytest.raises(ConfigError, match=r"(?s)without a bearer token.*bearer_token_file.*credentials_file.*"
                                              r"allow_unauthenticated_localhost"):
            check_metrics_settings(settings)
        with pytest.raises(ConfigError, match="without a bearer token"):
            serve_metrics(settings, collector)
    with pytest.raises(ConfigError, match="JUDO_TEST_UNSET_TOKEN is not set"):
        check_metrics_settings(MetricsSection(bearer_token_env="JUDO_TEST_UNSET_TOKEN"))
    with pytest.raises(ConfigError, match="cannot read"):
        check_metrics_settings(MetricsSection(bearer_token_file=tmp_path / "missing.token"))
    check_metrics_settings(MetricsSection(enabled=False))  # off: nothing to check


def test_the_localhost_opt_out_serves_without_a_token_on_loopback_only():
    with pytest.raises(ValueError, match="loopback host"):
        MetricsSection(host="0.0.0.0", allow_unauthenticated_localhost=True)
    with pytest.raises(ValueError, match="exclude each other"):
        MetricsSection(allow_unauthenticated_localhost=True, bearer_token_env="T")
    server = serve_metrics(MetricsSection(port=0, allow_unauthenticated_localhost=True),
                           PipelineCollector(lambda: {"d1": {"frames_in": 2}}, lambda: 0))
    try:
        assert not server.authenticated
        assert scrape(server.url)[("judo_records_total", ())] == 2
    finally:
        server.close()


def test_with_a_certificate_the_page_is_served_over_https_only(tmp_path, token_file):
    tls = write_tls_files(tmp_path / "tls")
    settings = MetricsSection(port=0, bearer_token_file=token_file, ssl_certfile=tls.broker_keystore,
                              ssl_keyfile=tls.broker_keystore)
    server = serve_metrics(settings, PipelineCollector(lambda: {"d1": {"frames_in": 3}}, lambda: 0))
    try:
        assert server.tls and server.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(tls.ca_cert))
        assert scrape(server.url, TOKEN, trusted)[("judo_records_total", ())] == 3
        assert fetch(server.url, None, trusted)[0] == 401
        with pytest.raises(urllib.error.URLError):  # an unknown CA: the client refuses the certificate
            fetch(server.url, TOKEN, ssl.create_default_context())
        with pytest.raises((ConnectionError, urllib.error.URLError)):  # plain HTTP on the HTTPS port: no page
            fetch(server.url.replace("https://", "http://"), TOKEN)
        assert scrape(server.url, TOKEN, trusted)[("judo_records_total", ())] == 3, "still serving"
    finally:
        server.close()
    with pytest.raises(ConfigError, match="cannot load ssl_certfile"):
        check_metrics_settings(MetricsSection(bearer_token_file=token_file, ssl_certfile=tmp_path / "none.pem",
                                              ssl_keyfile=tmp_path / "none.pem"))
