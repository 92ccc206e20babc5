"""The dashboard's HTTP side: static pages, a JSON API over :class:`DashboardState`, and feedback to Kafka.

Plain ``http.server``: nothing to fetch at run time and nothing to build. Every page and API call
needs a login (:mod:`tooling.dashboard.auth`: viewer or operator; only operators send feedback,
with the session's CSRF token); HTTPS when a certificate is given. Safety: every response
carries a Content-Security-Policy that allows only this server's own scripts and styles (no
inline script, so a reasoning string can never run as code even if it reached the DOM as
markup, which the page never does: it sets ``textContent``); feedback is accepted only as JSON
from this origin (a cross-site form cannot send it), in a bounded body, for a verdict the
dashboard has shown.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from pydantic import ValidationError

from cluster.kafka import KafkaSettings
from cluster.messages import Feedback
from cluster.records import feedback_to_record
from judo_model.imaging import decode_image, encode_png
from judo_model.prefilter.references import REFERENCES_SUBDIR, ReferenceIndex
from pipelines.config import PipelineConfig
from tooling.dashboard import DEFAULT_PORT
from tooling.dashboard.auth import DashboardAuth, Session
from tooling.dashboard.feeds import KafkaFeed, ReplicaFeed, TraceFileFeed
from tooling.dashboard.state import DashboardState, Limits

log = logging.getLogger(__name__)


STATIC = Path(__file__).resolve().parent / "static"
#: one page; its script picks the view from the path
PAGES = ("/", "/lines", "/trace")
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "login.js": "text/javascript; charset=utf-8"}
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "bmp": "image/bmp"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
#: the login page posts its form to this server (every other page may post no form at all), with its
#: origin: under "no-referrer" a browser sends a form post's Origin as "null", which the origin check refuses
LOGIN_HEADERS = {**SECURITY_HEADERS, "Referrer-Policy": "same-origin",
                 "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"].replace(
                     "form-action 'none'", "form-action 'self'")}
MAX_FEEDBACK_BYTES = 16 * 1024
MAX_LOGIN_BYTES = 4 * 1024
#: where a generated operator token is written when no credentials are configured
GENERATED_TOKEN_FILE = Path.home() / ".cache" / "judo-inspect" / "dashboard" / "operator.token"
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class FeedbackPublisher:
    """Writes feedback with the project's durable producer (``acks=all``, idempotent) and waits
    for the acknowledgement, so the operator is told "saved" only once Kafka has it."""

    def __init__(self, settings: KafkaSettings, topic: str, timeout_s: float = 30.0):
        self.settings = settings
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer = None
        self._lock = threading.Lock()

    def publish(self, feedback: Feedback) -> dict:
        with self._lock:
            if self._producer is None:
                self._producer = self.settings.producer()
            producer = self._producer
        record = feedback_to_record(feedback)
        meta = producer.send(self.topic, key=record.key, value=record.value,
                             headers=record.headers).get(timeout=self.timeout_s)
        return {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=10)
                self._producer = None


class Dashboard:
    """State, feeds and the HTTP server for one pipeline config."""

    def __init__(self, config: PipelineConfig, settings: KafkaSettings, *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, ray_address: str | None = None, window_s: float = 60.0,
                 backlog: int = 200, limits: Limits = Limits(), auth: DashboardAuth | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None):
        self.config = config
        self.tls = tls_cert is not None
        self.auth = auth or DashboardAuth.from_sources(generated_token_file=GENERATED_TOKEN_FILE,
                                                       secure_cookies=self.tls)
        self.window_s = window_s
        cameras = [(line.id, camera) for line in config.lines for camera in line.cameras]
        self.state = DashboardState(cameras, limits)
        self.publisher = FeedbackPublisher(settings, config.topics.feedback)
        self.feeds = [KafkaFeed(self.state, settings, config.topics.verdicts, config.topics.frames, backlog),
                      ReplicaFeed(self.state, ray_address or config.ray.address)]
        if config.telemetry.trace_file:
            self.feeds.append(TraceFileFeed(self.state, config.telemetry.trace_file))
        self._references: dict[str, dict[str, str | None]] = {}
        self._references_lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))
        self.server.daemon_threads = True
        if tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(tls_cert), str(tls_key or tls_cert))
            # the handshake runs in the request's thread, so a silent client cannot stall the accept loop
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                     do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> "Dashboard":
        for feed in self.feeds:
            feed.start()
        self._thread = threading.Thread(target=self.server.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for feed in self.feeds:
            feed.stop()
        self.server.shutdown()
        self.server.server_close()
        for feed in self.feeds:
            feed.join(timeout=15)
        self.publisher.close()

    # ------------------------------------------------------------------ API bodies
    def health(self) -> dict:
        return {
            "window_s": self.window_s,
            "cameras": self.state.camera_health(self.window_s),
            "stages": self.state.stage_latency(),
            "verdict_latency": self.state.verdict_latency(self.window_s),
            "replicas": self.state.replica_history(),
            "replica_bounds": {"min": self.config.judo.replicas.min, "max": self.config.judo.replicas.max},
            "feeds": self.state.feed_status(),
            "duplicates": self.state.duplicates,
            "topics": {"verdicts": self.config.topics.verdicts, "frames": self.config.topics.frames,
                       "feedback": self.config.topics.feedback},
        }

    def reference_path(self, product: str, reference_id: str) -> str | None:
        """Where a product's normal reference image lives, from the bank's reference index (loaded once)."""
        if product not in self.config.products:
            return None
        with self._references_lock:
            if product not in self._references:
                index = ReferenceIndex.load(Path(self.config.products[product].bank) / REFERENCES_SUBDIR)
                self._references[product] = dict(zip(index.ids, index.paths))
            return self._references[product].get(reference_id)

    def feedback(self, payload: dict) -> Feedback:
        """Build the record from the verdict the card showed; the browser names only the frame and the judgement."""
        verdict = self.state.verdict_of(str(payload.get("frame_id", "")))
        if verdict is None:
            raise LookupError("no verdict for this frame in the dashboard's window")
        defect = verdict.defect
        return Feedback(
            frame_id=verdict.frame_id, camera_id=verdict.camera_id, line_id=verdict.line_id,
            product=verdict.product, trace_id=verdict.trace_id, action=payload.get("action"),
            defect_type=payload.get("defect_type") or None, verdict_stage=verdict.stage,
            verdict_is_anomalous=verdict.is_anomalous, verdict_defect_type=defect.type if defect else None,
            model_version=verdict.model_version, operator=payload.get("operator") or "",
            comment=payload.get("comment") or "")


def _handler_for(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        app = dashboard

    return Handler


class _Handler(BaseHTTPRequestHandler):
    app: Dashboard
    server_version = "judo-dashboard"
    sys_version = ""
    session: Session | None = None

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def handle(self) -> None:
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.settimeout(30)
                self.connection.do_handshake()
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:  # a client that is no TLS client, or gone
            log.debug("%s: connection dropped: %s", self.client_address[0], exc)

    # ------------------------------------------------------------------ routing
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/favicon.ico":
            return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", cache=True)
        if path == "/login":
            return self._send(HTTPStatus.OK, (STATIC / "login.html").read_bytes(), "text/html; charset=utf-8",
                              headers=LOGIN_HEADERS)
        if path.startswith("/static/") and path[len("/static/"):] in ASSETS:
            name = path[len("/static/"):]
            return self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), ASSETS[name])
        self.session = self.app.auth.session_of(self.headers)
        if self.session is None:
            if path in PAGES:
                return self._redirect("/login?" + urlencode({"next": path}))
            return self._json({"error": "log in first"}, HTTPStatus.UNAUTHORIZED)
        try:
            if path in PAGES:
                self._send(HTTPStatus.OK, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
            elif path == "/api/session":
                self._json({"user": self.session.user, "role": self.session.role, "csrf": self.session.csrf,
                            "may_send_feedback": self.session.may_send_feedback})
            elif path == "/api/verdicts":
                after, limit = int(query.get("after", 0)), min(int(query.get("limit", 60)), 200)
                if after < 0 or limit < 1:
                    raise ValueError("after >= 0, limit >= 1")
                cards, latest = self.app.state.cards_after(after, limit)
                self._json({"cards": cards, "latest_seq": latest})
            elif path == "/api/health":
                self._json(self.app.health())
            elif path == "/api/trace":
                trace_id = query.get("id", "")
                if not _TRACE_ID.match(trace_id):
                    return self._json({"error": "id must be a 32-hex trace id"}, HTTPStatus.BAD_REQUEST)
                self._json({"trace_id": trace_id, "spans": self.app.state.trace(trace_id)})
            elif path == "/api/frame":
                self._frame(query.get("id", ""))
            elif path == "/api/reference":
                self._reference(query.get("product", ""), query.get("id", ""))
            else:
                self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        except ValueError:
            self._json({"error": "malformed query"}, HTTPStatus.BAD_REQUEST)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/api/feedback", "/login", "/logout"):
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        origin = self.headers.get("Origin")
        scheme = "https" if self.app.tls else "http"
        if origin is not None and origin != f"{scheme}://{self.headers.get('Host', '')}":
            return self._json({"error": "cross-origin requests are refused"}, HTTPStatus.FORBIDDEN)
        if path == "/login":
            return self._login()
        self.session = self.app.auth.session_of(self.headers)
        if self.session is None:
            return self._json({"error": "log in first"}, HTTPStatus.UNAUTHORIZED)
        if not self.app.auth.csrf_ok(self.session, self.headers.get("X-CSRF-Token", "")):
            return self._json({"error": "missing or wrong CSRF token; reload the page"}, HTTPStatus.FORBIDDEN)
        if path == "/logout":
            self.app.auth.logout(self.session)
            return self._json({"logged_out": True}, headers={"Set-Cookie": self.app.auth.cookie(None)})
        if not self.session.may_send_feedback:
            return self._json({"error": f"only operators may send feedback; {self.session.user} is a "
                                        f"{self.session.role}"}, HTTPStatus.FORBIDDEN)
        self._feedback()

    def _method_not_allowed(self) -> None:
        self._json({"error": "only GET and POST"}, HTTPStatus.METHOD_NOT_ALLOWED, headers={"Allow": "GET, POST"})

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed  # not http.server's 501

    def _body(self, limit: int) -> bytes | None:
        """The request body if its declared length is 1..``limit`` bytes (a 413 is sent otherwise)."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= limit:
            self._json({"error": f"the body must be 1-{limit} bytes"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return None
        return self.rfile.read(length)

    def _login(self) -> None:
        client = self.client_address[0]
        if self.app.auth.throttled(client):
            return self._json({"error": "too many failed logins; wait a few minutes"}, HTTPStatus.TOO_MANY_REQUESTS)
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return self._json({"error": "log in with the form"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        body = self._body(MAX_LOGIN_BYTES)
        if body is None:
            return
        try:
            fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), strict_parsing=False).items()}
        except (UnicodeDecodeError, ValueError):
            fields = {}
        session = self.app.auth.login(fields, client)
        if session is None:
            log.warning("dashboard: failed login from %s", client)
            return self._redirect("/login?failed=1")
        log.info("dashboard: %s logged in as %s from %s", session.user, session.role, client)
        target = fields.get("next", "/")
        self._redirect(target if target in PAGES else "/", {"Set-Cookie": self.app.auth.cookie(session)})

    def _feedback(self) -> None:
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._json({"error": "send feedback as application/json"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        body = self._body(MAX_FEEDBACK_BYTES)
        if body is None:
            return
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("a JSON object is expected")
            if self.session.user in self.app.auth.users:  # a named login: the record names who judged
                payload = {**payload, "operator": self.session.user}
            feedback = self.app.feedback(payload)
        except LookupError as exc:
            return self._json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'feedback'}: {e['msg']}" for e in exc.errors())
            return self._json({"error": problems}, HTTPStatus.BAD_REQUEST)
        except (ValueError, TypeError, RecursionError) as exc:
            return self._json({"error": f"not valid feedback JSON: {str(exc)[:200]}"}, HTTPStatus.BAD_REQUEST)
        try:
            written = self.app.publisher.publish(feedback)
        except Exception as exc:
            log.warning("feedback for %s not written: %s", feedback.frame_id, exc)
            return self._json({"error": f"Kafka did not acknowledge the feedback: {exc}"},
                              HTTPStatus.SERVICE_UNAVAILABLE)
        self._json({"feedback": feedback.model_dump(mode="json"), **written}, HTTPStatus.CREATED)

    # ------------------------------------------------------------------ images
    def _frame(self, frame_id: str) -> None:
        cached = self.app.state.frame(frame_id)
        if cached is None:
            return self._json({"error": "frame no longer in the dashboard's window"}, HTTPStatus.NOT_FOUND)
        if cached.encoding in IMAGE_TYPES:
            return self._send(HTTPStatus.OK, cached.image, IMAGE_TYPES[cached.encoding], cache=True)
        pixels = decode_image(cached.image, cached.encoding, width=cached.width, height=cached.height)
        self._send(HTTPStatus.OK, encode_png(pixels), "image/png", cache=True)

    def _reference(self, product: str, reference_id: str) -> None:
        try:
            path = self.app.reference_path(product, reference_id)
        except Exception as exc:
            log.warning("reference index of %s unreadable: %s", product, exc)
            path = None
        suffix = Path(path).suffix.lower().lstrip(".") if path else ""
        kind = {"jpg": "jpeg"}.get(suffix, suffix)
        if path is None or kind not in IMAGE_TYPES or not Path(path).is_file():
            return self._json({"error": "reference image not available"}, HTTPStatus.NOT_FOUND)
        self._send(HTTPStatus.OK, Path(path).read_bytes(), IMAGE_TYPES[kind], cache=True)

    # ------------------------------------------------------------------ responses
    def _json(self, body: dict, status: HTTPStatus = HTTPStatus.OK, headers: dict | None = None) -> None:
        self._send(status, json.dumps(body, allow_nan=False, default=str).encode(), "application/json",
                   headers={**SECURITY_HEADERS, **(headers or {})})

    def _redirect(self, location: str, headers: dict | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", headers={**SECURITY_HEADERS, "Location": location,
                                                                    **(headers or {})})

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, cache: bool = False,
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        if self.app.tls:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        for name, value in (headers or SECURITY_HEADERS).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
