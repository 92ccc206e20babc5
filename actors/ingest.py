"""Ingest: turn Kafka records into validated, decoded frames — or dead letters with a reason.

:class:`FrameDecoder` is the first stage of the frame path (:mod:`pipelines.frame_path`); the
records come from the Kafka intake (:mod:`actors.intake`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from actors.intake import RawRecord, RecordPosition
from cluster.messages import DeadLetter, Frame
from cluster.records import MessageValidationError, dead_letter_for, frame_from_record
from cluster.telemetry import context_to_carrier, extract_context, tracer
from judo_model.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

log = logging.getLogger(__name__)


@dataclass
class DecodedFrame:
    """A validated frame with its pixels, where it came from, and its trace context."""

    frame: Frame
    image: np.ndarray
    position: RecordPosition
    trace: dict[str, str]
    received_at: float = field(default_factory=time.time)
    latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Rejected:
    """A record that became a dead letter."""

    letter: DeadLetter
    position: RecordPosition
    trace: dict[str, str]


class FrameDecoder:
    """Validates records against the frame schema and decodes their images.

    Every failure — schema, headers, key, encoding, size, pixel cap, unknown product,
    declared size that differs from the pixels — becomes a :class:`Rejected` carrying
    the whole original record, never an exception: the records behind it in the
    partition must keep moving. The pixel cap applies to the declared size before any
    decoding, and the decoder never inflates more pixels than the frame declares, so a
    small frame header cannot smuggle in a decompression bomb.
    """

    def __init__(self, known_products: Iterable[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.known_products = set(known_products) if known_products is not None else None
        self.max_pixels = max_pixels

    def decode(self, record: RawRecord) -> DecodedFrame | Rejected:
        started = time.perf_counter()
        context = extract_context(record.headers)
        with tracer().start_as_current_span("ingest", context=context) as span:
            span.set_attribute("kafka.partition", record.position.partition)
            span.set_attribute("kafka.offset", record.position.offset)
            try:
                frame = frame_from_record(record.key, record.value, record.headers)
                span.set_attribute("frame_id", frame.frame_id)
                span.set_attribute("product", frame.product)
                image = self._pixels(frame)
            except (MessageValidationError, ImageDecodeError) as exc:
                return self._reject(record, exc, span)
            except Exception as exc:  # an input nobody foresaw is still a dead letter, not a stuck partition
                log.exception("unexpected error decoding %s", record.position)
                return self._reject(record, exc, span)
            carrier = context_to_carrier()
        decoded = DecodedFrame(frame, image, record.position, carrier)
        decoded.latency_ms["ingest"] = (time.perf_counter() - started) * 1000
        return decoded

    def _pixels(self, frame: Frame) -> np.ndarray:
        if self.known_products is not None and frame.product not in self.known_products:
            raise MessageValidationError(
                f"unknown product {frame.product!r}; this pipeline inspects {sorted(self.known_products)}")
        declared = frame.width * frame.height
        if declared > self.max_pixels:
            raise MessageValidationError(
                f"declared size {frame.width}x{frame.height} = {declared} pixels is above the cap of {self.max_pixels}")
        try:
            image = decode_image(frame.image, frame.encoding, width=frame.width, height=frame.height,
                                 max_pixels=declared)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{exc} (frame declares {frame.encoding} {frame.width}x{frame.height})") from None
        if image.shape[:2] != (frame.height, frame.width):
            raise MessageValidationError(
                f"declared size {frame.width}x{frame.height} but the image is {image.shape[1]}x{image.shape[0]}")
        return image

    @staticmethod
    def _reject(record: RawRecord, exc: Exception, span) -> Rejected:
        letter = dead_letter_for(
            "ingest", exc, topic=record.position.topic, partition=record.position.partition,
            offset=record.position.offset, key=record.key, value=record.value, headers=record.headers)
        span.set_attribute("dead_letter.reason", letter.reason[:500])
        return Rejected(letter, record.position, context_to_carrier())
