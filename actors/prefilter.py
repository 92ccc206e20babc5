"""The prefilter's Ray service: routes each product's frames with its calibrated bank.

The model lives in :mod:`judo_model.prefilter`; this module adds only the per-product service,
its ``prefilter`` trace spans and the thin ``ray.remote`` wrapper.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import ray

from actors.product_service import ProductService
from actors.references import ReferenceService
from cluster.telemetry import context_from_carrier, tracer
from judo_model.prefilter.bank_format import BANK_META
from judo_model.prefilter.features import FeatureExtractor, Frame
from judo_model.prefilter.references import REFERENCES_SUBDIR, ReferenceIndex
from judo_model.prefilter.scorer import PrefilterScorer

log = logging.getLogger(__name__)

#: How often a prefilter service looks at its banks' ``bank.json`` for a new revision (seconds)
RELOAD_CHECK_S = 2.0


class PrefilterService(ProductService):
    """Routes frames (encoded bytes from Kafka, or arrays) with each product's calibrated bank."""

    what = "prefilter bank"
    meta_file = BANK_META

    def __init__(self, directories: dict[str, str], threads: int = 2, service_name: str | None = None,
                 trace_file: str | None = None, with_references: bool = False):
        stamps = {product: _stamp(d) for product, d in directories.items()}  # before loading: no change missed
        super().__init__(directories, threads, service_name, trace_file)
        self.directories, self._stamps = dict(directories), stamps
        self._next_check = time.monotonic() + RELOAD_CHECK_S
        # the frame path's reference retrieval, next to the descriptor and anomaly map it starts from
        self.references = ReferenceService(
            {product: str(Path(d) / REFERENCES_SUBDIR) for product, d in directories.items()}, threads,
            extractors=self._extractors,
        ) if with_references else None

    def _load(self, directory: str, extractor: FeatureExtractor | None) -> PrefilterScorer:
        return PrefilterScorer.load(directory, extractor)

    def score_frames(
        self,
        product: str,
        frames: Sequence[Frame],
        carriers: Sequence[dict | None] | None = None,
        frame_ids: Sequence[str] | None = None,
        threshold: float | None = None,
    ) -> list[dict]:
        """``[{score, threshold, suspect, anomaly_map, descriptor}]`` per frame, in order.

        ``suspect`` is ``score > threshold``: the router's threshold when given (a config override),
        else the bank's calibrated one. ``anomaly_map`` (float32, frame size) and ``descriptor`` (the
        global descriptor the product's reference index is searched with) are attached to suspect
        frames only, for JUDO's evidence and references without a second backbone pass; ``carriers``
        are W3C trace contexts, one per frame, under which a ``prefilter`` span is recorded (with
        ``frame_ids`` as attributes when given).
        """
        self.reload_changed()
        scorer = self.get(product)
        version = self.model_version()
        threshold = scorer.threshold if threshold is None else float(threshold)
        started = time.time_ns()
        embedded = scorer.bank.embed(frames)
        result = scorer.bank.score_embedded(embedded)
        ended = time.time_ns()
        out = []
        for i, score in enumerate(result.scores):
            suspect = bool(score > threshold)
            out.append({
                "score": float(score),
                "threshold": threshold,
                "suspect": suspect,
                "anomaly_map": result.anomaly_map(i).astype(np.float32) if suspect else None,
                "descriptor": embedded.descriptors[i].copy() if suspect else None,
                "model_version": version,
            })
        if carriers is not None:
            _record_spans(product, out, carriers, frame_ids, started, ended)
        return out

    def screen_frames(self, product: str, frames: Sequence[Frame], carriers: Sequence[dict | None],
                      frame_ids: Sequence[str], references_k: int, threshold: float | None = None) -> list[dict]:
        """:meth:`score_frames`, plus for each suspect frame (``score > threshold``: pass the router's,
        so every frame it routes has them) what JUDO is shown with it: ``references`` (the
        ``references_k`` nearest normals' ``{id, path, similarity, rank}``, no pixels), ``defect_hint``
        and ``defect_types`` (see :meth:`ReferenceService.defect_evidence`). One call per batch: the
        frame path sends the pixels to Ray once. Needs ``with_references``."""
        out = self.score_frames(product, frames, carriers, frame_ids, threshold)
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

    def model_version(self) -> str:
        """The banks this service scores with now, as ``pipelines.runner.bank_version`` names them."""
        return "prefilter:" + ",".join(f"{p}.r{self.items[p].bank.revision}" for p in sorted(self.items))

    def bank_versions(self) -> dict[str, int]:
        """Each product's bank revision, after looking for changed banks at once."""
        self.reload_changed(force=True)
        return {product: item.bank.revision for product, item in self.items.items()}

    def reload_changed(self, force: bool = False) -> list[str]:
        """Reload every product whose ``bank.json`` changed (``judo feedback apply``), at most every
        :data:`RELOAD_CHECK_S`; returns the products reloaded. The old bank scores until the new one is
        loaded whole; a folder caught mid-write is left for the next check. The actor runs one call at a
        time, so no frame is scored while a bank is swapped."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return []
        self._next_check = now + RELOAD_CHECK_S
        reloaded = []
        for product, directory in self.directories.items():
            stamp = _stamp(directory)
            if stamp == self._stamps.get(product):
                continue
            try:
                extractor = self.extractor_for(directory)
                scorer = PrefilterScorer.load(directory, extractor)
                references = ReferenceIndex.load(Path(directory) / REFERENCES_SUBDIR, extractor) \
                    if self.references is not None else None
            except (OSError, ValueError) as exc:  # a folder being written: BankFormatError, JSON, missing file
                log.warning("bank of %s changed but did not load (%s); trying again", product, exc)
                continue
            if _stamp(directory) != stamp:
                continue  # written again while loading: take the next one
            old = self.items[product]
            if scorer.threshold != old.threshold:
                log.warning("bank of %s has a new threshold %.4g (was %.4g); the router keeps its start-up "
                            "threshold until `judo run` restarts", product, scorer.threshold, old.threshold)
            self.items[product], self._stamps[product] = scorer, stamp
            if references is not None:
                self.references.items[product] = references
            reloaded.append(product)
            log.info("reloaded the bank of %s: revision %d -> %d", product, old.bank.revision, scorer.bank.revision)
        if reloaded:
            self.pin_threads()
        return reloaded


def _stamp(directory: str) -> tuple[int, int] | None:
    """When and how large ``bank.json`` is: what changes when a bank folder is updated."""
    try:
        stat = os.stat(Path(directory) / BANK_META)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


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
