"""Kafka secured end to end on the real local broker: SCRAM-SHA-512 over mutual TLS, ACLs enforced.

One broker per module (``LocalKafka(listener="SASL_SSL", acls=True)``): the pipeline's principal
reads the frames in its consumer group and writes verdicts and dead letters (through the real
sink, its password named by a file), and is refused the topics it was not granted; a principal
without ACLs, a wrong password, a client without a certificate and a plaintext client are refused;
the authorised principal loses nothing to them. The whole pipeline on such a broker, with its logs
scanned for the secrets, is ``test_security_e2e.py``.
"""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition
from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from kafka.errors import KafkaError as ClientError

from actors.sink import VerdictSink
from cluster.kafka import AccessGrant, KafkaSettings, TopicSpec, pipeline_grant
from cluster.local_kafka import LocalKafka
from cluster.messages import Verdict
from cluster.records import dead_letter_for, frame_from_record, frame_to_record, verdict_from_record
from tests.pipeline_support import frame

FRAMES, VERDICTS, DLQ, FEEDBACK, GROUP = "sec.frames", "sec.verdicts", "sec.dlq", "sec.feedback", "sec-pipeline"
COUNT = 12
PASSWORDS = {"judo": "judo-Pw-7f3a91", "intruder": "intruder-Pw-55b0"}


@pytest.fixture(scope="module")
def secured():
    """A broker with only a SASL_SSL (SCRAM-SHA-512, client certificates required) listener and ACLs on."""
    with LocalKafka(brokers=1, listener="SASL_SSL", sasl_users=PASSWORDS, acls=True) as cluster:
        cluster.create_topics([TopicSpec(FRAMES, 2), TopicSpec(VERDICTS, 2), TopicSpec(DLQ), TopicSpec(FEEDBACK)])
        cluster.grant(pipeline_grant("judo", frames=FRAMES, verdicts=VERDICTS, dead_letters=DLQ, feedback=FEEDBACK,
                                     group_id=GROUP))
        producer = cluster.admin_settings().producer()  # the cameras' role, here the super user's
        for i in range(COUNT):
            producer.send(FRAMES, **frame_to_record(frame(frame_id=f"sec-{i:03d}"))._asdict())
        producer.flush(30)
        producer.close()
        yield cluster


