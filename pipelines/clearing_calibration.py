"""``judo calibrate-clearing``: measure, per product, how often JUDO's "no defect" is right.

Runs the serving JUDO (the config's checkpoint and engine) on the product's labelled validation
frames exactly as the pipeline shows them (prefilter score, anomaly map, threshold, nearest normal
references, defect hint and types from the bank folder) and stores the counts with the bank
(``judo_clearing.json``): JUDO may then clear that product's flagged frames only if the record meets
``judo.clearing`` (:func:`judo_model.runtime.clearing.clearing_allowed`). Never reads ``test/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from judo_model.data.mvtec import GOOD, discover_categories, image_files
from judo_model.imaging import load_image
from judo_model.prefilter.references import REFERENCES_SUBDIR, ReferenceIndex
from judo_model.prefilter.scorer import PrefilterScorer
from judo_model.runtime.clearing import ClearingRecord, ClearingRule
from pipelines.config import PipelineConfig
from pipelines.judo_request import JudoFrameRequest
from pipelines.serve_app import JudoInference, reference_image

#: folders of a category a clearing measurement reads, each ``<folder>/<good | defect type>/*``:
#: ``validation`` (MVTec-style) and ``val_qa`` (the synthetic data's labelled validation defects);
#: never ``test/`` (the benchmarks report on it) nor the defect examples the bank's library was built from
CALIBRATION_FOLDERS = ("validation", "val_qa")


def validation_frames(data: str | Path, category: str | None) -> list[tuple[Path, str]]:
    """(image path, ``good`` or defect type) of the category's labelled validation frames."""
    cats = discover_categories(data, [category] if category else None)
    if len(cats) != 1:
        raise ValueError(f"{data} holds {len(cats)} categories; name one")
    found = []
    for folder in CALIBRATION_FOLDERS:
        root = cats[0].root / folder
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            found += [(path, label_dir.name) for path in image_files(label_dir)]
    return found


def frame_requests(product: str, bank_dir: Path, images: list[np.ndarray], ids: list[str],
                   threshold: float | None, references_k: int) -> list[JudoFrameRequest]:
    """What the frame path would send JUDO for each image, whether the prefilter flags it or not."""
    scorer = PrefilterScorer.load(bank_dir)
    index = ReferenceIndex.load(bank_dir / REFERENCES_SUBDIR, scorer.bank.embedder.extractor)
    embedded = scorer.bank.embed(images)
    scored = scorer.bank.score_embedded(embedded)
    threshold = scorer.threshold if threshold is None else threshold
    requests = []
    for i, (image, frame_id) in enumerate(zip(images, ids)):
        anomaly_map = scored.anomaly_map(i).astype(np.float32)
        [references] = index.query_descriptors(embedded.descriptors[i:i + 1], references_k)
        requests.append(JudoFrameRequest(
            frame_id=frame_id, camera_id="calibration", line_id="calibration", product=product, captured_at=None,
            query=image, references=[reference_image(r.path) for r in references],
            anomaly_score=float(scored.scores[i]), threshold=float(threshold), anomaly_map=anomaly_map,
            defect_hint=index.defects.label_of(image, anomaly_map) if index.defects is not None else None,
            defect_types=index.defects.types if index.defects is not None else None))
    return requests


def measure_clearing(config: PipelineConfig, product: str, data: str | Path, category: str | None = None,
                     batch_size: int = 4, inference: JudoInference | None = None) -> ClearingRecord:
    """JUDO's answers on the product's labelled validation frames, counted as clearings."""
    section = config.products[product]
    samples = validation_frames(data, category)
    if not samples:
        raise ValueError(f"{data} has no labelled validation frames for {category or product} "
                         f"(looked in {', '.join(CALIBRATION_FOLDERS)})")
    images = [load_image(path) for path, _ in samples]
    ids = [f"{path.parent.parent.name}:{label}:{path.name}" for path, label in samples]
    requests = frame_requests(product, Path(section.bank), images, ids, section.threshold,
                              config.prefilter.references_k)
    inference = inference or JudoInference(config.judo.model_dump(mode="json"), config.telemetry.service_name)
    said_no = []
    for start in range(0, len(requests), batch_size):
        verdicts = inference.infer(requests[start:start + batch_size])
        said_no += [v.judo_is_anomalous is False for v in verdicts]
    good = [label == GOOD for _, label in samples]
    return ClearingRecord(
        product=product, model_version=inference.engine.model_version,
        good_frames=sum(good), defect_frames=len(good) - sum(good),
        good_cleared=sum(n and g for n, g in zip(said_no, good)),
        defects_cleared=sum(n and not g for n, g in zip(said_no, good)),
        sources=sorted({str(path.parent.parent) for path, _ in samples}))


def rule_of(config: PipelineConfig) -> ClearingRule:
    return ClearingRule(**config.judo.clearing.model_dump())

