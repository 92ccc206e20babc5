"""Security settings that fail at config validation, secrets by reference, and the HTTP endpoint's
request rules under property-based bad input. No broker, no Ray: pure and quick.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.kafka import KafkaError, KafkaSettings
from cluster.kafka_broker import BROKER_PRINCIPAL, BrokerNode, broker_properties
from cluster.local_kafka import LocalKafka
from cluster.secrets import SecretError, read_secret, write_secret_file
from cluster.tls import TlsFiles
from judo_model.imaging import encode_png
from pipelines.config import ConfigError, HttpSection, parse_config
from pipelines.http_api import KNOWN_KEYS, HttpRefusal, check_bearer, http_request_to_frame_request
from pipelines.judo_request import JudoFrameRequest

BASE = {"lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}], "products": {"bottle": {"bank": "b"}}}
ROOT = Path(__file__).resolve().parents[1]
#: Config keys that would hold a secret's value rather than name it.
INLINE_SECRET_KEYS = ("sasl_plain_password", "ssl_password", "bearer_token")
IMAGE = base64.b64encode(encode_png(np.zeros((16, 16, 3), np.uint8))).decode()


def config_with(kafka: dict | None = None, http: dict | None = None):
    raw = {**BASE, "judo": {"checkpoint": "c", **({"http": http} if http is not None else {})}}
    if kafka is not None:
        raw["kafka"] = {"mode": "external", "settings": {"bootstrap_servers": "b:9093", **kafka}}
    return parse_config(raw)


@pytest.mark.parametrize("mechanism, why", [("OAUTHBEARER", "token provider"), ("GSSAPI", "Kerberos")])
def test_mechanisms_the_project_cannot_make_work_are_refused_with_the_reason(mechanism, why):
    with pytest.raises(ConfigError, match=f"(?s)sasl_mechanism {mechanism} is not supported.*{why}"):
        config_with(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism, "sasl_plain_username": "u",
                           "sasl_plain_password_env": "PW"})


@pytest.mark.parametrize("kafka, message", [
    ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}, "needs sasl_plain_username"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "u",
      "sasl_plain_password": "p", "sasl_plain_password_env": "PW"}, "one way only"),
])
def test_incomplete_or_ambiguous_kafka_security_is_refused(kafka, message):
    with pytest.raises(ConfigError, match=message):
        config_with(kafka=kafka)


def test_kafka_passwords_are_read_from_env_or_file_only_when_a_client_is_built(tmp_path, monkeypatch):
    secret_file = write_secret_file(tmp_path / "kafka.password", "file-Secret-1")
    assert secret_file.stat().st_mode & 0o777 == 0o600
    by_file = config_with(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                 "sasl_plain_username": "judo", "sasl_plain_password_file": str(secret_file)})
    settings = by_file.kafka.settings
    dumped = json.dumps(by_file.model_dump(mode="json"))
    assert "file-Secret-1" not in dumped and "file-Secret-1" not in repr(settings)
    assert settings.client_kwargs()["sasl_plain_password"] == "file-Secret-1"

    by_env = KafkaSettings(bootstrap_servers="b:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                           sasl_plain_username="judo", sasl_plain_password_env="JUDO_TEST_KAFKA_PW")
    with pytest.raises(KafkaError, match="JUDO_TEST_KAFKA_PW is not set") as unset:
        by_env.client_kwargs()
    monkeypatch.setenv("JUDO_TEST_KAFKA_PW", "env-Secret-2")
    assert by_env.client_kwargs()["sasl_plain_password"] == "env-Secret-2"
    assert "env-Secret-2" not in repr(by_env) and "env-Secret-2" not in str(unset.value)
    inline = KafkaSettings(bootstrap_servers="b:1", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                           sasl_plain_username="judo", sasl_plain_password="inline-Secret-3")
    assert "inline-Secret-3" not in repr(inline) and "inline-Secret-3" not in str(inline)


@pytest.mark.parametrize("section, key, alternatives", [
    ("kafka", "sasl_plain_password", "sasl_plain_password_env.*sasl_plain_password_file"),
    ("kafka", "ssl_password", "ssl_password_env.*ssl_password_file"),
    ("judo.http", "bearer_token", "bearer_token_env.*bearer_token_file"),
    ("metrics", "bearer_token", "bearer_token_env.*bearer_token_file"),
])
def test_a_secret_given_inline_in_the_config_is_refused_naming_the_alternatives(section, key, alternatives):
    secret = "inline-Secret-9"
    if section == "kafka":
        raw = {**BASE, "judo": {"checkpoint": "c"}, "kafka": {"mode": "external", "settings": {
            "bootstrap_servers": "b:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "u", key: secret}}}
    elif section == "judo.http":
        raw = {**BASE, "judo": {"checkpoint": "c", "http": {"enabled": True, key: secret}}}
    else:
        raw = {**BASE, "judo": {"checkpoint": "c"}, "metrics": {key: secret}}
    with pytest.raises(ConfigError, match=f"(?s){key} gives the .* inline.*{alternatives}") as refused:
        parse_config(raw)
    assert secret not in str(refused.value)


def _yaml_texts():
    """Every YAML file in the repository, and every YAML block of its Markdown."""
    for path in sorted(ROOT.rglob("*.y*ml")):
        if not any(part.startswith(".") or part.endswith("egg-info") for part in path.relative_to(ROOT).parts):
            yield path, path.read_text()
    for path in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        for block in re.findall(r"```ya?ml\n(.*?)```", path.read_text(), flags=re.S):
            yield path, block


def test_no_shipped_config_or_documented_example_holds_a_secret_inline():
    inline = re.compile(rf"^\s*({'|'.join(INLINE_SECRET_KEYS)})\s*:\s*(?!null\b|~)\S", re.M)
    found = [(str(path.relative_to(ROOT)), m.group(0).strip()) for path, text in _yaml_texts()
             for m in inline.finditer(text)]
    assert found == []


def test_secret_references_fail_with_the_reference_not_the_value(tmp_path):
    with pytest.raises(SecretError, match="cannot read"):
        read_secret(file=tmp_path / "missing", what="x")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        read_secret(file=tmp_path / "empty", what="x")
    with pytest.raises(SecretError, match="one of"):
        read_secret(value="a", env="B", what="x")
    assert read_secret(what="x") is None


@pytest.mark.parametrize("http, message", [
    ({"enabled": True}, "needs a bearer token"),
    ({"enabled": True, "bearer_token_env": "A", "bearer_token_file": "/b"}, "one way only"),
    ({"enabled": True, "bearer_token_env": "B", "ssl_certfile": "/c.pem"}, "go together"),
])
def test_the_http_endpoint_is_never_enabled_without_a_token(http, message):
    with pytest.raises(ConfigError, match=message):
        config_with(http=http)


def test_http_token_by_reference_and_tls_options(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDO_TEST_HTTP_TOKEN", "http-Token-4")
    http = config_with(http={"enabled": True, "bearer_token_env": "JUDO_TEST_HTTP_TOKEN",
                             "ssl_certfile": "/tls/cert.pem", "ssl_keyfile": "/tls/key.pem"}).judo.http
    assert http.token() == "http-Token-4"
    assert http.serve_http_options() == {"host": "127.0.0.1", "port": 8000, "ssl_certfile": "/tls/cert.pem",
                                         "ssl_keyfile": "/tls/key.pem"}
    assert HttpSection().serve_http_options() == {"host": "127.0.0.1", "port": 8000}


@pytest.mark.parametrize("header, token, status", [
    ("", "t", 401), ("Bearer wrong", "t", 401), ("bearer t", "t", 401), ("Bearer t", None, 403),
    ("Bearer t\u00e9", "t", 401),
])
def test_bearer_check_refuses_every_wrong_or_missing_token(header, token, status):
    with pytest.raises(HttpRefusal) as refused:
        check_bearer({"authorization": header}, token)
    assert refused.value.status == status
    check_bearer({"authorization": "Bearer t"}, "t")


# --------------------------------------------------------------------------- property-based bad input

JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
#: values a field might carry: right-looking and wrong ones, base64 that is not an image, traversal paths
FIELD_VALUE = (JSON_VALUE | st.just(IMAGE) | st.just(IMAGE[:-8]) | st.just("../../etc/passwd")
               | st.just(base64.b64encode(b"not an image").decode()) | st.lists(st.just(IMAGE), max_size=12)
               | st.lists(st.fixed_dictionaries({"text": JSON_VALUE}), max_size=3))
PAYLOAD = st.dictionaries(st.sampled_from(sorted(KNOWN_KEYS) + ["extra", "__proto__"]), FIELD_VALUE, max_size=9)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOAD | JSON_VALUE)
def test_any_json_body_is_a_request_or_a_4xx_refusal(payload):
    limits = HttpSection(max_references=4, max_questions=2)
    try:
        request = http_request_to_frame_request(payload, limits)
    except HttpRefusal as refusal:
        assert 400 <= refusal.status < 500 and str(refusal)
        return
    assert isinstance(request, JudoFrameRequest) and request.query.ndim == 3
    assert len(request.references) <= 4 and len(request.questions or []) <= 2


def test_reference_and_question_limits_are_named_in_the_refusal():
    limits = HttpSection(max_references=2)
    with pytest.raises(HttpRefusal, match=r"references: at most 2 allowed \(got 3\)"):
        http_request_to_frame_request({"image": IMAGE, "product": "p", "references": [IMAGE] * 3}, limits)
    with pytest.raises(HttpRefusal, match="unknown keys"):
        http_request_to_frame_request({"image": IMAGE, "product": "p", "reference": [IMAGE]}, limits)
    big = base64.b64encode(encode_png(np.zeros((64, 64, 3), np.uint8))).decode()
    with pytest.raises(HttpRefusal, match="image"):
        http_request_to_frame_request({"image": big, "product": "p"}, HttpSection(max_image_pixels=1000))


def test_a_secured_local_broker_s_properties(tmp_path):
    node = BrokerNode(node_id=1, port=9001, controller_port=9101, data_dir=tmp_path / "b1")
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "ks.pem", tmp_path / "c.pem", tmp_path / "k.pem")
    props = broker_properties(node, [node], "SASL_SSL", {"judo": "pw"}, tls, admin=("admin", "adm-pw"), acls=True)
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512" == props["sasl.mechanism.inter.broker.protocol"]
    assert props["listener.name.client.ssl.client.auth"] == "required"  # SASL_SSL ignores the global setting
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == f"User:admin;{BROKER_PRINCIPAL}"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
    assert '"pw"' not in "".join(props.values()), "user passwords live in the metadata log, not the properties"
    with pytest.raises(ValueError, match="acls=True needs"):
        LocalKafka(listener="SSL", acls=True)
    with pytest.raises(ValueError, match="only letters"):
        LocalKafka(listener="SASL_SSL", sasl_users={"judo": 'pw"; inject'})
