"""Security: Kafka over mutual TLS end to end, security settings from the config reach every stage,
and no code path unpickles or evaluates what it reads.

SASL/PLAIN through a whole running pipeline is in ``test_bad_input_e2e.py``; SCRAM-SHA-512 with ACLs
in ``test_security_kafka.py`` and, with the whole pipeline and a search for leaked secrets, in
``test_security_e2e.py``; the Serve endpoint's token, limits and HTTPS in ``test_security_http.py``;
pickle payloads on the frames topic in ``test_ingest_bad_input.py``.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import yaml
from kafka.errors import KafkaError as ClientError

from actors.sink import VerdictSink
from cluster.kafka import KafkaSettings, TopicSpec
from cluster.local_kafka import LocalKafka
from cluster.messages import Verdict
from cluster.records import (
    dead_letter_for,
    dead_letter_from_record,
    frame_from_record,
    frame_to_record,
    verdict_from_record,
)
from pipelines.commands import kafka_settings_for
from pipelines.config import parse_config
from tests.pipeline_support import frame

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ssl_kafka():
    """A broker whose only client listener is SSL and that requires a client certificate."""
    with LocalKafka(brokers=1, listener="SSL") as cluster:
        yield cluster


def _consume(settings: KafkaSettings, topic: str, count: int, timeout_s: float = 30.0) -> list:
    consumer = settings.consumer(topic, group_id=None)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_frames_and_verdicts_travel_over_mutual_tls(ssl_kafka):
    settings = ssl_kafka.settings()
    kwargs = settings.client_kwargs()
    assert kwargs["security_protocol"] == "SSL" and kwargs["ssl_check_hostname"] is True
    assert {kwargs["ssl_cafile"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]} == {
        str(ssl_kafka.tls.ca_cert), str(ssl_kafka.tls.client_cert), str(ssl_kafka.tls.client_key)}
    ssl_kafka.create_topics([TopicSpec("tls.frames"), TopicSpec("tls.verdicts"), TopicSpec("tls.dlq")])

    producer = settings.producer()
    producer.send("tls.frames", **frame_to_record(frame(frame_id="tls-1"))._asdict()).get(timeout=30)
    producer.close()
    [record] = _consume(settings, "tls.frames", 1)
    assert frame_from_record(record.key, record.value, record.headers).frame_id == "tls-1"

    # the sink gets its settings the way the runner ships them to Ray actors: as a plain dict
    sink = VerdictSink(KafkaSettings(**settings.model_dump()), "tls.verdicts", "tls.dlq")
    verdict = Verdict(frame_id="tls-1", camera_id="c1", line_id="l1", product="bottle", stage="prefilter",
                      anomaly_score=0.1, threshold=1.0, is_anomalous=False, model_version="pf")
    letter = dead_letter_for("ingest", "corrupt", key=b"tls-2", value=b"\x89PNG?")
    try:
        assert sink.write([(verdict, {})], [(letter, {})]) == 2
    finally:
        sink.close()
    [written] = _consume(settings, "tls.verdicts", 1)
    assert verdict_from_record(written.key, written.value, written.headers).frame_id == "tls-1"
    [dead] = _consume(settings, "tls.dlq", 1)
    assert dead_letter_from_record(dead.key, dead.value, dead.headers).original_value == b"\x89PNG?"


@pytest.mark.parametrize("overrides, why", [
    (dict(security_protocol="PLAINTEXT"), "plaintext client on the SSL port"),
    (dict(ssl_certfile=None, ssl_keyfile=None), "TLS client without a certificate"),
])
def test_clients_without_tls_credentials_are_refused(ssl_kafka, overrides, why):
    settings = ssl_kafka.settings(request_timeout_ms=3000, **overrides)
    with pytest.raises(ClientError):
        producer = settings.producer(max_block_ms=3000, bootstrap_timeout_ms=3000)
        try:
            producer.send("tls.frames", key=b"k", value=why.encode()).get(timeout=5)
        finally:
            producer.close(timeout=1)


PIPELINE_YAML = """
kafka:
  mode: external
  settings:
    bootstrap_servers: "broker1:9093,broker2:9093"
    security_protocol: SASL_SSL
    sasl_mechanism: PLAIN
    sasl_plain_username: judo
    sasl_plain_password_env: JUDO_TEST_PIPELINE_KAFKA_PW
    ssl_cafile: /etc/kafka/ca.pem
