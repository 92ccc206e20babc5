"""``judo feedback apply``: operator feedback from Kafka into the products' banks, defect libraries and a
retraining folder (docs/prefilter.md, "Learning from the line").

The feedback topic is read from the position the last apply stopped at, kept in a small state file next
to the banks (not a consumer group: committed group offsets expire after the broker's
``offsets.retention.minutes`` when apply runs rarely, and need a group ACL). The state is written only
after every bank folder is updated; an apply that dies in between reads the same records again, and
the banks skip feedback ids they already hold, so nothing is applied twice. Feedback carries no pixels:
each reviewed frame is found on the frames topic by its key (``frame_id``), scanning it within retention.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kafka import TopicPartition
from rich.console import Console

from cluster.kafka import KafkaSettings
from cluster.messages import Feedback, Frame
from cluster.records import MessageValidationError, feedback_from_record, frame_from_record
from judo_model.imaging import ImageDecodeError, decode_image
from judo_model.prefilter.update import ReviewedFrame, review_label, update_bank_folder, write_review_folder
from pipelines.commands import config_or_exit, kafka_settings_for
from pipelines.config import PipelineConfig

log = logging.getLogger(__name__)

STATE_FILE = "feedback_state.json"
DATASET_DIR = "feedback_dataset"

#: polls without a record, while a partition is short of its end offset, before a read gives up
IDLE_POLLS = 60


def default_state_path(config: PipelineConfig) -> Path:
    """``feedback_state.json`` in the folder that holds every product's bank folder."""
    parents = [str(Path(p.bank).resolve().parent) for p in config.products.values()]
    return Path(os.path.commonpath(parents)) / STATE_FILE


@dataclass
class FeedbackState:
    """Where the last apply stopped: the next offset to read per partition of the feedback topic."""

    topic: str
    positions: dict[int, int]

    @classmethod
    def load(cls, path: Path, topic: str) -> "FeedbackState":
        if not path.is_file():
            return cls(topic, {})
        raw = json.loads(path.read_text())
        if raw.get("topic") != topic:
            log.warning("%s is for topic %s, not %s: reading %s from its start", path, raw.get("topic"), topic, topic)
            return cls(topic, {})
        return cls(topic, {int(p): int(o) for p, o in raw["positions"].items()})

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"topic": self.topic, "positions": {str(p): o for p, o in self.positions.items()}}))
        os.replace(tmp, path)


def _read_to_end(settings: KafkaSettings, topic: str, starts: dict[int, int], handle) -> dict[int, int]:
    """Call ``handle(record)`` for each record of ``topic`` from ``starts`` (default: the earliest kept)
    up to the end offsets seen when the read began; ``handle`` returning True stops early. Returns the
    end offsets."""
    consumer = settings.consumer(group_id=None, enable_auto_commit=False)
    try:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise SystemExit(f"error: topic {topic!r} does not exist (has the pipeline run?)")
        partitions = [TopicPartition(topic, p) for p in sorted(numbers)]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        begins = consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, min(max(starts.get(tp.partition, 0), begins[tp]), ends[tp]))
        idle = 0
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            batches = consumer.poll(timeout_ms=1000, max_records=500)
            idle = 0 if batches else idle + 1
            if idle >= IDLE_POLLS:
                raise SystemExit(f"error: no records from {topic!r} for {IDLE_POLLS} polls short of its end")
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp] and handle(record):
                        return {tp.partition: end for tp, end in ends.items()}
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        consumer.close(autocommit=False)


def read_feedback(settings: KafkaSettings, topic: str, positions: dict[int, int]
                  ) -> tuple[dict[str, Feedback], dict[int, int], int]:
    """The latest feedback per frame since ``positions``, the end offsets read to, and how many records
    were not valid feedback (logged and passed over)."""
    latest: dict[str, Feedback] = {}
    invalid = 0

    def take(record) -> bool:
        nonlocal invalid
        try:
            feedback = feedback_from_record(record.key, record.value, record.headers)
        except MessageValidationError as exc:
            invalid += 1
            log.warning("feedback record %d/%d is not valid feedback: %s", record.partition, record.offset, exc)
            return False
        latest[feedback.frame_id] = feedback  # one frame's records share a key, so a partition: in order
        return False

    ends = _read_to_end(settings, topic, positions, take)
    return latest, ends, invalid


