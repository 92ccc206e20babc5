"""Every message that crosses a process: frames, verdicts, dead letters, feedback — versioned.

The one schema module: pydantic models with their limits and validators. How each model
travels as a Kafka record (key, value, headers) is :mod:`cluster.records`.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

#: Size limits (bytes). A frame beyond this is a dead letter, not an out-of-memory.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_FRAME_SIDE = 16_384

Encoding = Literal["png", "jpeg", "bmp", "raw_rgb8"]
Stage = Literal["prefilter", "judo"]
PipelineStage = Literal["ingest", "prefilter", "references", "router", "judo", "sink"]
#: which policy decided a verdict's ``is_anomalous`` (docs/pipeline.md, "Who decides a verdict"):
#: ``prefilter`` the prefilter alone (below its threshold, or JUDO unavailable); ``judo-confirmed``
#: JUDO agreed with the prefilter's flag; ``judo-cleared`` JUDO cleared a flagged frame on a product
#: where its clearing was measured reliable; ``prefilter-flag-kept`` JUDO said no but may not clear
#: this product, so the flag stands; ``prefilter-judo-unreadable`` JUDO's answer had no verdict,
#: so the flag stands; ``judo`` JUDO alone, on a frame nothing flagged (an ad-hoc HTTP question)
DecidedBy = Literal["prefilter", "judo-confirmed", "judo-cleared", "prefilter-flag-kept",
                    "prefilter-judo-unreadable", "judo"]

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")

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
    #: which policy decided ``is_anomalous`` (:data:`DecidedBy`; None in records written before it existed)
    decided_by: DecidedBy | None = None
    #: JUDO's own yes/no, kept when the policy did not follow it (None: JUDO did not answer or was not asked)
    judo_is_anomalous: bool | None = None

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
