"""Helpers of the feedback tests: a normal frame the bank flags, and a frame message around an image."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.messages import Frame, utc_now
from judo_model.data.synth import render_sample
from judo_model.imaging import encode_png
from judo_model.prefilter.scorer import PrefilterScorer


def flagged_normal(scorer: PrefilterScorer, size: int = 256) -> np.ndarray:
    """A rendered normal bottle with a harmless variation (the light brighter or dimmer) that the bank flags."""
    for seed in range(900, 960):
        image = render_sample("bottle", None, seed=(seed,), size=size).image
        varied = [np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8) for gain in (1.15, 1.3, 0.75)]
        scores = scorer.bank.score(varied).scores
        for candidate, score in zip(varied, scores):
            if score > scorer.threshold:
                return candidate
    pytest.fail("no brightness variation of a normal bottle is flagged by the bank")


def frame_of(image: np.ndarray, frame_id: str, line: str = "line1", camera: str = "line1-cam1",
             product: str = "bottle") -> Frame:
    return Frame(frame_id=frame_id, camera_id=camera, line_id=line, product=product, captured_at=utc_now(),
                 encoding="png", width=image.shape[1], height=image.shape[0], image=encode_png(image))
