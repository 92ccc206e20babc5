"""Learning from the line, end to end (real Kafka, Ray, Serve and the shipped JUDO): a normal frame the
prefilter flags gets a verdict, an operator marks it normal, ``judo feedback apply`` adds it to the
bank while frames keep coming, the running prefilter reloads the bank, and the same frame sent again
passes. Every frame gets exactly one verdict."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import pytest
import ray
import yaml

from cluster.messages import Feedback
from cluster.records import feedback_to_record
from judo_model.prefilter.scorer import PrefilterScorer
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.feedback import apply_feedback
from pipelines.runner import Pipeline
from tests.feedback_support import flagged_normal, frame_of
from tests.pipeline_support import pipeline_test_config
from tooling.gallery import collect_verdicts
from tooling.simulator import CameraSimulator, CameraSpec, publish_frames

pytestmark = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(),
                                reason="no shipped JUDO checkpoint")

#: how long the prefilter actors may take to report the new revision (they look every 2 s); a wait, not a measure
RELOAD_WAIT_S = 120


def wait_for_revision(actors, product: str, revision: int) -> None:
    deadline = time.monotonic() + RELOAD_WAIT_S
    while time.monotonic() < deadline:
        if all(v[product] == revision for v in ray.get([a.bank_versions.remote() for a in actors])):
            return
        time.sleep(0.5)
    pytest.fail(f"the prefilter actors did not load revision {revision} of {product}")


def test_a_false_alarm_marked_normal_stops_being_flagged(kafka, pipeline_banks, tmp_path):
    banks = {p: shutil.copytree(pipeline_banks[p], tmp_path / p) for p in ("bottle", "hex_nut")}
    scorer = PrefilterScorer.load(banks["bottle"])
    image, revision = flagged_normal(scorer), scorer.bank.revision
    del scorer
    settings = kafka.settings()
    config = pipeline_test_config(banks, SHIPPED_CHECKPOINT, settings, tmp_path / "traces.jsonl", "feedback")
    cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
    sent: list[str] = []
    pipeline = Pipeline(config, settings).start()
    try:
        before = CameraSimulator(cameras, defect_rate=0.2, seed=3, run_id="before").frames(6)
        sent += [s.frame.frame_id for s in publish_frames(
            settings, config.topics.frames, [*before, _simulated(frame_of(image, "false-alarm-1"))])]
        flagged = collect_verdicts(settings, config.topics.verdicts, set(sent), timeout_s=300).verdicts["false-alarm-1"]
        assert flagged.is_anomalous, flagged

        producer = settings.producer()
        record = feedback_to_record(Feedback(
            frame_id=flagged.frame_id, camera_id=flagged.camera_id, line_id=flagged.line_id, product="bottle",
            action="reject", verdict_stage=flagged.stage, verdict_is_anomalous=True,
            verdict_defect_type=flagged.defect.type if flagged.defect else None,
            model_version=flagged.model_version, operator="Ana Line-Lead", comment="reflection, not a defect"))
        producer.send(config.topics.feedback, key=record.key, value=record.value, headers=record.headers)
        producer.flush(timeout=60)
        producer.close()

        stop = threading.Event()
        during: list[str] = []
        meanwhile = threading.Thread(target=lambda: during.extend(s.frame.frame_id for s in publish_frames(
            settings, config.topics.frames, _until(stop, CameraSimulator(cameras, defect_rate=0.2, seed=4,
                                                                         run_id="during").frames(300)), fps=10)))
        meanwhile.start()
        try:
            report = apply_feedback(config, settings, tmp_path / "feedback_state.json", tmp_path / "dataset")
            assert report["labels"] == {"false-alarm-1": "good"}
            assert report["banks"]["bottle"]["revision"] == revision + 1
            wait_for_revision(pipeline.handles.prefilter, "bottle", revision + 1)
        finally:
            stop.set()
            meanwhile.join()
        sent += during
        sent += [s.frame.frame_id for s in publish_frames(
            settings, config.topics.frames, [_simulated(frame_of(image, "false-alarm-2"))])]
        collected = collect_verdicts(settings, config.topics.verdicts, set(sent), timeout_s=300)
    finally:
        pipeline.stop()

    again = collected.verdicts["false-alarm-2"]
    print(f"flagged at {flagged.anomaly_score:.3f} > {flagged.threshold:.3f} ({flagged.model_version}); after the "
          f"update {again.anomaly_score:.3f} ({again.model_version}); {len(during)} frames sent meanwhile")
    assert again.stage == "prefilter" and not again.is_anomalous and again.threshold == flagged.threshold
    assert f"bottle.r{revision + 1}" in again.model_version, "the verdict names the bank revision that scored it"
    assert set(collected.verdicts) == set(sent) and collected.duplicates == 0, "every frame exactly one verdict"
    assert during, "frames were flowing while the bank was updated"
    # the command itself, from the saved position: nothing new to apply
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    command = subprocess.run([sys.executable, "-m", "pipelines.cli", "feedback", "apply", "--config", str(config_file),
                              "--state", str(tmp_path / "feedback_state.json"), "--out", str(tmp_path / "dataset")],
                             capture_output=True, text=True, timeout=300)
    assert command.returncode == 0 and "0 reviewed frame(s) since the last apply" in command.stdout, \
        command.stdout + command.stderr


class _simulated:
    """A frame in the shape :func:`publish_frames` takes."""

    def __init__(self, frame):
        self.frame = frame

    def truth(self) -> dict:
        return {"frame_id": self.frame.frame_id}


def _until(stop: threading.Event, frames):
    for item in frames:
        if stop.is_set():
            return
        yield item
