"""Every message that crosses a process: frames, verdicts, dead letters — versioned.

Wire formats (Kafka key = ``frame_id`` everywhere):

* **Frame** — value: the encoded image bytes, untouched, so cameras publish what they
  capture and no base64 inflates it. Headers: ``judo-schema-version``, ``judo-frame``
  (JSON metadata), ``traceparent`` / ``tracestate`` (W3C trace context).
* **Verdict**, **DeadLetter**, **Feedback** — value: UTF-8 JSON of the model below; headers
  carry the schema version and the trace context.

Readers validate strictly and raise :class:`MessageValidationError` with a message
an operator can act on; the ingest stage turns it into a dead letter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, NamedTuple

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
SCHEMA_VERSION_HEADER = "judo-schema-version"
FRAME_HEADER = "judo-frame"
CONTENT_TYPE_HEADER = "content-type"

#: Size limits (bytes). A frame beyond this is a dead letter, not an out-of-memory.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_FRAME_SIDE = 16_384

Encoding = Literal["png", "jpeg", "bmp", "raw_rgb8"]
Stage = Literal["prefilter", "judo"]
PipelineStage = Literal["ingest", "prefilter", "references", "router", "judo", "sink"]

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")

Headers = list[tuple[str, bytes]]


class MessageValidationError(ValueError):
    """A record that does not match the schema; the message names the field and the problem."""


class KafkaRecord(NamedTuple):
    """What we hand to ``producer.send``: key, value and headers."""

    key: bytes
    value: bytes
    headers: Headers


def _check_id(value: str, field_name: str) -> str:
    if not _ID_PATTERN.match(value):
        raise ValueError(
            f"{field_name} {value!r} must be 1-128 characters of letters, digits and ._:/@- "
            "starting with a letter or digit"
        )
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone (UTC recommended)")
    return value.astimezone(timezone.utc)


def _check_trace_id(value: str) -> str:
    if value and not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ValueError("trace_id must be 32 lowercase hex characters (W3C trace id)")
    return value


def _check_version(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise ValueError(f"schema_version {value} is not supported (this build reads {SCHEMA_VERSION})")
    return value


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- frame


class _AboutAFrame(_Strict):
    """Versioned fields that name a frame and where it came from, shared by frames and verdicts."""

    schema_version: int = SCHEMA_VERSION
    frame_id: str
    camera_id: str
    line_id: str
    product: str

    @field_validator("frame_id", "camera_id", "line_id", "product")
    @classmethod
    def _ids(cls, value: str, info) -> str:
        return _check_id(value, info.field_name)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        return _check_version(value)


class FrameMeta(_AboutAFrame):
    """Frame metadata carried in the ``judo-frame`` header."""

    captured_at: datetime
    encoding: Encoding
    width: int = Field(gt=0, le=MAX_FRAME_SIDE)
    height: int = Field(gt=0, le=MAX_FRAME_SIDE)

    @field_validator("captured_at")
    @classmethod
    def _tz(cls, value: datetime) -> datetime:
        return _utc(value)


class Frame(FrameMeta):
    """A camera frame: metadata plus the encoded image."""

    image: bytes = Field(repr=False)

    @field_validator("image")
    @classmethod
    def _image_size(cls, value: bytes) -> bytes:
        if len(value) == 0:
            raise ValueError("image is empty (0 bytes)")
        if len(value) > MAX_FRAME_BYTES:
            raise ValueError(f"image is {len(value)} bytes, above the limit of {MAX_FRAME_BYTES}")
        return value

    @property
    def meta(self) -> FrameMeta:
        return FrameMeta(**self.model_dump(exclude={"image"}))


def frame_to_record(frame: Frame, trace_headers: Headers = ()) -> KafkaRecord:
    meta = frame.meta.model_dump_json().encode()
    headers: Headers = [
        (SCHEMA_VERSION_HEADER, str(frame.schema_version).encode()),
        (FRAME_HEADER, meta),
        *trace_headers,
    ]
    return KafkaRecord(frame.frame_id.encode(), frame.image, headers)


def frame_from_record(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None) -> Frame:
    """Validate a frame record; raise :class:`MessageValidationError` saying what is wrong."""
    header_map = _header_map(headers)
    _check_schema_header(header_map)
    raw_meta = header_map.get(FRAME_HEADER)
    if raw_meta is None:
        raise MessageValidationError(f"missing header {FRAME_HEADER!r} (frame metadata)")
    meta = _json_header(raw_meta, FRAME_HEADER)
    if value is None:
        raise MessageValidationError("record has no value (image bytes)")
    if len(value) > MAX_FRAME_BYTES:
        raise MessageValidationError(f"image is {len(value)} bytes, above the limit of {MAX_FRAME_BYTES}")
    key_text = _decode_key(key)
    try:
        frame = Frame(**meta, image=bytes(value)) if isinstance(meta, dict) else None
    except ValidationError as exc:
        raise MessageValidationError(f"invalid frame: {_explain(exc)}") from None
    except TypeError as exc:
        raise MessageValidationError(f"invalid frame metadata: {exc}") from None
    if frame is None:
        raise MessageValidationError(f"header {FRAME_HEADER!r} must hold a JSON object")
    if key_text != frame.frame_id:
        raise MessageValidationError(f"record key {key_text!r} differs from frame_id {frame.frame_id!r}")
    return frame


# --------------------------------------------------------------------------- masks


class RLEMask(_Strict):
    """Run-length encoded binary mask, row-major, runs alternate starting with background.

    ``counts`` sums to ``height * width``; the first run may be 0 when the first pixel is set.
    """

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    counts: list[int]

    @model_validator(mode="after")
    def _consistent(self) -> "RLEMask":
        if any(c < 0 for c in self.counts):
            raise ValueError("RLE counts must be non-negative")
        if sum(self.counts) != self.height * self.width:
            raise ValueError(f"RLE counts sum to {sum(self.counts)}, expected {self.height * self.width}")
        return self

    @classmethod
    def encode(cls, mask: np.ndarray) -> "RLEMask":
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
        flat = mask.ravel()
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(bounds).tolist()
        if flat.size and flat[0]:
            runs = [0, *runs]
        return cls(height=mask.shape[0], width=mask.shape[1], counts=[int(r) for r in runs])

    def decode(self) -> np.ndarray:
        values = np.zeros(len(self.counts), dtype=bool)
        values[1::2] = True
        return np.repeat(values, self.counts).reshape(self.height, self.width)

    @property
    def area(self) -> int:
        return int(sum(self.counts[1::2]))


# --------------------------------------------------------------------------- verdict


class Box(_Strict):
    """Axis-aligned box in normalized image coordinates (0..1), x1 <= x2, y1 <= y2."""

    x1: float = Field(ge=0.0, le=1.0)
    y1: float = Field(ge=0.0, le=1.0)
    x2: float = Field(ge=0.0, le=1.0)
    y2: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> "Box":
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"box corners out of order: {self.as_list()}")
        return self

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    @classmethod
    def from_list(cls, coords: list[float]) -> "Box":
        if len(coords) != 4:
            raise ValueError(f"a box needs 4 coordinates, got {len(coords)}")
        return cls(x1=coords[0], y1=coords[1], x2=coords[2], y2=coords[3])


def canonical_defect_type(name: str | None) -> str | None:
    """``"Missing Component"`` -> ``"missing_component"``: the machine-readable type verdicts carry."""
    if not name:
        return None
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or None


class Defect(_Strict):
    type: str | None = None
    boxes: list[Box] = Field(default_factory=list)
    mask: RLEMask | None = None
    description: str = ""
    reasoning: str = ""

    @field_serializer("boxes")
    def _boxes_as_lists(self, boxes: list[Box]) -> list[list[float]]:
        return [b.as_list() for b in boxes]

    @field_validator("boxes", mode="before")
    @classmethod
    def _boxes_from_lists(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Box.from_list(v) if isinstance(v, (list, tuple)) else v for v in value]
        return value


class Answer(_Strict):
    question: str
    answer: str
    option: str | None = None


class Verdict(_AboutAFrame):
    """The inspection result for one frame, from the prefilter or from JUDO."""

    stage: Stage
    anomaly_score: float
    threshold: float
    is_anomalous: bool
    defect: Defect | None = None
    answers: list[Answer] = Field(default_factory=list)
    model_version: str
    latency_ms: dict[str, float] = Field(default_factory=dict)
    trace_id: str = ""
    parse_error: str | None = None
    captured_at: datetime | None = None
    produced_at: datetime = Field(default_factory=utc_now)
    #: ids of the normal references JUDO was shown (best first), so a reviewer sees the same pair
    reference_ids: list[str] = Field(default_factory=list)

    @field_validator("trace_id")
    @classmethod
    def _trace_id(cls, value: str) -> str:
        return _check_trace_id(value)


class DeadLetter(_Strict):
    """A record we could not process, kept whole with the reason so nothing is lost.

    The original bytes travel base64-encoded; a part too large for one JSON record
    (``MAX_JSON_BYTES``) is left out and named in ``omitted``, and the value's size and
    SHA-256 still identify it at ``original_topic``/``original_partition``/``original_offset``.
    """

    schema_version: int = SCHEMA_VERSION
    stage: PipelineStage
    reason: str
    error_type: str = ""
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    original_key: bytes | None = None
    original_value: bytes | None = None
    original_headers: list[tuple[str, bytes]] = Field(default_factory=list)
    original_value_bytes: int | None = None
    original_value_sha256: str | None = None
    omitted: list[Literal["key", "value", "headers"]] = Field(default_factory=list)
    failed_at: datetime = Field(default_factory=utc_now)

    @field_serializer("original_key", "original_value")
    def _b64(self, value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode()

    @field_serializer("original_headers")
    def _b64_headers(self, headers: list[tuple[str, bytes]]) -> list[list[str]]:
        return [[k, base64.b64encode(v or b"").decode()] for k, v in headers]

    @field_validator("original_key", "original_value", mode="before")
    @classmethod
    def _from_b64(cls, value: Any) -> Any:
        if isinstance(value, str):
            return base64.b64decode(value.encode(), validate=True)
        return value

    @field_validator("original_headers", mode="before")
    @classmethod
    def _headers_from_b64(cls, value: Any) -> Any:
        if isinstance(value, list):
            out = []
            for item in value:
                k, v = item
                out.append((k, base64.b64decode(v.encode(), validate=True) if isinstance(v, str) else v))
            return out
        return value


# --------------------------------------------------------------------------- operator feedback

FeedbackAction = Literal["confirm", "reject", "relabel"]


class Feedback(_AboutAFrame):
    """An operator's judgement of one verdict, published so reviewed frames can become training data.

    ``confirm``: the verdict is right. ``reject``: it is wrong (a false alarm, or a missed defect).
    ``relabel``: the frame is defective but of ``defect_type``. The verdict's own call
    (``verdict_is_anomalous``, ``verdict_defect_type``, ``model_version``) is copied in, so a
    record is a complete label without joining the verdict topic; ``trace_id`` links the frame's trace.
    """

    feedback_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    trace_id: str = ""
    action: FeedbackAction
    defect_type: str | None = None
    verdict_stage: Stage
    verdict_is_anomalous: bool
    verdict_defect_type: str | None = None
    model_version: str = Field(max_length=256)
    operator: str = Field(min_length=1, max_length=64)
    comment: str = Field("", max_length=2000)
    created_at: datetime = Field(default_factory=utc_now)

    @field_validator("feedback_id")
    @classmethod
    def _feedback_id(cls, value: str) -> str:
        return _check_id(value, "feedback_id")

    @field_validator("trace_id")
    @classmethod
    def _trace_id(cls, value: str) -> str:
        return _check_trace_id(value)

    @field_validator("defect_type", mode="before")
    @classmethod
    def _canonical_type(cls, value: Any) -> Any:
        return canonical_defect_type(value) if isinstance(value, str) else value

    @field_validator("operator", "comment")
    @classmethod
    def _printable(cls, value: str, info) -> str:
        value = value.strip()
        if any(ord(ch) < 32 and ch not in "\n\t" for ch in value):
            raise ValueError(f"{info.field_name} contains control characters")
        if info.field_name == "operator" and not value:
            raise ValueError("operator must name who gave the feedback")
        return value

    @field_validator("created_at")
    @classmethod
    def _tz(cls, value: datetime) -> datetime:
        return _utc(value)

    @model_validator(mode="after")
    def _type_only_for_relabel(self) -> "Feedback":
        if self.action == "relabel" and not self.defect_type:
            raise ValueError("relabel needs the corrected defect_type")
        if self.action != "relabel" and self.defect_type is not None:
            raise ValueError(f"defect_type is only given with relabel, not {self.action}")
        return self


def feedback_to_record(feedback: Feedback, trace_headers: Headers = ()) -> KafkaRecord:
    return json_to_record(feedback, feedback.frame_id.encode(), trace_headers)


def feedback_from_record(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None) -> Feedback:
    feedback = _json_model_from_record(Feedback, value, headers)
    if _decode_key(key) != feedback.frame_id:
        raise MessageValidationError(f"record key {key!r} differs from frame_id {feedback.frame_id!r}")
    return feedback


def json_to_record(message: Verdict | DeadLetter | Feedback, key: bytes | None,
                   trace_headers: Headers = ()) -> KafkaRecord:
    value = message.model_dump_json().encode()
    if len(value) > MAX_JSON_BYTES:
        raise MessageValidationError(f"{type(message).__name__} is {len(value)} bytes, above {MAX_JSON_BYTES}")
    headers: Headers = [
        (SCHEMA_VERSION_HEADER, str(message.schema_version).encode()),
        (CONTENT_TYPE_HEADER, b"application/json"),
        *trace_headers,
    ]
    return KafkaRecord(key or b"", value, headers)


def verdict_to_record(verdict: Verdict, trace_headers: Headers = ()) -> KafkaRecord:
    return json_to_record(verdict, verdict.frame_id.encode(), trace_headers)


def dead_letter_to_record(letter: DeadLetter, trace_headers: Headers = ()) -> KafkaRecord:
    return json_to_record(letter, letter.original_key, trace_headers)


def verdict_from_record(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None) -> Verdict:
    verdict = _json_model_from_record(Verdict, value, headers)
    if _decode_key(key) != verdict.frame_id:
        raise MessageValidationError(f"record key {key!r} differs from frame_id {verdict.frame_id!r}")
    return verdict


def dead_letter_from_record(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None) -> DeadLetter:
    return _json_model_from_record(DeadLetter, value, headers)


def dead_letter_for(
    stage: str,
    error: BaseException | str,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | None = None,
    value: bytes | None = None,
    headers: Iterable[tuple[str, bytes]] | None = None,
) -> DeadLetter:
    """Wrap a failed record, whatever it held, into a dead letter that keeps every byte it can.

    The letter always fits one record: a value, then headers, then a key too large to carry
    base64-encoded is left out (named in ``omitted``) rather than making the dead letter
    itself unwritable, which would stall the partition behind it.
    """
    reason = str(error) if str(error) else type(error).__name__
    value = None if value is None else bytes(value)
    letter = DeadLetter(
        stage=stage,
        reason=reason[:4000],
        error_type="" if isinstance(error, str) else type(error).__name__,
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        original_key=None if key is None else bytes(key),
        original_value=value,
        original_headers=[(str(k), bytes(v or b"")) for k, v in (headers or [])],
        original_value_bytes=None if value is None else len(value),
        original_value_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
    )
    dropped = {"value": {"original_value": None}, "headers": {"original_headers": []},
               "key": {"original_key": None}}
    for part, update in dropped.items():
        if len(letter.model_dump_json().encode()) <= MAX_JSON_BYTES:
            break
        letter = letter.model_copy(update={**update, "omitted": [*letter.omitted, part]})
    return letter


# --------------------------------------------------------------------------- helpers


def _header_map(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, bytes]:
    result: dict[str, bytes] = {}
    for item in headers or []:
        try:
            name, raw = item
        except (TypeError, ValueError):
            raise MessageValidationError(f"malformed header entry {item!r}") from None
        if raw is not None and len(raw) > MAX_HEADER_BYTES:
            raise MessageValidationError(f"header {name!r} is {len(raw)} bytes, above {MAX_HEADER_BYTES}")
        result[name] = raw or b""
    return result


def _check_schema_header(header_map: dict[str, bytes]) -> None:
    raw = header_map.get(SCHEMA_VERSION_HEADER)
    if raw is None:
        raise MessageValidationError(f"missing header {SCHEMA_VERSION_HEADER!r}")
    try:
        version = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise MessageValidationError(f"header {SCHEMA_VERSION_HEADER!r} is not an integer: {raw[:32]!r}") from None
    if version != SCHEMA_VERSION:
        raise MessageValidationError(
            f"schema version {version} is not supported (this build reads {SCHEMA_VERSION})"
        )


def _json_header(raw: bytes, name: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageValidationError(f"header {name!r} is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise MessageValidationError(f"header {name!r} nests JSON too deeply") from None


def _decode_key(key: bytes | None) -> str:
    if key is None:
        raise MessageValidationError("record has no key (expected the frame_id)")
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        raise MessageValidationError(f"record key is not UTF-8: {bytes(key)[:32]!r}") from None


def _json_model_from_record(model: type[BaseModel], value: bytes | None, headers) -> Any:
    _check_schema_header(_header_map(headers))
    if value is None:
        raise MessageValidationError("record has no value")
    if len(value) > MAX_JSON_BYTES:
        raise MessageValidationError(f"value is {len(value)} bytes, above {MAX_JSON_BYTES}")
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        raise MessageValidationError(f"invalid {model.__name__}: {_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "record"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)
