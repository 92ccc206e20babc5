"""Real Apache Kafka: schemas through kafka-python, restarts, replication and the CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import pytest
from kafka.errors import KafkaError as ClientError

from cluster.kafka import KafkaSettings, TopicSpec, create_topics
from cluster.kafka_broker import BrokerNode, broker_properties, ensure_kafka_jars, new_cluster_id
from cluster.local_kafka import STATE_FILE, LocalKafka
from cluster.messages import Defect, Frame, Verdict
from cluster.records import (
    MessageValidationError,
    frame_from_record,
    frame_to_record,
    verdict_from_record,
    verdict_to_record,
)
from cluster.telemetry import extract_context, inject_headers, setup_tracing, trace_id_hex, tracer
from judo_model.imaging import decode_image, encode_png


def consume_all(settings, topic, count, group="g", timeout_s=30.0, commit=True):
    consumer = settings.consumer(topic, group_id=group, consumer_timeout_ms=1000)
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        if commit:
            consumer.commit()
    finally:
        consumer.close()
    return records


def sample_frame(i: int) -> Frame:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
    return Frame(frame_id=f"f-{i:04d}", camera_id="cam1", line_id="line1", product="bottle",
                 captured_at=datetime.now(timezone.utc), encoding="png", width=24, height=16,
                 image=encode_png(image))


def test_frames_and_verdicts_round_trip_through_kafka_with_headers(kafka, topic_name):
    setup_tracing("test")
    settings = kafka.settings()
    kafka.create_topics([TopicSpec(topic_name, partitions=3), TopicSpec(topic_name + "-v")])
    producer = settings.producer()
    sent = {}
    for i in range(6):
        frame = sample_frame(i)
        with tracer().start_as_current_span("produce"):
            headers = inject_headers()
            sent[frame.frame_id] = (frame, trace_id_hex())
        producer.send(topic_name, **frame_to_record(frame, headers)._asdict()).get(timeout=30)
    verdict = Verdict(frame_id="f-0000", camera_id="cam1", line_id="line1", product="bottle",
                      stage="judo", anomaly_score=2.0, threshold=1.0, is_anomalous=True,
                      defect=Defect(type="crack", boxes=[[0.1, 0.1, 0.2, 0.2]]), model_version="t")
    producer.send(topic_name + "-v", **verdict_to_record(verdict)._asdict()).get(timeout=30)
    producer.close()

    records = consume_all(settings, topic_name, 6)
    assert len(records) == 6
    for record in records:
        frame = frame_from_record(record.key, record.value, record.headers)
        original, trace_id = sent[frame.frame_id]
        assert frame == original
        assert decode_image(frame.image).shape == (16, 24, 3)
        assert trace_id_hex(extract_context(record.headers)) == trace_id
    [verdict_record] = consume_all(settings, topic_name + "-v", 1)
    assert verdict_from_record(verdict_record.key, verdict_record.value, verdict_record.headers) == verdict


def test_malformed_record_from_kafka_is_rejected_with_clear_error(kafka, topic_name):
    settings = kafka.settings()
    kafka.create_topics([TopicSpec(topic_name)])
    producer = settings.producer()
    producer.send(topic_name, key=b"f-1", value=b"\x89PNG\r\n garbage", headers=[("judo-schema-version", b"1")]).get(timeout=30)
    producer.close()
    [record] = consume_all(settings, topic_name, 1)
    with pytest.raises(MessageValidationError, match="missing header 'judo-frame'"):
        frame_from_record(record.key, record.value, record.headers)


def test_restarted_broker_keeps_committed_messages_and_offsets(tmp_path):
    with LocalKafka(brokers=1, data_dir=tmp_path / "kafka") as cluster:
        settings = cluster.settings()
        cluster.create_topics([TopicSpec("durable", partitions=2)])
        producer = settings.producer()
        for i in range(10):
            producer.send("durable", **frame_to_record(sample_frame(i))._asdict())
        producer.flush(30)
        producer.close()
        first = consume_all(settings, "durable", 10, group="keeper")
        assert len(first) == 10

        cluster.stop_broker(1)
        assert cluster.running_brokers() == []
        cluster.start_broker(1)

        producer = settings.producer()
        for i in range(10, 14):
            producer.send("durable", **frame_to_record(sample_frame(i))._asdict())
        producer.flush(30)
        producer.close()
        # committed offsets survived: the group only sees the 4 new frames
        resumed = consume_all(settings, "durable", 4, group="keeper", timeout_s=40)
        assert sorted(r.key for r in resumed) == [f"f-{i:04d}".encode() for i in range(10, 14)]
        # and every message survived: a new group reads all 14 from the data directory
        everything = consume_all(settings, "durable", 14, group="fresh", timeout_s=40)
        assert len({r.key for r in everything}) == 14


def test_three_broker_cluster_serves_acks_all_with_one_broker_down():
    with LocalKafka(brokers=3) as cluster:
        settings = cluster.settings()
        cluster.create_topics([TopicSpec("replicated", partitions=3, replication_factor=3)])
        producer = settings.producer()
        for i in range(10):
            producer.send("replicated", **frame_to_record(sample_frame(i))._asdict()).get(timeout=30)

        cluster.stop_broker(2, kill=True)
        assert cluster.running_brokers() == [1, 3]
        for i in range(10, 20):
            metadata = producer.send("replicated", **frame_to_record(sample_frame(i))._asdict()).get(timeout=60)
            assert metadata.offset >= 0
        producer.close()
        records = consume_all(settings, "replicated", 20, group="while-down", timeout_s=60)
        assert len({r.key for r in records}) == 20

        cluster.start_broker(2)
        assert cluster.running_brokers() == [1, 2, 3]


def _java_pids() -> set[int]:
    """Brokers of the detached cluster only: other tests on this machine may run brokers of their own."""
    out = subprocess.run(["pgrep", "-f", f"kafka.Kafka {STATE_FILE.parent}"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_cli_up_prints_a_usable_address_and_down_leaves_no_java(tmp_path):
    env = {**os.environ, "JUDO_CACHE": os.environ.get("JUDO_CACHE", str(os.path.expanduser("~/.cache/judo-inspect")))}
    before = _java_pids()
    state_env = {**env}
    up = subprocess.run([sys.executable, "-m", "pipelines.cli", "kafka", "up"], capture_output=True,
                        text=True, env=state_env, timeout=180)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip().splitlines()[-1]
    assert bootstrap.startswith("127.0.0.1:")
    try:
        status = subprocess.run([sys.executable, "-m", "pipelines.cli", "kafka", "status", "--json"],
                                capture_output=True, text=True, env=state_env, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["bootstrap_servers"] == bootstrap

        settings = KafkaSettings(bootstrap_servers=bootstrap)
        create_topics(settings, [TopicSpec("cli-check")])
        producer = settings.producer()
        producer.send("cli-check", key=b"k", value=b"hello").get(timeout=30)
        producer.close()
        [record] = consume_all(settings, "cli-check", 1)
        assert record.value == b"hello"
    finally:
        down = subprocess.run([sys.executable, "-m", "pipelines.cli", "kafka", "down"],
                              capture_output=True, text=True, env=state_env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _java_pids() - before == set()


def test_sasl_plain_settings_pass_through_to_kafka_python():
    with LocalKafka(brokers=1, listener="SASL_PLAINTEXT", sasl_users={"judo": "s3cret"}) as cluster:
        settings = cluster.settings()
        assert settings.client_kwargs()["sasl_mechanism"] == "PLAIN"
        cluster.create_topics([TopicSpec("secured")])
        producer = settings.producer()
        producer.send("secured", **frame_to_record(sample_frame(1))._asdict()).get(timeout=30)
        producer.close()
        [record] = consume_all(settings, "secured", 1)
        assert frame_from_record(record.key, record.value, record.headers).frame_id == "f-0001"

        wrong = cluster.settings(sasl_plain_password="wrong")
        with pytest.raises(ClientError):
            producer = wrong.producer(max_block_ms=5000)
            try:
                producer.send("secured", key=b"k", value=b"v").get(timeout=10)
            finally:
                producer.close(timeout=1)


def test_cached_jars_need_no_network_or_maven(monkeypatch):
    libs = ensure_kafka_jars()
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ensure_kafka_jars() == libs
    assert any(libs.glob("kafka_2.13-*.jar"))


def test_cluster_ids_never_look_like_an_option():
    """The storage tool reads an id starting with "-" as an option and the broker never starts
    (this failed one local cluster in 64 before ids were drawn like Kafka's own)."""
    ids = [new_cluster_id() for _ in range(5000)]
    assert not any(cluster_id.startswith("-") for cluster_id in ids)
    assert all(len(base64.urlsafe_b64decode(cluster_id + "==")) == 16 for cluster_id in ids)
    assert len(set(ids)) == len(ids)


def test_broker_properties_follow_cluster_size_and_listener(tmp_path):
    nodes = [BrokerNode(node_id=i, port=9000 + i, controller_port=9100 + i, data_dir=tmp_path / f"b{i}")
             for i in (1, 2, 3)]
    props = broker_properties(nodes[1], nodes, "SASL_PLAINTEXT", {"judo": "pw", "other": "x"}, None,
                              {"num.io.threads": "4"})
    assert props["node.id"] == "2" and props["listeners"].startswith("CLIENT://127.0.0.1:9002,")
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103"
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    assert 'username="judo" password="pw"' in props["listener.name.client.plain.sasl.jaas.config"]
    assert props["num.io.threads"] == "4"
    single = broker_properties(nodes[0], nodes[:1], "PLAINTEXT", {}, None)
    assert single["min.insync.replicas"] == "1" and "sasl.enabled.mechanisms" not in single
