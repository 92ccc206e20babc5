"""End to end with real Kafka, real Ray and the shipped JUDO checkpoint.

N simulated frames in -> exactly those N frame_ids on the verdict topic; defective frames
routed to JUDO and carrying boxes; malformed frames on the dead-letter topic with a reason;
a complete trace per frame in the trace file.
"""

from __future__ import annotations

import pytest

from cluster.telemetry import read_spans, setup_tracing
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.runner import Pipeline
from tooling.gallery import collect_verdicts
from tooling.simulator import CameraSimulator, CameraSpec
from tests.pipeline_support import bad_inputs, pipeline_test_config

pytestmark = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(),
                                reason="no shipped JUDO checkpoint")

FRAMES = 24


def malformed_records(marker):
    """A corrupt PNG, a wrong schema version and an unknown product (all otherwise well formed)."""
    wanted = ("corrupt", "wrong-schema-version", "unknown-product")
    return [bad.record for bad in bad_inputs(marker) if bad.name in wanted]


@pytest.fixture(scope="module")
def run(kafka, pipeline_banks, tmp_path_factory):
    """One real run: N simulated frames and 3 malformed records through Kafka, Ray and JUDO."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    trace_file = tmp_path / "traces.jsonl"
    setup_tracing("e2e.cameras", trace_file=trace_file)
    config = pipeline_test_config(pipeline_banks, SHIPPED_CHECKPOINT, kafka.settings(), trace_file, "e2e")
    cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
    pipeline = Pipeline(config, kafka.settings()).start()
    try:
        sent = CameraSimulator(cameras, defect_rate=0.3, seed=11).publish(
            kafka.settings(), config.topics.frames, FRAMES)
        producer = kafka.settings().producer()
        for record in malformed_records(tmp_path / "unpickled"):
            producer.send(config.topics.frames, key=record.key, value=record.value, headers=record.headers)
        producer.flush(30)
        producer.close()
        expected = {item.frame.frame_id for item in sent}
        collected = collect_verdicts(kafka.settings(), config.topics.verdicts, expected, timeout_s=300,
                                     dead_letter_topic=config.topics.dead_letters, expected_dead_letters=3)
        membership = pipeline.membership()
    finally:
        pipeline.stop()
    return sent, collected, trace_file, membership


def test_exactly_the_produced_frames_get_verdicts_and_defects_go_to_judo(run):
    sent, collected, _, _ = run
    assert set(collected.verdicts) == {item.frame.frame_id for item in sent}
    assert collected.duplicates == 0
    defective = [item for item in sent if item.is_defective]
    assert defective, "the simulator should have produced defective frames at a 30% rate"
    for item in defective:
        verdict = collected.verdicts[item.frame.frame_id]
        assert verdict.stage == "judo", f"{item.frame.frame_id} ({item.defect_type}) was not routed"
        assert verdict.model_version.startswith("judo-tiny@")


def test_defective_frames_carry_boxes(run):
    sent, collected, _, _ = run
    for item in sent:
        if item.is_defective:
            verdict = collected.verdicts[item.frame.frame_id]
            assert verdict.defect is not None and verdict.defect.boxes, f"{item.frame.frame_id} has no boxes"


def test_malformed_frames_are_dead_letters_with_reasons(run):
    _, collected, _, _ = run
    reasons = {letter.original_key: letter.reason for letter in collected.dead_letters}
    assert set(reasons) == {b"bad-corrupt", b"bad-version", b"bad-product"}
    assert "corrupt or truncated" in reasons[b"bad-corrupt"]
    assert "schema version 99" in reasons[b"bad-version"]
    assert "unknown product 'teapot'" in reasons[b"bad-product"]
    assert all(letter.stage == "ingest" and letter.original_value for letter in collected.dead_letters)


def test_every_frame_has_one_complete_trace(run):
    sent, collected, trace_file, _ = run
    names_by_frame: dict[str, set[str]] = {}
    trace_of: dict[str, set[str]] = {}
    for span in read_spans(trace_file):
        frame_id = span["attributes"].get("frame_id")
        if frame_id:
            names_by_frame.setdefault(frame_id, set()).add(span["name"])
            trace_of.setdefault(frame_id, set()).add(span["trace_id"])
    for item in sent:
        frame_id = item.frame.frame_id
        verdict = collected.verdicts[frame_id]
        required = {"camera.capture", "ingest", "prefilter", "sink"}
        if verdict.stage == "judo":
            required |= {"references", "judo"}
        assert required <= names_by_frame.get(frame_id, set()), (frame_id, names_by_frame.get(frame_id))
        assert trace_of[frame_id] == {verdict.trace_id}, "every span of a frame belongs to the verdict's trace"


def test_every_driver_reports_itself_in_its_consumer_group(run):
    """What the supervisor's watchdog reads (a driver out of its group too long is replaced)."""
    *_, membership = run
    assert membership and all(m["in_group"] and m["group_state"] == "STABLE" and m["generation"] >= 1
                              for m in membership), membership