def _poll_until(consumer, count: int, timeout_s: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def _refused(settings: KafkaSettings, action) -> BaseException:
    """Run ``action(settings)`` and return what the broker's refusal raised (fails if it succeeds)."""
    with pytest.raises(ClientError) as refused:
        action(settings.model_copy(update={"request_timeout_ms": 5000}))
    return refused.value


def _produce(topic: str):
    def action(settings: KafkaSettings) -> None:
        producer = settings.producer(max_block_ms=3000, bootstrap_timeout_ms=3000)
        try:
            producer.send(topic, key=b"k", value=b"not allowed").get(timeout=10)
        finally:
            producer.close(timeout=1)
    return action


def _consume_group(topic: str, group: str | None):
    def action(settings: KafkaSettings) -> None:
        consumer = settings.consumer(group_id=group)
        try:
            if group is None:
                consumer.assign([TopicPartition(topic, 0)])
                consumer.seek_to_beginning()
            else:
                consumer.subscribe([topic])
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if consumer.poll(timeout_ms=500):
                    return
            # a topic the principal may not even describe is silently absent from its metadata;
            # asking for its offsets makes the broker say so
            consumer.end_offsets([TopicPartition(topic, 0)])
        finally:
            consumer.close(autocommit=False)
    return action


def test_the_pipeline_principal_reads_frames_writes_verdicts_and_loses_nothing(secured):
    settings = secured.settings("judo", password_file=True)
    assert settings.sasl_plain_password is None and settings.sasl_plain_password_file
    kwargs = settings.client_kwargs()
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert kwargs["ssl_certfile"] and kwargs["sasl_plain_password"] == PASSWORDS["judo"]

    consumer = settings.consumer(FRAMES, group_id=GROUP)
    try:
        records = _poll_until(consumer, COUNT)
        consumer.commit()
    finally:
        consumer.close(autocommit=False)
    frames = [frame_from_record(r.key, r.value, r.headers) for r in records]
    assert sorted(f.frame_id for f in frames) == [f"sec-{i:03d}" for i in range(COUNT)]

    # the sink gets its settings as the runner ships them to Ray actors: a dict naming the password file
    shipped = settings.model_dump()
    assert PASSWORDS["judo"] not in repr(shipped) and PASSWORDS["judo"] not in repr(settings)
    sink = VerdictSink(KafkaSettings(**shipped), VERDICTS, DLQ)
    verdicts = [(Verdict(frame_id=f.frame_id, camera_id=f.camera_id, line_id=f.line_id, product=f.product,
                         stage="prefilter", anomaly_score=0.1, threshold=1.0, is_anomalous=False,
                         model_version="pf"), {}) for f in frames]
    try:
        assert sink.write(verdicts, [(dead_letter_for("ingest", "corrupt", key=b"bad", value=b"?"), {})]) == COUNT + 1
    finally:
        sink.close()

    reader = secured.admin_settings().consumer(VERDICTS, group_id=None)
    try:
        written = [verdict_from_record(r.key, r.value, r.headers) for r in _poll_until(reader, COUNT)]
    finally:
        reader.close()
    assert sorted(v.frame_id for v in written) == sorted(f.frame_id for f in frames)


@pytest.mark.parametrize("topic", [FRAMES, "sec.unlisted"])
def test_the_pipeline_principal_may_not_write_other_topics(secured, topic):
    if topic == "sec.unlisted":
        secured.create_topics([TopicSpec(topic)])
    refusal = _refused(secured.settings("judo"), _produce(topic))
    assert isinstance(refusal, TopicAuthorizationFailedError)


def test_the_pipeline_principal_may_not_read_its_own_output(secured):
    refusal = _refused(secured.settings("judo"), _consume_group(VERDICTS, None))
    assert isinstance(refusal, TopicAuthorizationFailedError)


@pytest.mark.parametrize("action, refusal_type", [
    (_consume_group(FRAMES, GROUP), GroupAuthorizationFailedError),
    (_consume_group(FRAMES, None), TopicAuthorizationFailedError),
    (_produce(VERDICTS), TopicAuthorizationFailedError),
    (_produce(FEEDBACK), TopicAuthorizationFailedError),
], ids=["join-pipeline-group", "read-frames", "write-verdicts", "write-feedback"])
def test_a_principal_without_rights_is_refused(secured, action, refusal_type):
    assert isinstance(_refused(secured.settings("intruder"), action), refusal_type)


@pytest.mark.parametrize("overrides", [
    dict(sasl_plain_password="wrong-password"),
    dict(sasl_plain_username="nobody"),
    dict(ssl_certfile=None, ssl_keyfile=None),
    dict(security_protocol="SSL", sasl_mechanism=None, sasl_plain_username=None, sasl_plain_password=None),
], ids=["wrong-password", "unknown-user", "no-client-certificate", "tls-without-sasl"])
def test_clients_without_valid_credentials_are_refused(secured, overrides):
    _refused(secured.settings("judo", **overrides), _produce(VERDICTS))


def test_an_unauthorised_principal_takes_nothing_from_the_authorised_one(secured):
    """After the refusals above the pipeline's group still owns every frame, committed to the end."""
    settings = secured.settings("judo")
    consumer = settings.consumer(group_id=GROUP)
    try:
        partitions = [TopicPartition(FRAMES, p) for p in sorted(consumer.partitions_for_topic(FRAMES))]
        end = consumer.end_offsets(partitions)
        committed = {tp: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close(autocommit=False)
    assert sum(end.values()) == COUNT and committed == end


def test_grants_name_exactly_the_pipeline_s_rights():
    grant = pipeline_grant("judo", frames="f", verdicts="v", dead_letters="d", feedback="fb", group_id="g")
    assert grant == AccessGrant("judo", read=("f",), write=("v", "d", "fb"), groups=("g",))
    rights = {(acl.operation.name, acl.resource_pattern.resource_type.name, acl.resource_pattern.resource_name)
              for acl in grant.acls()}
    assert rights == {("READ", "TOPIC", "f"), ("WRITE", "TOPIC", "v"), ("WRITE", "TOPIC", "d"),
                      ("WRITE", "TOPIC", "fb"), ("READ", "GROUP", "g")}
    assert {acl.principal for acl in grant.acls()} == {"User:judo"}
