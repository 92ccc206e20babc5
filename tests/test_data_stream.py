"""Camera frame stream: deterministic, honours the defect rate, ground truth consistent."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from judo_model.data.stream import FrameStream, frame_stream


def test_stream_is_endless_and_deterministic():
    first = list(itertools.islice(frame_stream("line-1", "cam-2", "pcb", 0.3, seed=4, size=96), 6))
    again = list(itertools.islice(frame_stream("line-1", "cam-2", "pcb", 0.3, seed=4, size=96), 6))
    assert [f.image.tobytes() for f in first] == [f.image.tobytes() for f in again]
    assert [f.index for f in first] == list(range(6))
    other_camera = next(iter(frame_stream("line-1", "cam-3", "pcb", 0.3, seed=4, size=96)))
    assert other_camera.image.tobytes() != first[0].image.tobytes()


def test_frame_by_index_matches_iteration():
    stream = FrameStream("l", "c", "bottle", 0.5, seed=1, size=64)
    frames = list(itertools.islice(stream, 4))
    assert FrameStream("l", "c", "bottle", 0.5, seed=1, size=64).frame(3).image.tobytes() == frames[3].image.tobytes()


def test_defect_rate_and_ground_truth():
    frames = list(itertools.islice(frame_stream("l", "c", "washer", 0.25, seed=0, size=64), 160))
    rate = np.mean([f.is_defective for f in frames])
    assert 0.12 <= rate <= 0.4
    for frame in frames:
        assert frame.image.shape == (64, 64, 3) and frame.image.dtype == np.uint8
        assert frame.mask.shape == (64, 64)
        if frame.is_defective:
            assert frame.defect_type in ("crack", "rust", "bent") and frame.mask.any()
            x1, y1, x2, y2 = frame.bbox
            rows, cols = np.nonzero(frame.mask)
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert x1 == cols.min() / 64 and y2 == (rows.max() + 1) / 64
        else:
            assert frame.defect_type is None and frame.bbox is None and not frame.mask.any()


def test_bad_defect_rate_is_refused():
    with pytest.raises(ValueError):
        FrameStream("l", "c", "tile", defect_rate=1.5)
