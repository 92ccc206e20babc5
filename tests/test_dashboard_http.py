"""The dashboard's HTTP rules without a plant: login required, viewer and operator roles, CSRF on
feedback, strict headers, HTTPS with secure cookies, and property-based bad input (always a 4xx).

No feed is started and Kafka is never reached: every request here is refused, or answered from the
in-memory state, before a feedback record would be written.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.kafka import KafkaSettings
from cluster.kafka_broker import free_port
from cluster.messages import Defect, RLEMask, Verdict
from cluster.secrets import write_secret_file
from cluster.tls import write_tls_files
from judo_model.imaging import decode_image
from pipelines.config import PipelineConfig
from tooling.dashboard.auth import AuthConfigError, DashboardAuth
from tooling.dashboard.server import LOGIN_HEADERS, SECURITY_HEADERS, Dashboard
from tooling.dashboard.state import CachedFrame

OPERATOR_TOKEN, VIEWER_TOKEN = "op-Token-51d2e8", "view-Token-7a0c44"
ROOT = Path(__file__).resolve().parents[1]
USERS = {"ana": ("operator", "ana-Password-1"), "vic": ("viewer", "vic-Password-2")}


def make_dashboard(tmp_path, **kwargs) -> Dashboard:
    config = PipelineConfig.model_validate({
        "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
        "products": {"bottle": {"bank": str(tmp_path)}}, "judo": {"checkpoint": str(tmp_path)}})
    auth = DashboardAuth({"operator": OPERATOR_TOKEN, "viewer": VIEWER_TOKEN}, USERS,
                         secure_cookies="tls_cert" in kwargs)
    app = Dashboard(config, KafkaSettings(bootstrap_servers="127.0.0.1:9"), port=free_port(), auth=auth, **kwargs)
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    app.state.add_verdict(Verdict(frame_id="f-1", camera_id="c1", line_id="l1", product="bottle", stage="judo",
                                  anomaly_score=3.0, threshold=2.0, is_anomalous=True, model_version="m",
                                  defect=Defect(type="stain", mask=RLEMask.encode(mask), reasoning="<b>bold</b>")))
    threading.Thread(target=app.server.serve_forever, daemon=True).start()
    return app


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    app = make_dashboard(tmp_path_factory.mktemp("dashboard"))
    yield app
    app.server.shutdown()
    app.server.server_close()


def call(app: Dashboard, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, dict, bytes]:
    host, port = app.server.server_address[:2]
    connection = (http.client.HTTPSConnection(host, port, context=context, timeout=10) if context
                  else http.client.HTTPConnection(host, port, timeout=10))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def login(app: Dashboard, context=None, **form) -> dict:
    """Log in through the form; the headers a browser would then send (cookie and CSRF token)."""
    status, headers, _ = call(app, "POST", "/login", urllib.parse.urlencode(form).encode(),
                              {"Content-Type": "application/x-www-form-urlencoded"}, context)
    assert status == 303 and headers["location"] == "/", headers
    cookie = headers["set-cookie"].split(";")[0]
    status, _, body = call(app, "GET", "/api/session", headers={"Cookie": cookie}, context=context)
    assert status == 200
    return {"Cookie": cookie, "X-CSRF-Token": json.loads(body)["csrf"], "session": json.loads(body),
            "set-cookie": headers["set-cookie"]}


def feedback_headers(session: dict, **extra) -> dict:
    return {"Cookie": session["Cookie"], "X-CSRF-Token": session["X-CSRF-Token"], "Content-Type": "application/json",
            **extra}


FEEDBACK = json.dumps({"frame_id": "nope", "action": "confirm", "operator": "ana"}).encode()


def test_nothing_but_the_login_page_and_static_files_without_credentials(dashboard):
    for path in ("/", "/lines", "/trace?id=" + "a" * 32):
        status, headers, _ = call(dashboard, "GET", path)
        assert status == 303 and headers["location"].startswith("/login?next=")
    for path in ("/api/verdicts", "/api/health", "/api/session", "/api/frame?id=f-1", "/api/trace?id=" + "a" * 32):
        status, _, body = call(dashboard, "GET", path)
        assert status == 401 and json.loads(body)["error"] == "log in first", path
    assert call(dashboard, "POST", "/api/feedback", FEEDBACK, {"Content-Type": "application/json"})[0] == 401
    status, headers, page = call(dashboard, "GET", "/login")
    assert status == 200 and b'action="/login"' in page
    assert headers["content-security-policy"] == LOGIN_HEADERS["Content-Security-Policy"]
    assert "form-action 'self'" in headers["content-security-policy"] and "unsafe" not in headers[
        "content-security-policy"]
    assert call(dashboard, "GET", "/api/verdicts", headers={"Cookie": "judo_session=forged"})[0] == 401
    assert call(dashboard, "GET", "/api/verdicts", headers={"Authorization": "Bearer wrong"})[0] == 401


@pytest.mark.parametrize("form, role", [({"token": OPERATOR_TOKEN}, "operator"), ({"token": VIEWER_TOKEN}, "viewer"),
                                        ({"user": "ana", "password": "ana-Password-1"}, "operator"),
                                        ({"user": "vic", "password": "vic-Password-2"}, "viewer")])
def test_a_login_gives_an_httponly_strict_session_of_its_role(dashboard, form, role):
    session = login(dashboard, **form)
    assert session["session"]["role"] == role and len(session["X-CSRF-Token"]) >= 32
    assert session["session"]["may_send_feedback"] is (role == "operator")  # the page offers feedback controls by it
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {a.strip() for a in session["set-cookie"].split(";")}
    status, headers, body = call(dashboard, "GET", "/api/verdicts", headers={"Cookie": session["Cookie"]})
    assert status == 200 and json.loads(body)["cards"][0]["verdict"]["defect"]["reasoning"] == "<b>bold</b>"
    assert headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert "form-action 'none'" in headers["content-security-policy"]
    status, _, _ = call(dashboard, "POST", "/logout", headers={"Cookie": session["Cookie"],
                                                               "X-CSRF-Token": session["X-CSRF-Token"]})
    assert status == 200
    assert call(dashboard, "GET", "/api/verdicts", headers={"Cookie": session["Cookie"]})[0] == 401


@pytest.mark.parametrize("form", [{"token": "wrong"}, {"user": "ana", "password": "vic-Password-2"},
                                  {"user": "nobody", "password": "x"}, {"next": "/"}])
def test_wrong_credentials_go_back_to_the_login_page(dashboard, form):
    status, headers, _ = call(dashboard, "POST", "/login", urllib.parse.urlencode(form).encode(),
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and headers["location"] == "/login?failed=1" and "set-cookie" not in headers


def test_repeated_failed_logins_are_throttled(tmp_path):
    app = make_dashboard(tmp_path)
    try:
        statuses = [call(app, "POST", "/login", b"token=guess",
                         {"Content-Type": "application/x-www-form-urlencoded"})[0] for _ in range(12)]
        assert statuses[:10] == [303] * 10 and statuses[10:] == [429, 429]
    finally:
        app.server.shutdown()
        app.server.server_close()


def test_a_viewer_may_look_but_not_send_feedback(dashboard):
    viewer = login(dashboard, user="vic", password="vic-Password-2")
    status, _, body = call(dashboard, "POST", "/api/feedback", FEEDBACK, feedback_headers(viewer))
    assert status == 403 and "only operators may send feedback" in json.loads(body)["error"]
    bearer = {"Authorization": f"Bearer {VIEWER_TOKEN}", "Content-Type": "application/json"}
    assert call(dashboard, "POST", "/api/feedback", FEEDBACK, bearer)[0] == 403


def test_feedback_needs_the_session_s_csrf_token(dashboard):
    operator = login(dashboard, token=OPERATOR_TOKEN)
    for token in ("", "wrong", login(dashboard, token=OPERATOR_TOKEN)["X-CSRF-Token"]):
        status, _, body = call(dashboard, "POST", "/api/feedback", FEEDBACK,
                               feedback_headers(operator, **{"X-CSRF-Token": token}))
        assert status == 403 and "CSRF" in json.loads(body)["error"]
    status, _, body = call(dashboard, "POST", "/api/feedback", FEEDBACK, feedback_headers(operator))
    assert status == 404 and "no verdict for this frame" in json.loads(body)["error"]  # past every check
    bearer = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"}
    assert call(dashboard, "POST", "/api/feedback", FEEDBACK, bearer)[0] == 404  # no cookie, nothing to forge


@pytest.mark.parametrize("body, headers, status, problem", [
    (b'{"frame_id": "f-1", "action": "confirm", "operator": "ana"}', {"Content-Type": "text/plain"}, 415,
     "application/json"),
    (b'{"frame_id": "f-1", "action": "confirm", "operator": "ana"}',
     {"Content-Type": "application/json", "Origin": "http://evil.example"}, 403, "cross-origin"),
    (b'{"frame_id": "f-1", "action": "relabel", "operator": "ana"}', {"Content-Type": "application/json"}, 400,
     "relabel needs the corrected defect_type"),
    (b'[1, 2]', {"Content-Type": "application/json"}, 400, "JSON object"),
    (b"x" * 20_000, {"Content-Type": "application/json"}, 413, "bytes"),
])
def test_feedback_is_refused_unless_same_origin_json_for_a_shown_verdict(dashboard, body, headers, status, problem):
    operator = login(dashboard, token=OPERATOR_TOKEN)
    got, _, answer = call(dashboard, "POST", "/api/feedback", body, {**feedback_headers(operator), **headers})
    assert got == status and problem in json.loads(answer)["error"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_get_405_not_a_5xx(dashboard, method):
    assert call(dashboard, method, "/api/feedback", FEEDBACK, {"Content-Type": "application/json"})[0] == 405


def test_cross_origin_logins_are_refused(dashboard):
    status, _, _ = call(dashboard, "POST", "/login", f"token={OPERATOR_TOKEN}".encode(),
                        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"})
    assert status == 403


def test_images_need_a_login_and_paths_do_not_traverse(dashboard):
    pixels = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3)
    dashboard.state.add_frame("f-1", CachedFrame("raw_rgb8", 4, 3, pixels.tobytes()))
    viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    status, headers, body = call(dashboard, "GET", "/api/frame?id=f-1", headers=viewer)
    assert status == 200 and headers["content-type"] == "image/png"
    assert np.array_equal(decode_image(body, "png"), pixels)
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/api/reference?product=bottle&id=../../etc/passwd",
                 "/api/reference?product=../..&id=x", "/api/trace?id=../../etc", "/api/frame?id=../f-1"):
        assert call(dashboard, "GET", path, headers=viewer)[0] in (400, 404), path


def test_https_with_secure_host_only_cookies(tmp_path):
    tls = write_tls_files(tmp_path / "tls")
    app = make_dashboard(tmp_path, tls_cert=tls.broker_keystore, tls_key=tls.broker_keystore)
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    try:
        assert app.url.startswith("https://")
        session = login(app, context, token=OPERATOR_TOKEN)
        assert session["Cookie"].startswith("__Host-judo_session=") and "Secure" in session["set-cookie"]
        status, headers, _ = call(app, "GET", "/api/verdicts", headers={"Cookie": session["Cookie"]}, context=context)
        assert status == 200 and "max-age" in headers["strict-transport-security"]
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            call(app, "GET", "/login")  # plain HTTP on the HTTPS port
    finally:
        app.server.shutdown()
        app.server.server_close()


def test_credentials_come_from_env_or_files_and_a_token_is_generated_otherwise(tmp_path):
    auth = DashboardAuth.from_sources(environ={"JUDO_DASHBOARD_OPERATOR_TOKEN": "env-op"},
                                      viewer_token_file=write_secret_file(tmp_path / "v", "file-view"))
    assert auth.tokens == {"operator": "env-op", "viewer": "file-view"} and auth.generated_token_file is None
    generated = DashboardAuth.from_sources(environ={}, generated_token_file=tmp_path / "gen" / "operator.token")
    token = (tmp_path / "gen" / "operator.token").read_text().strip()
    assert generated.check_token(token) == "operator" and len(token) >= 32
    assert (tmp_path / "gen" / "operator.token").stat().st_mode & 0o777 == 0o600
    users = tmp_path / "users"
    users.write_text("# name role password\nana operator pw one\n")
    users.chmod(0o644)
    with pytest.raises(AuthConfigError, match="chmod 600"):
        DashboardAuth.from_sources(environ={}, users_file=users)
    users.chmod(0o600)
    assert DashboardAuth.from_sources(environ={}, users_file=users).users == {"ana": ("operator", "pw one")}
    users.write_text("ana admin pw\n")
    with pytest.raises(AuthConfigError, match="role viewer or operator"):
        DashboardAuth.from_sources(environ={}, users_file=users)
    with pytest.raises(AuthConfigError, match="must differ"):
        DashboardAuth.from_sources(environ={"JUDO_DASHBOARD_OPERATOR_TOKEN": "same",
                                            "JUDO_DASHBOARD_VIEWER_TOKEN": "same"})


# --------------------------------------------------------------------------- property-based bad input

JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=10)
FEEDBACK_BODY = st.fixed_dictionaries({}, optional={
    "frame_id": st.sampled_from(["f-1", "nope", "../../etc/passwd"]) | JSON_VALUE,
    "action": st.sampled_from(["confirm", "reject", "relabel", "delete"]) | JSON_VALUE,
    "defect_type": JSON_VALUE, "operator": JSON_VALUE, "comment": JSON_VALUE | st.text(min_size=2001, max_size=2100),
}).map(lambda d: json.dumps(d).encode()) | st.binary(max_size=300) | JSON_VALUE.map(
    lambda v: json.dumps(v).encode())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=FEEDBACK_BODY, content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                                          "text/plain", ""]))
def test_property_bad_feedback_gets_a_4xx_never_a_500(dashboard, body, content_type):
    """Valid feedback for the shown verdict would reach Kafka (unreachable here: 503); nothing else may pass."""
    operator = login(dashboard, token=OPERATOR_TOKEN)
    status, _, answer = call(dashboard, "POST", "/api/feedback", body,
                             {**feedback_headers(operator), "Content-Type": content_type})
    payload = json.loads(answer)
    if status == 503:  # well formed for f-1: refused by nobody but the unreachable broker
        assert json.loads(body)["frame_id"] == "f-1"
        return
    assert 400 <= status < 500 and payload["error"], (status, payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/api/verdicts", "/api/trace", "/api/frame", "/api/reference", "/api/nothing",
                             "/static/app.js", "/static/x"]),
       query=st.dictionaries(st.sampled_from(["after", "limit", "id", "product"]),
                             st.text(max_size=20) | st.just("../../etc/passwd") | st.integers().map(str), max_size=3))
def test_property_any_query_is_answered_without_a_500(dashboard, path, query):
    status, _, _ = call(dashboard, "GET", f"{path}?{urllib.parse.urlencode(query)}",
                        headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
    assert status in (200, 400, 404), (path, query, status)


def test_judo_dashboard_without_credentials_prints_where_its_generated_token_is_and_warns_without_tls(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps({
        "kafka": {"mode": "external", "settings": {"bootstrap_servers": f"127.0.0.1:{free_port()}"}},
        "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
        "products": {"bottle": {"bank": str(tmp_path)}}, "judo": {"checkpoint": str(tmp_path)},
        "telemetry": {"trace_file": None}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUDO_DASHBOARD_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    log = tmp_path / "dashboard.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "dashboard", "--config", str(config), "--port", str(free_port()),
             "--ray-address", f"127.0.0.1:{free_port()}"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "WARNING: the dashboard serves plain HTTP" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
    finally:
        process.terminate()  # the dashboard stops its Ray probe child too
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    output = log.read_text()
    token_file = tmp_path / "home" / ".cache" / "judo-inspect" / "dashboard" / "operator.token"
    assert f"with the operator token in {token_file}" in output, output
    assert token_file.read_text().strip() not in output
