"""Run an answerer over an MMAD-format folder and score it as MMAD does.

Writes the answers list (MMAD's schema) to ``FILE.json`` and the accuracy table to
``FILE_accuracy.csv`` (MMAD's naming), and reports grounding metrics where the
answerer returned a region and a ground-truth mask exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from rich.table import Table

from judo_model.imaging import load_image, load_mask, resize_map
from judo_model.metrics import auroc

from .answerers import Answerer, GroundedAnswer, MMADQuery
from .format import MMADDataset, MMADItem
from .scorer import AccuracyTable, parse_letter, score_answers


@dataclass
class GroundingMetrics:
    """Localisation quality of the regions an answerer returned, per image."""

    images: int = 0
    mean_iou: float | None = None
    pixel_auroc: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"images": self.images, "mean_iou": self.mean_iou, "pixel_auroc": self.pixel_auroc}


@dataclass
class _GroundingAccumulator:
    ious: list[float] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, reply: GroundedAnswer, truth: np.ndarray) -> None:
        height, width = truth.shape
        region = _binary_region(reply, height, width)
        union = np.logical_or(region, truth).sum()
        if truth.any():
            self.ious.append(float(np.logical_and(region, truth).sum() / union) if union else 0.0)
        score = resize_map(reply.anomaly_map, height, width) if reply.anomaly_map is not None else region
        step = max(1, int(np.sqrt(height * width / 65536)))
        self.scores.append(np.asarray(score, np.float32)[::step, ::step].ravel())
        self.labels.append(truth[::step, ::step].ravel())

    def result(self) -> GroundingMetrics:
        metrics = GroundingMetrics(images=len(self.scores))
        if self.ious:
            metrics.mean_iou = float(np.mean(self.ious))
        if self.labels:  # auroc is None where every pixel has one label
            metrics.pixel_auroc = auroc(np.concatenate(self.labels), np.concatenate(self.scores))
        return metrics


def _binary_region(reply: GroundedAnswer, height: int, width: int) -> np.ndarray:
    """The predicted region as a boolean map of the ground-truth size."""
    if reply.mask is not None:
        return resize_map(reply.mask.astype(np.float32), height, width) > 0.5
    region = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in reply.boxes:
        region[int(y1 * height):int(np.ceil(y2 * height)), int(x1 * width):int(np.ceil(x2 * width))] = True
    if not reply.boxes and reply.anomaly_map is not None:
        scores = resize_map(reply.anomaly_map, height, width)
        region = scores >= scores.mean() + 2 * scores.std()
    return region


@dataclass
class EvaluationResult:
    answers: list[dict]
    table: AccuracyTable
    grounding: GroundingMetrics


def evaluate(dataset: MMADDataset, answerer: Answerer, shots: int = 1, use_domain_knowledge: bool = False,
             limit: int | None = None, similar_templates: bool = False,
             progress: Callable[[Iterable[MMADItem]], Iterable[MMADItem]] | None = None) -> EvaluationResult:
    """Ask every question of every image (the first ``limit`` images) and score the answers."""
    items = list(dataset)[:limit] if limit else list(dataset)
    progress = progress or (lambda it: it)
    answers: list[dict] = []
    grounding = _GroundingAccumulator()
    for item in progress(items):
        knowledge = dataset.knowledge_text(item) if use_domain_knowledge else None
        references = item.template_paths(shots, similar_templates)
        grounded: GroundedAnswer | None = None
        for question in item.record.conversation:
            query = MMADQuery(image_key=item.key, image_path=item.image_path, question=question.Question,
                              options=dict(question.Options), question_type=question.type,
                              reference_paths=references, domain_knowledge=knowledge, mask_path=item.mask_path)
            reply = answerer.answer(query)
            if isinstance(reply, GroundedAnswer):
                if grounded is None and reply.has_region:
                    grounded = reply
                reply = reply.text
            options_text = "".join(f"{k}. {v}\n" for k, v in question.Options.items())
            answers.append({
                "image": item.key,
                "question": {"type": "text", "text": f"Question: {question.Question} \n{options_text}"},
                "question_type": question.type,
                "correct_answer": question.Answer,
                "gpt_answer": parse_letter(reply, question.Options),
            })
        if grounded is not None:
            truth = _ground_truth(item)
            if truth is not None:
                grounding.add(grounded, truth)
    return EvaluationResult(answers, score_answers(answers), grounding.result())


def _ground_truth(item: MMADItem) -> np.ndarray | None:
    """The defect mask, all-False for a normal image, None when a defect has no mask file."""
    if item.mask_path is not None and item.mask_path.is_file():
        return load_mask(item.mask_path)
    if item.is_normal and item.image_path.is_file():
        return np.zeros(load_image(item.image_path).shape[:2], bool)
    return None


def accuracy_csv_path(answers_path: str | Path) -> Path:
    """MMAD's naming: ``answers.json`` -> ``answers_accuracy.csv``."""
    path = Path(answers_path)
    return path.with_name(path.stem + "_accuracy.csv")


def write_result(result: EvaluationResult, answers_path: str | Path) -> tuple[Path, Path, Path | None]:
    """Write answers, the accuracy CSV and (if any) grounding metrics next to each other."""
    answers_path = Path(answers_path)
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    answers_path.write_text(json.dumps(result.answers, indent=1))
    csv_path = accuracy_csv_path(answers_path)
    result.table.to_csv(csv_path)
    grounding_path = None
    if result.grounding.images:
        grounding_path = answers_path.with_name(answers_path.stem + "_grounding.json")
        grounding_path.write_text(json.dumps(result.grounding.as_dict(), indent=1))
    return answers_path, csv_path, grounding_path


def render_table(table: AccuracyTable, title: str) -> Table:
    """A rich table of the accuracy table (one decimal, as MMAD's heatmap shows it)."""
    view = Table(title=title)
    view.add_column("")
    for column in table.columns:
        view.add_column(column, justify="right")
    for row in table.rows:
        view.add_row(row, *(f"{table.cell(row, c):.1f}" for c in table.columns))
    return view
