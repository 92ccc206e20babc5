"""JUDO's ad-hoc HTTP endpoint, its safety rules: bearer token, bounded body, strict JSON, clear 4xx.

``POST /judo`` with ``{"image": b64, "product": str, "references": [b64], "questions": [{"text": str,
"options": {"A": str}}]}`` (optional ``frame_id``, ``defect_hint``, ``defect_types``, ``anomaly_score``,
``threshold``). Every request is refused before any inference unless it carries the configured
token (401; no token configured: 403), fits ``max_body_bytes`` (413), is JSON (400, 415 for another
media type) of the right shape and types (400) within the reference, question and pixel limits
(400). The replica (:class:`pipelines.serve_app.JudoReplica`) answers what passes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math

import numpy as np
from starlette.responses import JSONResponse

from judo_model.imaging import ImageDecodeError, decode_image
from judo_model.runtime.questions import Question
from pipelines.config import HttpSection
from pipelines.judo_request import JudoFrameRequest

#: Keys the endpoint knows; anything else is refused, so a typo is not silently ignored.
KNOWN_KEYS = {"image", "product", "references", "questions", "frame_id", "defect_hint", "defect_types",
              "anomaly_score", "threshold"}
MAX_TEXT = 2000


class HttpRefusal(ValueError):
    """A request the endpoint refuses: the HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _text(payload: dict, key: str, *, required: bool = False, limit: int = 200, where: str = "") -> str | None:
    value = payload.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or "\x00" in value:
        raise HttpRefusal(400, f"{where}{key}: expected a non-empty string of at most {limit} characters")
    return value


def _number(payload: dict, key: str) -> float:
    value = payload.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HttpRefusal(400, f"{key}: expected a finite number")
    return float(value)


def _image(field_name: str, value: object, max_pixels: int) -> np.ndarray:
    if not isinstance(value, str):
        raise HttpRefusal(400, f"{field_name}: expected a base64 string")
    try:
        return decode_image(base64.b64decode(value, validate=True), max_pixels=max_pixels)
    except (binascii.Error, ValueError, ImageDecodeError) as exc:
        raise HttpRefusal(400, f"{field_name}: {exc}") from None


def _list(payload: dict, key: str, limit: int) -> list:
    value = payload.get(key, [])
    if not isinstance(value, list):
        raise HttpRefusal(400, f"{key}: expected a list")
    if len(value) > limit:
        raise HttpRefusal(400, f"{key}: at most {limit} allowed (got {len(value)})")
    return value


def _question(i: int, value: object) -> Question:
    if not isinstance(value, dict) or set(value) - {"text", "options"}:
        raise HttpRefusal(400, f"questions[{i}]: expected {{'text': str, 'options': {{letter: str}}}}")
    text = _text(value, "text", required=True, limit=MAX_TEXT, where=f"questions[{i}].")
    options = value.get("options") or {}
    if not isinstance(options, dict) or len(options) > 26 or not all(
            isinstance(k, str) and 0 < len(k) <= 8 and isinstance(v, str) and len(v) <= MAX_TEXT
            for k, v in options.items()):
        raise HttpRefusal(400, f"questions[{i}].options: expected at most 26 short letters mapped to strings")
    return Question(text=text, options=options)


def http_request_to_frame_request(payload: object, limits: HttpSection | None = None) -> JudoFrameRequest:
    """The request an HTTP body describes, or :class:`HttpRefusal` (a ``ValueError``) saying what is wrong."""
    limits = limits or HttpSection()
    if not isinstance(payload, dict) or "image" not in payload or "product" not in payload:
        raise HttpRefusal(400, "the request needs JSON with 'image' (base64) and 'product'")
    unknown = sorted(str(k) for k in set(payload) - KNOWN_KEYS)
    if unknown:
        raise HttpRefusal(400, f"unknown keys {unknown[:5]}; known: {sorted(KNOWN_KEYS)}")
    product = _text(payload, "product", required=True)
    frame_id = _text(payload, "frame_id") or "adhoc"
    defect_hint = payload.get("defect_hint") or None
    if defect_hint is not None:
        defect_hint = _text(payload, "defect_hint")
    defect_types = payload.get("defect_types")
    if defect_types is not None and (not isinstance(defect_types, list) or len(defect_types) > 256 or not all(
            isinstance(t, str) and t.strip() and len(t) <= 200 for t in defect_types)):
        raise HttpRefusal(400, "defect_types: expected a list of non-empty strings")
    raw_references = _list(payload, "references", limits.max_references)
    raw_questions = _list(payload, "questions", limits.max_questions)
    anomaly_score, threshold = _number(payload, "anomaly_score"), _number(payload, "threshold")
    questions = [_question(i, q) for i, q in enumerate(raw_questions)]
    query = _image("image", payload["image"], limits.max_image_pixels)
    references = [_image(f"references[{i}]", r, limits.max_image_pixels) for i, r in enumerate(raw_references)]
    return JudoFrameRequest(
        frame_id=frame_id, camera_id="http", line_id="http", product=product, captured_at=None, query=query,
        references=references, anomaly_score=anomaly_score, threshold=threshold, defect_hint=defect_hint,
        defect_types=list(defect_types) if defect_types else None, questions=questions or None)


def check_bearer(headers, token: str | None) -> None:
    """401 unless the ``Authorization`` header carries ``token``; 403 when no token is configured
    (an endpoint without one never answers, e.g. under ``serve run`` with ``judo.http`` off)."""
    if not token:
        raise HttpRefusal(403, "the HTTP endpoint is disabled: set judo.http.enabled with bearer_token_env or "
                               "bearer_token_file")
    header = headers.get("authorization", "")
    if not hmac.compare_digest(header.encode("utf-8", "replace"), f"Bearer {token}".encode()):
        raise HttpRefusal(401, "missing or wrong bearer token")


async def read_json_body(http_request, max_bytes: int) -> object:
    """The request body parsed as JSON, read no further than ``max_bytes`` (413 beyond)."""
    media_type = http_request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type not in ("application/json", ""):
        raise HttpRefusal(415, "send the request as application/json")
    declared = http_request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise HttpRefusal(413, f"the body must be at most {max_bytes} bytes")
    body = bytearray()
    async for chunk in http_request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HttpRefusal(413, f"the body must be at most {max_bytes} bytes")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HttpRefusal(400, f"the body is not valid JSON: {str(exc)[:200]}") from None


async def frame_request_from_http(http_request, limits: HttpSection, token: str | None) -> JudoFrameRequest:
    """Authenticate, read and validate one HTTP request (:class:`HttpRefusal` when refused)."""
    check_bearer(http_request.headers, token)
    return http_request_to_frame_request(await read_json_body(http_request, limits.max_body_bytes), limits)


def refusal_response(refusal: HttpRefusal) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
    return JSONResponse({"error": str(refusal)}, status_code=refusal.status, headers=headers)
