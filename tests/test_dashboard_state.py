"""The dashboard's pieces without a plant: the feedback schema, the bounded window and the trace-file
follower. Its HTTP rules (login, roles, CSRF, TLS, bad input) are in ``test_dashboard_http.py``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from cluster.messages import Feedback, Verdict
from cluster.records import MessageValidationError, feedback_from_record, feedback_to_record
from pipelines.config import load_config
from tooling.dashboard.feeds import TraceFileFeed
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
