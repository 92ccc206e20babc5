"""JUDO's HTTP endpoint on the real Ray Serve, over HTTPS with a token read from a file by the replica.

Refused with a clear 4xx before any inference: no token or a wrong one (401), a body over the limit
(413), another media type (415), malformed JSON, too many references (400); plaintext HTTP on the
HTTPS port gets no answer; property-based bad bodies get a 4xx, never a 500. The token is not among
the replica's constructor arguments: the config names the file.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve

from cluster.kafka_broker import free_port
from cluster.ray_runtime import start_ray, stop_ray
from cluster.secrets import write_secret_file
from cluster.tls import write_tls_files
from judo_model.imaging import encode_png
from judo_model.modeling import load_model, save_checkpoint
from pipelines.config import parse_config
from pipelines.http_api import KNOWN_KEYS
from pipelines.serve_app import APP_NAME, build_judo_deployment

TOKEN = "http-Bearer-9c41e"
MAX_BODY = 64 * 1024
IMAGE = base64.b64encode(encode_png(np.zeros((32, 32, 3), np.uint8))).decode()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """The JUDO deployment (an untrained tiny checkpoint) behind Serve's proxy, HTTPS on, token from a file."""
    tmp = tmp_path_factory.mktemp("http")
    model, processor = load_model("tiny")
    checkpoint = save_checkpoint(model, processor, tmp / "judo-tiny-untrained")
    tls = write_tls_files(tmp / "tls")
    port = free_port()
    config = parse_config({
        "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
        "products": {"bottle": {"bank": str(tmp)}},
        "judo": {"checkpoint": str(checkpoint), "max_new_tokens": 16, "num_cpus": 0,
                 "http": {"enabled": True, "port": port, "bearer_token_file": str(write_secret_file(tmp / "t", TOKEN)),
                          "max_body_bytes": MAX_BODY, "max_references": 2,
                          "ssl_certfile": str(tls.broker_keystore), "ssl_keyfile": str(tls.broker_keystore)}},
        "telemetry": {"trace_file": None},
    })
    app = build_judo_deployment(config)
    # the replicas' arguments name the token's file; the replica reads it
    assert TOKEN not in json.dumps(config.judo.model_dump(mode="json")) and config.judo.http.bearer_token is None
    started = start_ray(num_cpus=2)
    try:
        serve.start(http_options=config.judo.http.serve_http_options(), logging_config={"enable_access_log": False})
        serve.run(app, name=APP_NAME, route_prefix="/judo")
        yield {"port": port, "context": ssl.create_default_context(cafile=str(tls.ca_cert))}
    finally:
        serve.shutdown()
        if started:
            stop_ray()


def post(endpoint, body: bytes, *, token: str | None = TOKEN, content_type: str = "application/json",
         headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPSConnection("127.0.0.1", endpoint["port"], context=endpoint["context"], timeout=120)
    sent = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        connection.request("POST", "/judo", body=body, headers=sent)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def good(**overrides) -> bytes:
    return json.dumps({"image": IMAGE, "product": "bottle", "references": [IMAGE], **overrides}).encode()


def test_the_right_token_over_https_gets_a_verdict(endpoint):
    status, verdict = post(endpoint, good())
    assert status == 200 and verdict["stage"] == "judo" and verdict["frame_id"] == "adhoc"
    assert TOKEN not in json.dumps(verdict)


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_no_token_or_a_wrong_one_is_401(endpoint, token):
    status, body = post(endpoint, good(), token=token)
    assert status == 401 and body["error"] == "missing or wrong bearer token"


@pytest.mark.parametrize("body, kwargs, status, message", [
    (b"x" * (MAX_BODY + 1), {}, 413, "at most"),
    (good(padding="y" * MAX_BODY), {}, 413, "at most"),
    (good(), {"content_type": "text/plain"}, 415, "application/json"),
    (b"{not json", {}, 400, "not valid JSON"),
    (b"\xff\xfe", {}, 400, "not valid JSON"),
    (good(references=[IMAGE] * 3), {}, 400, "references: at most 2"),
    (good(image="../../etc/passwd"), {}, 400, "image"),
    (good(questions=[{"text": 5}]), {}, 400, "questions[0]"),
    (json.dumps([1, 2]).encode(), {}, 400, "needs JSON"),
], ids=["oversize", "oversize-json", "media-type", "malformed", "not-utf8", "references", "traversal",
        "question-type", "not-an-object"])
def test_bad_requests_get_a_clear_4xx(endpoint, body, kwargs, status, message):
    got, payload = post(endpoint, body, **kwargs)
    assert got == status and message in payload["error"]


def test_plain_http_on_the_https_port_gets_no_answer(endpoint):
    connection = http.client.HTTPConnection("127.0.0.1", endpoint["port"], timeout=30)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.request("POST", "/judo", body=good(), headers={"Authorization": f"Bearer {TOKEN}"})
            connection.getresponse().read()
    finally:
        connection.close()


BODY_VALUE = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
              | st.lists(st.text(max_size=5), max_size=3) | st.just("../../../etc/passwd") | st.just(IMAGE[:40]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(body=st.binary(max_size=200)
       | st.dictionaries(st.sampled_from(sorted(KNOWN_KEYS) + ["other"]), BODY_VALUE, max_size=6).map(
           lambda d: json.dumps(d).encode()))
def test_property_bad_bodies_get_a_4xx_never_a_500(endpoint, body):
    status, payload = post(endpoint, body)
    assert 400 <= status < 500, (status, payload)
