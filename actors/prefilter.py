"""The prefilter's Ray service: routes each product's frames with its calibrated bank.

The model lives in :mod:`judo_model.prefilter`; this module adds only the per-product service,
its ``prefilter`` trace spans and the thin ``ray.remote`` wrapper.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import ray

from actors.product_service import ProductService
from actors.references import ReferenceService
from cluster.telemetry import context_from_carrier, tracer
from judo_model.prefilter.features import FeatureExtractor, Frame
from judo_model.prefilter.references import REFERENCES_SUBDIR
from judo_model.prefilter.scorer import PrefilterScorer


class PrefilterService(ProductService):
    """Routes frames (encoded bytes from Kafka, or arrays) with each product's calibrated bank."""

    what = "prefilter bank"

    def __init__(self, directories: dict[str, str], threads: int = 2, service_name: str | None = None,
                 trace_file: str | None = None, with_references: bool = False):
        super().__init__(directories, threads, service_name, trace_file)
        # the frame path's reference retrieval, next to the descriptor and anomaly map it starts from
        self.references = ReferenceService(
            {product: str(Path(d) / REFERENCES_SUBDIR) for product, d in directories.items()}, threads,
        ) if with_references else None

    def _load(self, directory: str, extractor: FeatureExtractor | None) -> PrefilterScorer:
        return PrefilterScorer.load(directory, extractor)

    def _extractor_of(self, item: PrefilterScorer) -> FeatureExtractor:
        return item.bank.embedder.extractor

    def score_frames(
        self,
        product: str,
        frames: Sequence[Frame],
        carriers: Sequence[dict | None] | None = None,
        frame_ids: Sequence[str] | None = None,
    ) -> list[dict]:
        """``[{score, threshold, suspect, anomaly_map, descriptor}]`` per frame, in order.

        ``anomaly_map`` (float32, frame size) and ``descriptor`` (the global descriptor the
        product's reference index is searched with) are attached to suspect frames only, for
        JUDO's evidence and references without a second backbone pass; ``carriers`` are W3C
        trace contexts, one per frame, under which a ``prefilter`` span is recorded (with
        ``frame_ids`` as attributes when given).
        """
        scorer = self.get(product)
        started = time.time_ns()
        embedded = scorer.bank.embed(frames)
        result = scorer.bank.score_embedded(embedded)
        ended = time.time_ns()
        out = []
        for i, score in enumerate(result.scores):
            suspect = bool(score > scorer.threshold)
            out.append({
                "score": float(score),
                "threshold": scorer.threshold,
                "suspect": suspect,
                "anomaly_map": result.anomaly_map(i).astype(np.float32) if suspect else None,
                "descriptor": embedded.descriptors[i].copy() if suspect else None,
            })
        if carriers is not None:
            _record_spans(product, out, carriers, frame_ids, started, ended)
        return out

    def screen_frames(self, product: str, frames: Sequence[Frame], carriers: Sequence[dict | None],
                      frame_ids: Sequence[str], references_k: int) -> list[dict]:
        """:meth:`score_frames`, plus for each suspect frame what JUDO is shown with it: ``references``
        (the ``references_k`` nearest normals' ``{id, path, similarity, rank}``, no pixels),
        ``defect_hint`` and ``defect_types`` (see :meth:`ReferenceService.defect_evidence`). One call
        per batch: the frame path sends the pixels to Ray once. Needs ``with_references``."""
        out = self.score_frames(product, frames, carriers, frame_ids)
        for frame, result, carrier, frame_id in zip(frames, out, carriers, frame_ids):
            descriptor = result.pop("descriptor")
            if not result["suspect"]:
                continue
            with tracer().start_as_current_span("references", context=context_from_carrier(carrier)) as span:
                [references] = self.references.query_descriptors(product, descriptor, references_k)
                hint, types = self.references.defect_evidence(product, frame, result["anomaly_map"])
                span.set_attribute("frame_id", frame_id)
                span.set_attribute("reference_ids", [r["id"] for r in references])
                span.set_attribute("defect_hint", hint or "")
            result.update(references=references, defect_hint=hint, defect_types=types)
        return out


def _record_spans(product: str, results: list[dict], carriers: Sequence[dict | None],
                  frame_ids: Sequence[str] | None, start: int, end: int) -> None:
    """One ``prefilter`` span per frame in its own trace, timed by the batch it was scored in."""
    for i, (result, carrier) in enumerate(zip(results, carriers)):
        span = tracer().start_span("prefilter", context=context_from_carrier(carrier), start_time=start)
        if frame_ids is not None:
            span.set_attribute("frame_id", frame_ids[i])
        span.set_attribute("product", product)
        span.set_attribute("anomaly_score", result["score"])
        span.set_attribute("suspect", result["suspect"])
        span.set_attribute("batch_size", len(results))
        span.end(end_time=end)


def prefilter_actor_class(**ray_options):
    """``ray.remote`` class of :class:`PrefilterService`."""
    options = {"num_cpus": 1, **ray_options}
    return ray.remote(**options)(PrefilterService)