lines: [{id: line1, product: bottle, cameras: [line1-cam1]}]
products: {bottle: {bank: banks/bottle}}
judo: {checkpoint: checkpoints/judo-tiny}
"""


def test_security_settings_in_the_config_become_every_client_s_settings(monkeypatch):
    monkeypatch.setenv("JUDO_TEST_PIPELINE_KAFKA_PW", "s3cret")
    config = parse_config(yaml.safe_load(PIPELINE_YAML))
    settings = kafka_settings_for(config)
    # the runner hands drivers and the sink ``settings.model_dump()``; nothing may be lost on the way
    assert KafkaSettings.model_validate(settings.model_dump()) == settings
    kwargs = settings.client_kwargs()
    assert kwargs["bootstrap_servers"] == ["broker1:9093", "broker2:9093"]
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_SSL", "PLAIN")
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("judo", "s3cret")
    assert kwargs["ssl_cafile"] == "/etc/kafka/ca.pem" and kwargs["ssl_check_hostname"] is True


# --------------------------------------------------------------------------- nothing unpickled or evaluated

#: Calls that turn bytes into code or arbitrary objects, by their dotted name.
DANGEROUS_CALLS = {
    "eval", "exec", "compile", "__import__",
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads", "marshal.load", "marshal.loads",
    "shelve.open", "jsonpickle.decode", "pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load",
    "yaml.load_all", "yaml.unsafe_load_all", "yaml.full_load_all",
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader"}
#: (file, call) -> why it is safe. Empty: no such call exists in the source tree today.
ALLOWED: dict[tuple[str, str], str] = {}


def dangerous_calls(source: str) -> list[tuple[int, str]]:
    """Line and dotted name of every call in ``source`` that could unpickle or evaluate its input."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            base = dotted(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (name := dotted(node.func)) is None:
            continue
        name = name.replace("numpy.", "np.", 1) if name.startswith("numpy.") else name
        keywords = {k.arg: k.value for k in node.keywords}
        if name in DANGEROUS_CALLS:
            found.append((node.lineno, name))
        elif name == "yaml.load" and dotted(keywords.get("Loader", ast.Constant(None))) not in SAFE_YAML_LOADERS:
            found.append((node.lineno, name))
        elif name == "torch.load" and not _is_true(keywords.get("weights_only")):
            found.append((node.lineno, name))
        elif name == "np.load" and _is_true(keywords.get("allow_pickle")):
            found.append((node.lineno, name))
    return found


def _is_true(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def test_the_scanner_finds_every_way_of_unpickling_or_evaluating():
    source = """
import pickle, yaml, torch, numpy as np
from marshal import loads as unmarshal
pickle.loads(b)
unmarshal(b)
eval(text)
exec(text)
yaml.load(text)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
torch.load(path)
torch.load(path, weights_only=True)
np.load(path, allow_pickle=True)
np.load(path, allow_pickle=False)
re.compile(pattern)
"""
    assert dangerous_calls(source) == [(4, "pickle.loads"), (5, "marshal.loads"), (6, "eval"), (7, "exec"),
                                       (8, "yaml.load"), (11, "torch.load"), (13, "np.load")]


def test_nothing_in_the_source_tree_unpickles_or_evaluates_its_input():
    found = {}
    for package in ("cluster", "actors", "pipelines", "judo_model"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            for line, name in dangerous_calls(path.read_text()):
                found[(relative, name)] = line
    unexplained = {f"{file}:{line} {name}" for (file, name), line in found.items() if (file, name) not in ALLOWED}
    assert not unexplained, f"calls that could run what they read: {sorted(unexplained)}"
    assert set(ALLOWED) <= set(found), "stale allowlist entries"
