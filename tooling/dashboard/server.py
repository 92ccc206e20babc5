"""The dashboard's HTTP side: static pages, a JSON API over :class:`DashboardState`, and feedback to Kafka.

Plain ``http.server``: nothing to fetch at run time and nothing to build. Safety: every response
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
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from cluster.kafka import KafkaSettings
from cluster.messages import Feedback
from cluster.records import feedback_to_record
from judo_model.imaging import decode_image, encode_png
from judo_model.prefilter.references import REFERENCES_SUBDIR, ReferenceIndex
from pipelines.config import PipelineConfig
from tooling.dashboard import DEFAULT_PORT
from tooling.dashboard.feeds import KafkaFeed, ReplicaFeed, TraceFileFeed
from tooling.dashboard.state import DashboardState, Limits

log = logging.getLogger(__name__)


STATIC = Path(__file__).resolve().parent / "static"
#: one page; its script picks the view from the path
PAGES = ("/", "/lines", "/trace")
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "bmp": "image/bmp"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MAX_FEEDBACK_BYTES = 16 * 1024
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
                 backlog: int = 200, limits: Limits = Limits()):
        self.config = config
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
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

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

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    # ------------------------------------------------------------------ routing
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        try:
            if path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", cache=True)
            elif path in PAGES:
                self._send(HTTPStatus.OK, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
            elif path.startswith("/static/") and path[len("/static/"):] in ASSETS:
                name = path[len("/static/"):]
                self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), ASSETS[name])
            elif path == "/api/verdicts":
                after, limit = int(query.get("after", 0)), min(int(query.get("limit", 60)), 200)
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
        if urlsplit(self.path).path != "/api/feedback":
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            return self._json({"error": "cross-origin feedback is refused"}, HTTPStatus.FORBIDDEN)
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._json({"error": "send feedback as application/json"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_FEEDBACK_BYTES:
            return self._json({"error": f"the body must be 1-{MAX_FEEDBACK_BYTES} bytes"},
                              HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            payload = json.loads(self.rfile.read(length))
            if not isinstance(payload, dict):
                raise ValueError("a JSON object is expected")
            feedback = self.app.feedback(payload)
        except LookupError as exc:
            return self._json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'feedback'}: {e['msg']}" for e in exc.errors())
            return self._json({"error": problems}, HTTPStatus.BAD_REQUEST)
        except ValueError as exc:
            return self._json({"error": f"not valid feedback JSON: {exc}"}, HTTPStatus.BAD_REQUEST)
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
    def _json(self, body: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(body, allow_nan=False, default=str).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
