"""The Kafka record codec: every message of :mod:`cluster.messages` to and from (key, value, headers).

Wire formats (Kafka key = ``frame_id`` everywhere):

* **Frame**: value is the encoded image bytes, untouched, so cameras publish what they
  capture and no base64 inflates it. Headers: ``judo-schema-version``, ``judo-frame``
  (JSON metadata), ``traceparent`` / ``tracestate`` (W3C trace context).
* **Verdict**, **DeadLetter**, **Feedback**: value is UTF-8 JSON of the model; headers
  carry the schema version and the trace context.

Readers validate strictly and raise :class:`MessageValidationError` with a message
an operator can act on; the ingest stage turns it into a dead letter (:func:`dead_letter_for`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, NamedTuple

from pydantic import BaseModel, ValidationError

from cluster.messages import (
    MAX_FRAME_BYTES,
    MAX_JSON_BYTES,
    SCHEMA_VERSION,
    DeadLetter,
    Feedback,
    Frame,
    Verdict,
)

SCHEMA_VERSION_HEADER = "judo-schema-version"
FRAME_HEADER = "judo-frame"
CONTENT_TYPE_HEADER = "content-type"
MAX_HEADER_BYTES = 16 * 1024

Headers = list[tuple[str, bytes]]


class MessageValidationError(ValueError):
    """A record that does not match the schema; the message names the field and the problem."""


class KafkaRecord(NamedTuple):
    """What we hand to ``producer.send``: key, value and headers."""

    key: bytes
    value: bytes
    headers: Headers


# --------------------------------------------------------------------------- frames


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


# --------------------------------------------------------------------------- JSON messages


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


#: a Python object's default repr (``<_io.BytesIO object at 0x7f...>``), as PIL puts in its messages
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def readable_reason(reason: str) -> str:
    """A failure's words for people: without object reprs and their memory addresses, which differ on
    every run and say nothing about the record (PIL: ``cannot identify image file <_io.BytesIO object at 0x..>``)."""
    return _OBJECT_REPR.sub("", reason)


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
    reason = readable_reason(str(error) if str(error) else type(error).__name__)
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
