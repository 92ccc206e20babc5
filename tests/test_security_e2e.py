"""A secured run end to end: the whole pipeline (real Ray, the shipped JUDO) on a broker with
SCRAM-SHA-512 over mutual TLS and ACLs, its secrets only named by files, then a search for them.

The pipeline's principal holds only :func:`cluster.kafka.pipeline_grant` (read frames in its group;
write verdicts, dead letters and feedback): every frame still gets exactly one verdict and the
group commits to the end. The Kafka password and the HTTP bearer token never appear in the
process's log records, Ray's session logs, the trace file, the verdict records, the configs the
replicas and drivers were given, or the broker's log.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import ray

from cluster.kafka import TopicSpec, pipeline_grant
from cluster.kafka_broker import free_port
from cluster.local_kafka import LocalKafka
from cluster.secrets import write_secret_file
from pipelines.commands import SHIPPED_CHECKPOINT, kafka_settings_for
from pipelines.config import parse_config
from pipelines.runner import Pipeline
from tooling.gallery import collect_verdicts
from tooling.simulator import CameraSimulator, CameraSpec
from tests.pipeline_support import committed_and_end_offsets, pipeline_test_config

pytestmark = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(),
                                reason="no shipped JUDO checkpoint")

KAFKA_PASSWORD = "kafka-Scram-Secret-4e1b77"
HTTP_TOKEN = "http-Token-Secret-90ac2d"
FRAMES = 8


@pytest.fixture(scope="module")
def secured_run(pipeline_banks, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secured")
    with LocalKafka(brokers=1, listener="SASL_SSL", sasl_users={"judo": KAFKA_PASSWORD}, acls=True) as kafka:
        config = pipeline_test_config(pipeline_banks, SHIPPED_CHECKPOINT, kafka.settings("judo", password_file=True),
                                      tmp / "traces.jsonl", "secure", lines=2)
        raw = config.model_dump(mode="json")
        raw["judo"]["http"] = {"enabled": True, "port": free_port(),
                               "bearer_token_file": str(write_secret_file(tmp / "http.token", HTTP_TOKEN))}
        config = parse_config(raw)  # as read from a YAML file: secrets named, not given
        topics = config.topics
        kafka.create_topics([TopicSpec(topics.frames, topics.partitions), TopicSpec(topics.verdicts, topics.partitions),
                             TopicSpec(topics.dead_letters), TopicSpec(topics.feedback)])
        kafka.grant(pipeline_grant("judo", frames=topics.frames, verdicts=topics.verdicts,
                                   dead_letters=topics.dead_letters, feedback=topics.feedback,
                                   group_id=config.ingest.group_id))
        log_file = tmp / "python.log"
        handler = logging.FileHandler(log_file)
        handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        previous_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        cameras = [CameraSpec(line.id, line.cameras[0], line.product) for line in config.lines]
        pipeline = Pipeline(config, kafka_settings_for(config))
        try:
            pipeline.start()
            session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
            sent = CameraSimulator(cameras, defect_rate=0.5, seed=5, run_id="secure").publish(
                kafka.admin_settings(), topics.frames, FRAMES)
            expected = {item.frame.frame_id for item in sent}
            collected = collect_verdicts(kafka.admin_settings(), topics.verdicts, expected, timeout_s=300)
            deadline = time.monotonic() + 60
            committed, end = committed_and_end_offsets(kafka.admin_settings(), config.ingest.group_id, topics.frames)
            while committed != end and time.monotonic() < deadline:
                time.sleep(0.5)
                committed, end = committed_and_end_offsets(kafka.admin_settings(), config.ingest.group_id,
                                                           topics.frames)
            raw_verdicts = _raw_values(kafka, topics.verdicts, len(collected.verdicts))
        finally:
            pipeline.stop()
            root.removeHandler(handler)
            root.setLevel(previous_level)
            handler.close()
        yield {"config": config, "expected": expected, "collected": collected, "committed": committed, "end": end,
               "raw_verdicts": raw_verdicts, "log_file": log_file, "session_dir": session_dir,
               "trace_file": config.telemetry.trace_file, "broker_logs": [n.log_path for n in kafka.nodes]}


def _raw_values(kafka: LocalKafka, topic: str, count: int) -> list[bytes]:
    consumer = kafka.admin_settings().consumer(topic, group_id=None)
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(values) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                values += [r.value + b"".join(v for _, v in r.headers) for r in batch]
    finally:
        consumer.close()
    return values


def test_the_least_privileged_pipeline_loses_nothing(secured_run):
    assert set(secured_run["collected"].verdicts) == secured_run["expected"]
    assert secured_run["collected"].duplicates == 0
    assert secured_run["committed"] == secured_run["end"] and sum(secured_run["end"].values()) == FRAMES


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]


def test_no_secret_in_logs_traces_verdicts_or_configs(secured_run):
    places: dict[str, bytes] = {"verdict records": b"\n".join(secured_run["raw_verdicts"]),
                                "driver and replica configs": json.dumps(
                                    secured_run["config"].model_dump(mode="json")).encode()}
    for path in [secured_run["log_file"], secured_run["trace_file"], *secured_run["broker_logs"],
                 *_files_under(secured_run["session_dir"] / "logs")]:
        places[str(path)] = Path(path).read_bytes()
    assert places["verdict records"] and Path(secured_run["trace_file"]).stat().st_size > 0
    assert len(places) > 5, "Ray's session logs were not found"
    leaks = [(where, name) for where, data in places.items()
             for name, secret in (("kafka password", KAFKA_PASSWORD), ("http token", HTTP_TOKEN))
             if secret.encode() in data]
    assert not leaks, f"secrets found in: {leaks}"
