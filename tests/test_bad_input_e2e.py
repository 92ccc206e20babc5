"""Bad input end to end: real Kafka (SASL/PLAIN), real Ray, the shipped JUDO.

Every kind of bad record (:func:`tests.pipeline_support.bad_inputs`) is published interleaved with
a flood of good frames from one camera, followed by a second camera's frames. Afterwards every good
frame has exactly one verdict, every bad record is a dead letter with its reason and its bytes, the
consumer group has committed to the end of every partition, no driver died, and the flood was held
back by backpressure rather than buffered. The pipeline reaches the broker only through the SASL
settings in its config, so the same run shows they reach the drivers and the sink.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import pytest
import ray

from cluster.local_kafka import LocalKafka
from cluster.records import frame_to_record
from pipelines.commands import SHIPPED_CHECKPOINT, kafka_settings_for
from pipelines.config import parse_config
from pipelines.runner import Pipeline
from tooling.gallery import Collected, collect_verdicts
from tooling.simulator import CameraSimulator, CameraSpec
from tests.pipeline_support import BadInput, bad_inputs, committed_and_end_offsets, pipeline_test_config

pytestmark = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(),
                                reason="no shipped JUDO checkpoint")

FLOOD = 40
CALM = 4
INGEST = {"max_in_flight": 8, "max_poll_records": 4}


@dataclass
class Run:
    config: object
    good_ids: set[str]
    calm_ids: set[str]
    bad: list[BadInput]
    sent_offsets: dict[bytes, tuple[int, int]]
    collected: Collected
    committed: dict[int, int]
    end: dict[int, int]
    drivers_alive: bool
    stats: dict
    in_flight_samples: list[int]
    marker_created: bool


@pytest.fixture(scope="module")
def sasl_kafka():
    with LocalKafka(brokers=1, listener="SASL_PLAINTEXT", sasl_users={"judo": "pipeline-s3cret"}) as cluster:
        yield cluster


def _wait_for_commits(settings, group: str, topic: str, timeout_s: float) -> tuple[dict[int, int], dict[int, int]]:
    deadline = time.monotonic() + timeout_s
    committed, end = committed_and_end_offsets(settings, group, topic)
    while committed != end and time.monotonic() < deadline:
        time.sleep(0.5)
        committed, end = committed_and_end_offsets(settings, group, topic)
    return committed, end


@pytest.fixture(scope="module")
def run(sasl_kafka, pipeline_banks, tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("bad-input")
    marker = tmp / "unpickled"
    config = pipeline_test_config(pipeline_banks, SHIPPED_CHECKPOINT, sasl_kafka.settings(password_file=True),
                                  tmp / "traces.jsonl", "badin", ingest=INGEST)
    config = parse_config(config.model_dump(mode="json"))  # as read from a YAML file: the password named, not given
    settings = kafka_settings_for(config)
    assert settings.security_protocol == "SASL_PLAINTEXT" and settings.secret("sasl_plain_password") == "pipeline-s3cret"

    flood_camera, calm_camera = (CameraSpec(line.id, line.cameras[0], line.product) for line in config.lines)
    flood = [s.frame for s in CameraSimulator([flood_camera], defect_rate=0.0, seed=3, run_id="badin").frames(FLOOD)]
    calm = [s.frame for s in CameraSimulator([calm_camera], defect_rate=0.0, seed=4, run_id="badin").frames(CALM)]
    bad = bad_inputs(marker)
    records = []  # the bad records spread evenly through the flood, the calm camera's frames last
    for i, item in enumerate(flood):
        records.append(frame_to_record(item))
        records += [b.record for j, b in enumerate(bad) if j * FLOOD // len(bad) == i]
    records += [frame_to_record(item) for item in calm]
    topics = config.topics

    pipeline = Pipeline(config, settings).start()
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(pipeline.stats()["in_flight"])
            sampling.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        producer = settings.producer()
        futures = [(key, producer.send(topics.frames, key=key, value=value, headers=headers))
                   for key, value, headers in records]
        sent_offsets = {key: (meta.partition, meta.offset) for key, meta in
                        ((key, future.get(timeout=60)) for key, future in futures)}
        producer.close()
        good_ids = {f.frame_id for f in flood + calm}
        collected = collect_verdicts(settings, topics.verdicts, good_ids, timeout_s=300,
                                     dead_letter_topic=topics.dead_letters, expected_dead_letters=len(bad))
        committed, end = _wait_for_commits(settings, config.ingest.group_id, topics.frames, timeout_s=60)
        finished, _ = ray.wait(pipeline.handles.runs, timeout=0)
        stats = pipeline.stats()
    finally:
        sampling.set()
        sampler.join(timeout=10)
        pipeline.stop()
    return Run(config, good_ids, {f.frame_id for f in calm}, bad, sent_offsets, collected, committed, end,
               drivers_alive=not finished, stats=stats, in_flight_samples=samples, marker_created=marker.exists())


def test_every_good_frame_gets_one_verdict_even_behind_a_flood(run):
    assert set(run.collected.verdicts) == run.good_ids
    assert run.calm_ids <= set(run.collected.verdicts), "the quiet camera starved behind the flood"
    assert run.collected.duplicates == 0


def test_every_bad_record_is_a_dead_letter_with_its_reason_and_original_bytes(run, sasl_kafka):
    letters = {letter.original_key: letter for letter in run.collected.dead_letters}
    assert len(letters) == len(run.collected.dead_letters), "a bad record was dead-lettered twice"
    assert set(letters) == {bad.record.key for bad in run.bad}
    for bad in run.bad:
        letter = letters[bad.record.key]
        assert letter.stage == "ingest" and bad.reason in letter.reason, (bad.name, letter.reason)
        assert (letter.original_partition, letter.original_offset) == run.sent_offsets[bad.record.key]
        assert letter.original_headers == list(bad.record.headers), bad.name
        if bad.name == "oversized":  # too large to carry: pinned down by size, hash and position
            assert letter.omitted == ["value"]
            assert letter.original_value_bytes == len(bad.record.value)
            assert letter.original_value_sha256 == hashlib.sha256(bad.record.value).hexdigest()
        else:
            assert letter.original_value == bad.record.value, bad.name
    assert not run.marker_created, "a pickle payload from Kafka was executed"


def test_no_partition_is_stuck_and_no_driver_crashed(run):
    assert len(run.end) == run.config.topics.partitions
    assert run.committed == run.end
    assert sum(run.end.values()) == len(run.good_ids) + len(run.bad)
    assert run.drivers_alive
    assert run.stats["dead_letters"] == len(run.bad)


def test_the_flood_is_held_back_by_backpressure_not_buffered(run):
    assert run.stats["paused_polls"] > 0, "the flood never filled the in-flight window"
    assert run.in_flight_samples and max(run.in_flight_samples) <= INGEST["max_in_flight"] + INGEST["max_poll_records"]
