"""The dashboard's pieces without a plant: the feedback schema, the bounded window, the trace-file
follower and the HTTP rules (feedback only as same-origin JSON for a shown verdict)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import yaml

from cluster.kafka import KafkaSettings
from cluster.kafka_broker import free_port
from cluster.messages import Defect, Feedback, RLEMask, Verdict
from cluster.records import MessageValidationError, feedback_from_record, feedback_to_record
from judo_model.imaging import decode_image
from pipelines.config import PipelineConfig, load_config
from tooling.dashboard.feeds import TraceFileFeed
from tooling.dashboard.server import SECURITY_HEADERS, Dashboard
from tooling.dashboard.state import CachedFrame, DashboardState, Limits

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def verdict(frame_id: str, *, camera: str = "c1", line: str = "l1", stage: str = "judo", anomalous: bool = True,
            at: datetime = NOW, **extra) -> Verdict:
    return Verdict(frame_id=frame_id, camera_id=camera, line_id=line, product="bottle", stage=stage,
                   anomaly_score=3.0, threshold=2.0, is_anomalous=anomalous, model_version="m", produced_at=at,
                   **extra)


def feedback(**overrides) -> Feedback:
    values = dict(frame_id="f-1", camera_id="c1", line_id="l1", product="bottle", action="confirm",
                  verdict_stage="judo", verdict_is_anomalous=True, model_version="judo-tiny@1", operator="ana")
    values.update(overrides)
    return Feedback(**values)


def frame(size: int = 100) -> CachedFrame:
    return CachedFrame("png", 10, 10, bytes(size))


# ------------------------------------------------------------------ feedback schema


def test_feedback_round_trips_through_a_record_with_canonical_types():
    item = feedback(action="relabel", defect_type="Missing Component", comment="  two screws  ",
                    trace_id="0" * 31 + "1")
    record = feedback_to_record(item)
    assert record.key == b"f-1" and dict(record.headers)["judo-schema-version"] == b"1"
    back = feedback_from_record(record.key, record.value, record.headers)
    assert back == item
    assert (back.defect_type, back.comment, back.schema_version) == ("missing_component", "two screws", 1)
    with pytest.raises(MessageValidationError, match="differs from frame_id"):
        feedback_from_record(b"other", record.value, record.headers)


@pytest.mark.parametrize("overrides, problem", [
    ({"action": "relabel"}, "relabel needs the corrected defect_type"),
    ({"action": "confirm", "defect_type": "crack"}, "only given with relabel"),
    ({"action": "approve"}, "action"),
    ({"operator": "   "}, "operator"),
    ({"operator": "ana\x1b[31m"}, "control characters"),
    ({"trace_id": "xyz"}, "32 lowercase hex"),
    ({"comment": "x" * 2001}, "comment"),
])
def test_feedback_refuses_what_would_make_a_bad_label(overrides, problem):
    with pytest.raises(ValueError, match=problem):
        feedback(**overrides)


def test_verdicts_without_reference_ids_still_parse():
    legacy = verdict("f-1").model_dump(mode="json")
    del legacy["reference_ids"]
    assert Verdict.model_validate(legacy).reference_ids == []


def test_config_paths_stay_absolute_and_relative_ones_follow_the_file(tmp_path):
    raw = {"lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
           "products": {"bottle": {"bank": "/srv/banks/bottle"}},
           "judo": {"checkpoint": "ckpt"}, "telemetry": {"trace_file": "/var/log/judo/traces.jsonl"}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert str(config.products["bottle"].bank) == "/srv/banks/bottle"
    assert str(config.telemetry.trace_file) == "/var/log/judo/traces.jsonl"
    assert config.judo.checkpoint == tmp_path / "ckpt"


# ------------------------------------------------------------------ the bounded window


def test_each_frame_counts_once_and_passed_frames_release_their_bytes():
    state = DashboardState([("l1", "c1")])
    state.add_frame("a", frame())
    state.add_frame("b", frame())
    assert state.add_verdict(verdict("a", stage="prefilter", anomalous=False))
    assert state.add_verdict(verdict("b"))
    assert not state.add_verdict(verdict("b"))
    assert state.duplicates == 1
    assert state.frame("a") is None and state.frame("b") is not None
    cards, latest = state.cards_after(0, 10)
    assert [c["verdict"]["frame_id"] for c in cards] == ["b"] and cards[0]["frame_available"]
    assert state.cards_after(latest, 10) == ([], latest)
    assert state.verdict_of("b").frame_id == "b" and state.verdict_of("a") is None


def test_the_window_has_ceilings_for_cards_and_frame_bytes():
    state = DashboardState([], Limits(cards=3, frame_bytes=250, frames=10))
    for i in range(5):
        state.add_frame(f"f{i}", frame(100))
    assert [state.frame(f"f{i}") is not None for i in range(5)] == [False, False, False, True, True]
    for i in range(5):
        state.add_verdict(verdict(f"f{i}"))
    assert [c["verdict"]["frame_id"] for c in state.cards_after(0, 10)[0]] == ["f4", "f3", "f2"]
    assert state.verdict_of("f0") is None and state.frame("f0") is None


def test_camera_health_over_the_window_including_silent_cameras():
    state = DashboardState([("l1", "c1"), ("l1", "c2")])
    old = NOW - timedelta(seconds=120)
    state.add_verdict(verdict("old", at=old))
    for i, (stage, anomalous) in enumerate([("judo", True), ("judo", False), ("prefilter", False),
                                           ("prefilter", False)]):
        state.add_verdict(verdict(f"f{i}", stage=stage, anomalous=anomalous, at=NOW - timedelta(seconds=i)))
    rows = {(r["line_id"], r["camera_id"]): r for r in state.camera_health(60, now=NOW.timestamp())}
    c1, c2, line = rows[("l1", "c1")], rows[("l1", "c2")], rows[("l1", None)]
    assert (c1["frames"], c1["frames_per_s"], c1["routed_pct"], c1["defect_rate_pct"]) == (4, 4 / 60, 50.0, 25.0)
    assert (c2["frames"], c2["routed_pct"], c2["last_verdict_at"]) == (0, None, None)
    assert line["frames"] == 4 and line["last_verdict_at"] == NOW.timestamp()


def test_verdict_latency_splits_the_end_to_end_time_by_path():
    state = DashboardState([])
    state.add_verdict(verdict("a", latency_ms={"prefilter": 10.0, "judo": 300.0, "total": 400.0}))
    state.add_verdict(verdict("b", stage="prefilter", anomalous=False, latency_ms={"prefilter": 20.0, "total": 30.0}))
    state.add_verdict(verdict("old", at=NOW - timedelta(hours=1), latency_ms={"total": 9999.0}))
    rows = {row["stage"]: row for row in state.verdict_latency(60, now=NOW.timestamp())}
    assert list(rows) == ["prefilter", "judo", "total (JUDO path)", "total (pass path)"]
    assert (rows["prefilter"]["count"], rows["prefilter"]["max_ms"]) == (2, 20.0)
    assert rows["total (JUDO path)"]["p50_ms"] == 400.0 and rows["total (pass path)"]["p50_ms"] == 30.0


def test_spans_give_stage_percentiles_in_pipeline_order_and_bounded_traces():
    state = DashboardState([], Limits(traces=2))
    spans = [{"name": name, "trace_id": f"{t:032x}", "duration_ms": ms, "start_ns": i}
             for i, (t, name, ms) in enumerate([(1, "sink", 1.0), (1, "judo", 40.0), (2, "ingest", 2.0),
                                                (3, "judo", 60.0), (3, "ingest", 4.0)])]
    state.add_spans([*spans, {"name": "no trace id"}])
    assert [row["stage"] for row in state.stage_latency()] == ["ingest", "judo", "sink"]
    judo = next(row for row in state.stage_latency() if row["stage"] == "judo")
    assert (judo["count"], judo["p50_ms"], judo["max_ms"]) == (2, 40.0, 60.0)
    assert state.trace(f"{1:032x}") == []
    assert [s["name"] for s in state.trace(f"{3:032x}")] == ["judo", "ingest"]


def test_trace_file_follower_reads_whole_lines_and_restarts_after_rotation(tmp_path):
    path = tmp_path / "traces.jsonl"
    state = DashboardState([])
    feed = TraceFileFeed(state, path)
    span = {"name": "judo", "trace_id": "a" * 32, "duration_ms": 5.0, "start_ns": 1}
    line = json.dumps(span)
    path.write_text(line + "\n" + line[:10])
    feed.step()
    assert len(state.trace("a" * 32)) == 1
    with open(path, "a") as handle:
        handle.write(line[10:] + "\nnot json\n")
    feed.step()
    assert len(state.trace("a" * 32)) == 2
    path.write_text(json.dumps({**span, "trace_id": "b" * 32}) + "\n")
    feed.step()
    assert len(state.trace("b" * 32)) == 1


# ------------------------------------------------------------------ HTTP rules


@pytest.fixture
def dashboard(tmp_path):
    """The HTTP side alone: no feed is started, and Kafka is never reached by these requests."""
    config = PipelineConfig.model_validate({
        "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
        "products": {"bottle": {"bank": str(tmp_path)}}, "judo": {"checkpoint": str(tmp_path)}})
    app = Dashboard(config, KafkaSettings(bootstrap_servers="127.0.0.1:9"), port=free_port())
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    app.state.add_verdict(verdict("f-1", defect=Defect(type="stain", mask=RLEMask.encode(mask),
                                                        reasoning="<b>bold</b>")))
    thread = threading.Thread(target=app.server.serve_forever, daemon=True)
    thread.start()
    yield app
    app.server.shutdown()
    app.server.server_close()


def request(app: Dashboard, path: str, body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(app.url + path, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_pages_and_api_carry_a_strict_content_security_policy(dashboard):
    for path in ("/", "/lines", "/trace", "/static/app.js", "/api/verdicts"):
        status, headers, _ = request(dashboard, path)
        assert status == 200, path
        assert headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        assert "script-src 'self'" in headers["Content-Security-Policy"] and "unsafe" not in headers[
            "Content-Security-Policy"]
    status, _, body = request(dashboard, "/api/verdicts")
    assert json.loads(body)["cards"][0]["verdict"]["defect"]["reasoning"] == "<b>bold</b>"
    assert request(dashboard, "/static/../server.py")[0] == 404
    assert request(dashboard, "/api/trace?id=../../etc")[0] == 400
    assert request(dashboard, "/api/frame?id=f-1")[0] == 404


def test_raw_rgb_frames_are_served_as_png(dashboard):
    """Cameras may send uncompressed ``raw_rgb8``: the gallery gets it re-encoded as PNG, pixels unchanged."""
    pixels = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3)
    dashboard.state.add_frame("f-1", CachedFrame("raw_rgb8", 4, 3, pixels.tobytes()))
    status, headers, body = request(dashboard, "/api/frame?id=f-1")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert np.array_equal(decode_image(body, "png"), pixels)


@pytest.mark.parametrize("body, headers, status, problem", [
    (b'{"frame_id": "f-1", "action": "confirm", "operator": "ana"}', {"Content-Type": "text/plain"}, 415,
     "application/json"),
    (b'{"frame_id": "f-1", "action": "confirm", "operator": "ana"}',
     {"Content-Type": "application/json", "Origin": "http://evil.example"}, 403, "cross-origin"),
    (b'{"frame_id": "nope", "action": "confirm", "operator": "ana"}', {"Content-Type": "application/json"}, 404,
     "no verdict for this frame"),
    (b'{"frame_id": "f-1", "action": "relabel", "operator": "ana"}', {"Content-Type": "application/json"}, 400,
     "relabel needs the corrected defect_type"),
    (b'[1, 2]', {"Content-Type": "application/json"}, 400, "JSON object"),
    (b"x" * 20_000, {"Content-Type": "application/json"}, 413, "bytes"),
])
def test_feedback_is_refused_unless_same_origin_json_for_a_shown_verdict(dashboard, body, headers, status, problem):
    got, _, answer = request(dashboard, "/api/feedback", body, headers)
    assert got == status
    assert problem in json.loads(answer)["error"]
