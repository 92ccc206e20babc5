"""Camera simulator: plays synthetic camera frames into Kafka, ground truth kept beside them.

Each (line, camera, product) is a deterministic :class:`~judo_model.data.stream.FrameStream`;
frames are encoded as the camera would send them, published with a ``traceparent``
header that starts the frame's trace, and their ground truth is appended to a
JSON-lines file so verdicts can be scored afterwards.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from cluster.kafka import KafkaSettings
from cluster.messages import Frame, utc_now
from cluster.records import frame_to_record
from cluster.telemetry import inject_headers, tracer
from judo_model.data.stream import FrameStream
from judo_model.imaging import encode_png


@dataclass(frozen=True)
class CameraSpec:
    line_id: str
    camera_id: str
    product: str


@dataclass
class SimulatedFrame:
    frame: Frame
    is_defective: bool
    defect_type: str | None
    bbox: tuple[float, float, float, float] | None

    def truth(self) -> dict:
        return {
            "frame_id": self.frame.frame_id, "line_id": self.frame.line_id,
            "camera_id": self.frame.camera_id, "product": self.frame.product,
            "is_defective": self.is_defective, "defect_type": self.defect_type,
            "bbox": list(self.bbox) if self.bbox else None,
        }


class CameraSimulator:
    """Round-robin over the cameras, rendering frame ``i`` of each stream in turn."""

    def __init__(self, cameras: list[CameraSpec], *, defect_rate: float, seed: int = 0,
                 size: int = 256, run_id: str | None = None) -> None:
        self.cameras = cameras
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S")
        self.streams = [
            FrameStream(c.line_id, c.camera_id, c.product, defect_rate=defect_rate, seed=seed, size=size)
            for c in cameras
        ]

    def frames(self, count: int) -> Iterator[SimulatedFrame]:
        for i in range(count):
            camera = self.cameras[i % len(self.cameras)]
            stream = self.streams[i % len(self.streams)]
            rendered = stream.frame(i // len(self.streams))
            image = encode_png(rendered.image, compress_level=1)
            frame = Frame(
                frame_id=f"{self.run_id}-{camera.camera_id}-{rendered.index:06d}",
                camera_id=camera.camera_id, line_id=camera.line_id, product=camera.product,
                captured_at=utc_now(), encoding="png",
                width=rendered.image.shape[1], height=rendered.image.shape[0], image=image,
            )
            yield SimulatedFrame(frame, rendered.is_defective, rendered.defect_type, rendered.bbox)

    def publish(self, settings: KafkaSettings, topic: str, count: int, *, fps: float | None = None,
                truth_path: str | Path | None = None) -> list[SimulatedFrame]:
        """Render and publish ``count`` frames (paced at ``fps`` overall when given); return what was sent."""
        return publish_frames(settings, topic, self.frames(count), fps=fps, truth_path=truth_path)


def publish_frames(settings: KafkaSettings, topic: str, frames: Iterable[SimulatedFrame], *,
                   fps: float | None = None, truth_path: str | Path | None = None) -> list[SimulatedFrame]:
    """Publish frames as a camera would: one trace per frame, ground truth beside them."""
    producer = settings.producer()
    sent: list[SimulatedFrame] = []
    truth_file = open(truth_path, "a") if truth_path else None
    started = time.monotonic()
    try:
        for n, item in enumerate(frames):
            if fps:
                delay = started + n / fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            with tracer().start_as_current_span("camera.capture") as span:
                span.set_attribute("frame_id", item.frame.frame_id)
                span.set_attribute("product", item.frame.product)
                record = frame_to_record(item.frame, inject_headers())
            producer.send(topic, key=record.key, value=record.value, headers=record.headers)
            if truth_file:
                truth_file.write(json.dumps(item.truth()) + "\n")
            sent.append(item)
        producer.flush(timeout=120)
    finally:
        producer.close()
        if truth_file:
            truth_file.close()
    return sent
