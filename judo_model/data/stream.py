"""Endless camera frames from the synthetic renderer, for the camera simulator.

A stream is defined by (line, camera, category, defect rate, seed) and always
yields the same frames in the same order. It depends on nothing but the
renderer: no Kafka, no Ray. Frame ``i`` can also be rendered on its own with
:meth:`FrameStream.frame`, so a simulator can resume or shard a stream.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from judo_model.data.synth import get_product, render_sample


@dataclass(frozen=True)
class Frame:
    """One camera frame and its ground truth.

    ``bbox`` is ``(x1, y1, x2, y2)`` normalised to 0..1 (None when the part is good);
    ``mask`` is a boolean ``(H, W)`` array, all False for a good part.
    """

    line: str
    camera: str
    category: str
    index: int
    image: np.ndarray
    is_defective: bool
    defect_type: str | None
    mask: np.ndarray
    bbox: tuple[float, float, float, float] | None


class FrameStream:
    """Iterator over frames of one camera watching one product on one line."""

    def __init__(self, line: str, camera: str, category: str, defect_rate: float = 0.05, seed: int = 0,
                 size: int = 256, start: int = 0):
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        self.product = get_product(category)
        self.line, self.camera, self.category = line, camera, category
        self.defect_rate, self.seed, self.size = defect_rate, seed, size
        self._next = start
        self._stream_id = zlib.crc32(f"{line}/{camera}/{category}".encode())

    def frame(self, index: int) -> Frame:
        """Frame number ``index`` of this stream (pure function of the stream settings)."""
        rng = np.random.default_rng([self.seed, self._stream_id, index])
        defect = None
        if rng.random() < self.defect_rate:
            defect = self.product.defects[int(rng.integers(len(self.product.defects)))]
        sample = render_sample(self.category, defect, (self.seed, self._stream_id, index, 1), self.size)
        mask = sample.mask if sample.mask is not None else np.zeros((self.size, self.size), bool)
        return Frame(self.line, self.camera, self.category, index, sample.image, sample.is_defective, defect,
                     mask, sample.bbox())

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        frame = self.frame(self._next)
        self._next += 1
        return frame


def frame_stream(line: str, camera: str, category: str, defect_rate: float = 0.05, seed: int = 0,
                 size: int = 256) -> FrameStream:
    """An endless, deterministic stream of frames (see :class:`FrameStream`)."""
    return FrameStream(line, camera, category, defect_rate, seed, size)