def find_frames(settings: KafkaSettings, topic: str, frame_ids: set[str]) -> dict[str, Frame]:
    """The frames with these ids, from the frames topic within its retention (first copy of each)."""
    found: dict[str, Frame] = {}
    wanted = {frame_id.encode() for frame_id in frame_ids}

    def take(record) -> bool:
        if record.key in wanted and record.key.decode() not in found:
            try:
                frame = frame_from_record(record.key, record.value, record.headers)
            except MessageValidationError as exc:
                log.warning("frame record %s is not a valid frame: %s", record.key, exc)
                return False
            found[frame.frame_id] = frame
        return len(found) == len(wanted)

    if wanted:
        _read_to_end(settings, topic, {}, take)
    return found


def reviewed_frame(feedback: Feedback, frame: Frame) -> ReviewedFrame:
    image = decode_image(frame.image, frame.encoding, width=frame.width, height=frame.height)
    label = review_label(feedback.action, feedback.verdict_is_anomalous, feedback.verdict_defect_type,
                         feedback.defect_type)
    return ReviewedFrame(frame.frame_id, frame.product, image, label, feedback.feedback_id, feedback.action,
                         feedback.operator, feedback.comment, feedback.verdict_is_anomalous, feedback.model_version)


def apply_feedback(config: PipelineConfig, settings: KafkaSettings, state_path: Path | None = None,
                   out: Path | None = None) -> dict:
    """Apply the feedback published since the last apply; returns what was done (also printed by the command)."""
    state_path = Path(state_path or default_state_path(config))
    out = Path(out or state_path.parent / DATASET_DIR)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path.with_name(state_path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one apply at a time per state file
        state = FeedbackState.load(state_path, config.topics.feedback)
        latest, ends, invalid = read_feedback(settings, config.topics.feedback, state.positions)
        unknown = sorted(f for f, fb in latest.items() if fb.product not in config.products)
        latest = {f: fb for f, fb in latest.items() if fb.product in config.products}
        frames = find_frames(settings, config.topics.frames, set(latest))
        missing = sorted(set(latest) - set(frames))
        reviewed, undecodable = [], []
        for frame_id, frame in frames.items():
            if frame.product != latest[frame_id].product:
                undecodable.append(frame_id)
                log.warning("frame %s is of %s, its feedback says %s: not applied", frame_id, frame.product,
                            latest[frame_id].product)
                continue
            try:
                reviewed.append(reviewed_frame(latest[frame_id], frame))
            except (ImageDecodeError, ValueError) as exc:
                undecodable.append(frame_id)
                log.warning("frame %s cannot be used: %s", frame_id, exc)
        updates = {}
        for product in sorted({r.product for r in reviewed}):
            update = update_bank_folder(config.products[product].bank, [r for r in reviewed if r.product == product])
            if update is not None:
                updates[product] = update.to_dict()
        if reviewed:
            write_review_folder(out, reviewed)
        FeedbackState(config.topics.feedback, ends).save(state_path)
    return {"feedback": len(latest), "invalid_records": invalid, "unknown_product": unknown,
            "frames_missing": missing, "frames_unusable": undecodable, "reviewed": len(reviewed),
            "labels": {r.frame_id: r.label for r in reviewed}, "banks": updates, "out": str(out),
            "state": str(state_path), "positions": ends}


def apply_command(args: argparse.Namespace) -> int:
    config = config_or_exit(args.config)
    report = apply_feedback(config, kafka_settings_for(config), args.state, args.out)
    console = Console()
    console.print(f"{report['feedback']} reviewed frame(s) since the last apply; {report['reviewed']} found on "
                  f"{config.topics.frames}")
    for frame_id in report["frames_missing"]:
        console.print(f"[yellow]frame {frame_id} is no longer on {config.topics.frames} (retention): not applied")
    for product, update in report["banks"].items():
        console.print(f"{product}: bank revision {update['revision_before']} -> {update['revision']}; "
                      f"{len(update['normal_frames'])} false alarm(s) added ({update['patches_added']} + "
                      f"{update['patches_pinned']} patches), scores {update['scores_before']} -> "
                      f"{update['scores_after']} (threshold {update['threshold']:.4g}, kept); "
                      f"{len(update['defect_frames'])} defect example(s) {update['defect_types']}")
    console.print(f"retraining folder: {report['out']}; positions saved in {report['state']}")
    return 0
