"""Shared by the ingest and pipeline tests: sample frames, the catalogue of bad inputs, a test config.

The same :func:`bad_inputs` catalogue feeds the :class:`actors.ingest.FrameDecoder` unit tests and
the end-to-end run, so what is checked in isolation is exactly what crosses real Kafka.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from kafka import TopicPartition
from PIL import Image

from actors.intake import RawRecord, RecordPosition
from cluster.kafka import KafkaSettings
from cluster.messages import MAX_FRAME_BYTES, Frame
from cluster.records import FRAME_HEADER, SCHEMA_VERSION_HEADER, KafkaRecord, frame_to_record
from judo_model.imaging import DEFAULT_MAX_PIXELS, encode_png
from pipelines.config import PipelineConfig
from tooling.demo import demo_config


def frame(**overrides) -> Frame:
    """A valid 30x20 PNG frame of product ``bottle``; any field can be overridden."""
    values = dict(frame_id="f-1", camera_id="c1", line_id="l1", product="bottle",
                  captured_at=datetime.now(timezone.utc), encoding="png", width=30, height=20,
                  image=encode_png(np.full((20, 30, 3), 128, np.uint8)))
    values.update(overrides)
    return Frame(**values)


def record_for(item: Frame | KafkaRecord, offset: int = 0, partition: int = 0, topic: str = "frames") -> RawRecord:
    """What the driver hands the decoder for ``item`` consumed at ``offset``."""
    key, value, headers = frame_to_record(item) if isinstance(item, Frame) else item
    return RawRecord(RecordPosition(topic, partition, offset), key, value, list(headers))


class PickleBomb:
    """Unpickling this creates ``marker``: proof, if it ever exists, that someone unpickled Kafka bytes."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@dataclass(frozen=True)
class BadInput:
    """One bad record and the words its dead letter's reason must contain."""

    name: str
    record: KafkaRecord
    reason: str


def _with_meta(key: str, value: bytes | None, **meta_overrides) -> KafkaRecord:
    """A record whose ``judo-frame`` header is a valid frame's metadata with fields replaced or removed."""
    meta = json.loads(frame(frame_id=key).meta.model_dump_json())
    for name, field_value in meta_overrides.items():
        if field_value is None:
            meta.pop(name)
        else:
            meta[name] = field_value
    return KafkaRecord(key.encode(), value, [(SCHEMA_VERSION_HEADER, b"1"), (FRAME_HEADER, json.dumps(meta).encode())])


def png_bomb(side: int) -> bytes:
    """A valid PNG of ``side`` x ``side`` black RGB pixels, written row by row without holding them:
    about a thousandth of its decoded size on the wire."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + 3 * side)  # filter byte 0, then black pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_inputs(marker: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[BadInput]:
    """Every kind of bad input the ingest boundary must turn into a dead letter.

    Each record has its own key (the non-UTF-8 one included), so a dead letter can be matched to it.
    ``marker`` is the path a pickle payload would create if it were ever unpickled.
    """
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    png = encode_png(noise)
    gif = _encoded(noise, "GIF")
    side = math.isqrt(max_pixels) + 1
    bomb = png_bomb(side)
    version = frame_to_record(frame(frame_id="bad-version"))
    product = frame_to_record(frame(frame_id="bad-product", product="teapot"))
    non_utf8 = frame_to_record(frame(frame_id="bad-key"))
    return [
        BadInput("corrupt", _with_meta("bad-corrupt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
                 "corrupt or truncated"),
        BadInput("truncated", _with_meta("bad-truncated", png[: len(png) // 2], width=32, height=32),
                 "corrupt or truncated"),
        BadInput("unsupported-encoding", _with_meta("bad-encoding", png, encoding="tiff"),
                 "encoding: Input should be"),
        BadInput("undeclared-format", _with_meta("bad-format", gif, width=32, height=32),
                 "declared encoding 'png' but the bytes are gif"),
        BadInput("zero-bytes", _with_meta("bad-empty", b""), "image is empty (0 bytes)"),
        BadInput("null-value", _with_meta("bad-null", None), "record has no value"),
        BadInput("oversized", _with_meta("bad-oversized", b"\x89PNG\r\n\x1a\n" + bytes(MAX_FRAME_BYTES)),
                 f"above the limit of {MAX_FRAME_BYTES}"),
        BadInput("bomb", _with_meta("bad-bomb", bomb, width=side, height=side),
                 f"= {side * side} pixels is above the cap of {max_pixels}"),
        BadInput("disguised-bomb", _with_meta("bad-bomb-disguised", bomb, width=64, height=64),
                 f"image is {side}x{side} = {side * side} pixels, above the cap of 4096"),
        BadInput("no-headers", KafkaRecord(b"bad-noheaders", png, []), "missing header 'judo-schema-version'"),
        BadInput("frame-header-not-json",
                 KafkaRecord(b"bad-header-json", png, [(SCHEMA_VERSION_HEADER, b"1"), (FRAME_HEADER, b"{not json")]),
                 "'judo-frame' is not UTF-8 JSON"),
        BadInput("frame-header-too-deep",
                 KafkaRecord(b"bad-header-deep", png, [(SCHEMA_VERSION_HEADER, b"1"), (FRAME_HEADER, b"[" * 10_000)]),
                 "'judo-frame' nests JSON too deeply"),
        BadInput("frame-header-incomplete", _with_meta("bad-header-fields", png, camera_id=None),
                 "camera_id: Field required"),
        BadInput("unknown-product", product, "unknown product 'teapot'"),
        BadInput("wrong-schema-version",
                 version._replace(headers=[(SCHEMA_VERSION_HEADER, b"99"), *version.headers[1:]]),
                 "schema version 99 is not supported"),
        BadInput("non-utf8-key", non_utf8._replace(key=b"\xffbad-key\xfe"), "record key is not UTF-8"),
        BadInput("pickle-value", _with_meta("bad-pickle", pickle.dumps(PickleBomb(marker))), "corrupt or truncated"),
        BadInput("pickle-header",
                 KafkaRecord(b"bad-pickle-header", png,
                             [(SCHEMA_VERSION_HEADER, b"1"), (FRAME_HEADER, pickle.dumps(PickleBomb(marker)))]),
                 "'judo-frame' is not UTF-8 JSON"),
    ]


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def pipeline_test_config(banks: dict[str, Path], checkpoint: Path, settings: KafkaSettings, trace_file: Path,
                         prefix: str, *, lines: int = 2, ingest: dict | None = None) -> PipelineConfig:
    """The demo config on topics of its own (``prefix.frames`` ...), 2 partitions, reaching Kafka with ``settings``."""
    config = demo_config(banks, checkpoint, settings.bootstrap_servers, trace_file, lines=lines, cameras_per_line=1)
    topics = config.topics.model_copy(update={
        "frames": f"{prefix}.frames", "verdicts": f"{prefix}.verdicts", "dead_letters": f"{prefix}.dlq",
        "feedback": f"{prefix}.feedback", "partitions": 2})
    return config.model_copy(update={
        "kafka": config.kafka.model_copy(update={"settings": settings}),
        "topics": topics,
        "ingest": config.ingest.model_copy(update=ingest or {}),
    })


def committed_and_end_offsets(settings: KafkaSettings, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition of ``topic``: the offset ``group`` has committed (-1 if none) and the log-end offset.

    Read through a consumer that names the group but never subscribes, so the group is not disturbed.
    """
    consumer = settings.consumer(group_id=group)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        end = {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
        committed = {tp.partition: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close(autocommit=False)
    return {p: -1 if committed[p] is None else committed[p] for p in end}, end
