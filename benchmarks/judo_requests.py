"""The benchmark's and tests' JUDO requests: rendered synthetic suspect frames with varied prompts.

Shared by ``benchmarks/engines.py``, ``benchmarks/vllm_parity.py`` and the batching and engine
tests, so every comparison asks the same questions about the same frames.
"""

from __future__ import annotations

import numpy as np

from judo_model.data.synth.products import PRODUCTS
from judo_model.data.synth.render import render_sample
from judo_model.runtime.questions import Question
from pipelines.judo_request import JudoFrameRequest

QUESTIONS = (
    Question("Is there any defect in the object?", {"A": "Yes", "B": "No"}),
    Question("Where is the defect?", {"A": "Top left", "B": "Top right", "C": "Center", "D": "Bottom left",
                                      "E": "Bottom right"}),
)
DEFECTIVE_SHARE = 0.7  # suspect frames: most are defective, some are the prefilter's false alarms
FRAME_SIDE = 224


def sample_requests(count: int, seed: int = 0) -> list[JudoFrameRequest]:
    """``count`` suspect-frame requests over every synthetic product, the same for the same seed.

    Prompts differ in length on purpose (0, 1 or 2 questions, with or without a defect hint or
    the product's defect types), so a batch pads its rows. The anomaly map is the query's
    difference from its own normal twin (plus noise), a stand-in for the prefilter's map.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    products = sorted(PRODUCTS)
    requests = []
    for index in range(count):
        product = products[index % len(products)]
        defects = PRODUCTS[product].defects
        defect = defects[int(rng.integers(len(defects)))] if rng.random() < DEFECTIVE_SHARE else None
        query = render_sample(product, defect, (seed, index, 1), size=FRAME_SIDE).image
        twin = render_sample(product, None, (seed, index, 1), size=FRAME_SIDE).image
        reference = render_sample(product, None, (seed, index, 2), size=FRAME_SIDE).image
        difference = np.abs(query.astype(np.float32) - twin.astype(np.float32)).mean(axis=2) / 255.0
        anomaly_map = difference + rng.uniform(0.0, 0.02, difference.shape).astype(np.float32)
        questions = list(QUESTIONS[: index % 3]) or None
        requests.append(JudoFrameRequest(
            frame_id=f"bench-{seed}-{index}", camera_id="bench", line_id="bench", product=product,
            captured_at=None, query=query, references=[reference], anomaly_score=float(anomaly_map.max()),
            threshold=0.05, anomaly_map=anomaly_map, defect_hint=defect if index % 4 != 3 else None,
            defect_types=list(defects) if index % 5 != 4 else None, questions=questions))
    return requests
