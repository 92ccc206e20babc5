"""What the frame path asks a JUDO replica: one suspect frame with its juxtaposition context.

Light on purpose (numpy only): the frame drivers build these without importing torch or the engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from judo_model.runtime.questions import Question


@dataclass
class JudoFrameRequest:
    """Everything a replica needs to give one suspect frame its verdict: the frame, its
    juxtaposition context (k normal references, the prefilter's anomaly map and threshold, and the
    labelled defect type the anomaly looks most like, where the product has a defect library)."""

    frame_id: str
    camera_id: str
    line_id: str
    product: str
    captured_at: object
    query: np.ndarray
    references: list[np.ndarray]
    anomaly_score: float
    threshold: float
    anomaly_map: np.ndarray | None = None
    defect_hint: str | None = None
    #: the product's known defect types: the verdict's type is decoded as one of them (None: free)
    defect_types: list[str] | None = None
    questions: list[Question] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    trace: dict[str, str] = field(default_factory=dict)


@dataclass
class SuspectFrame:
    """What the frame path sends a replica: the request without reference pixels, and the files
    (in the product's bank folder) the replica reads them from."""

    request: JudoFrameRequest
    reference_paths: list[str]
