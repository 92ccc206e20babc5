"""Evaluation of prefilter methods on MVTec-style folders (used by the CLI and the benchmark).

Protocol, per category: fit on ``train/good`` only; calibrate the routing threshold on
``validation/good`` if present, else on k-fold held-out ``train/good`` scores; then
score ``test/`` once. Nothing is tuned on ``test/``.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import psutil
import torch
from pydantic import BaseModel, Field
from rich.table import Table
from tqdm import tqdm

from judo_model.data.mvtec import MVTecCategory, discover_categories
from judo_model.imaging import load_image
from judo_model.metrics import auroc
from judo_model.prefilter.calibration import Calibration
from judo_model.prefilter.features import BackboneConfig, FeatureExtractor, PreprocessConfig
from judo_model.prefilter.fitting import labelled_defect_examples
from judo_model.prefilter.patchcore import Embedded, PatchCoreBank, PatchCoreConfig, ScoreResult
from judo_model.prefilter.scorer import PrefilterScorer, fit_calibrated
from judo_model.prefilter.selection import select_config

METRICS = ("image_auroc", "pixel_auroc", "recall", "routing_rate", "fps_batch1", "fps_batch16", "peak_mem_mb")


class GaussianBaseline:
    """PaDiM-style baseline: one Gaussian per grid cell, Mahalanobis distance as score.

    Kept to show what the memory bank buys: it assumes frames are aligned (same
    object at the same place), which holds for a fixed bottle but not for tiles or
    parts whose position and size vary.
    """

    def __init__(self, canvas: tuple[int, int], n_dims: int = 100, reg: float = 0.01, seed: int = 0, map_sigma: float = 4.0):
        self.canvas, self.n_dims, self.reg, self.seed, self.map_sigma = canvas, n_dims, reg, seed, map_sigma

    def _cells(self, embedded: Embedded) -> torch.Tensor:
        """``(cells, B, d)`` float32 features of the chosen dims, one row per grid cell."""
        x = torch.from_numpy(embedded.features[:, self.dims])
        return x.flatten(2).permute(2, 0, 1).contiguous()

    def fit_embedded(self, embedded: Embedded) -> "GaussianBaseline":
        c = embedded.features.shape[1]
        rng = np.random.default_rng(self.seed)
        self.dims = np.sort(rng.choice(c, min(self.n_dims, c), replace=False))
        x = self._cells(embedded).double()
        self.mean = x.mean(1, keepdim=True)
        centred = x - self.mean
        cov = torch.bmm(centred.transpose(1, 2), centred) / max(1, x.shape[1] - 1)
        cov += self.reg * torch.eye(len(self.dims), dtype=cov.dtype)
        self.precision = torch.linalg.inv(cov).float()
        self.mean = self.mean.float()
        self.grid = tuple(embedded.features.shape[2:])
        return self

    def score_embedded(self, embedded: Embedded) -> ScoreResult:
        x = self._cells(embedded) - self.mean
        m = (torch.bmm(x, self.precision) * x).sum(-1).clamp_min(0).sqrt()  # (cells, B)
        grids = m.T.reshape(len(embedded), *self.grid).numpy().copy()
        scores = np.array([g[v].max() for g, v in zip(grids, embedded.valid)], np.float32)
        for g, v in zip(grids, embedded.valid):
            g[~v] = g[v].min()
        return ScoreResult(scores, grids, embedded.placements, self.canvas, self.map_sigma)


class EvalMethod(BaseModel):
    """A named prefilter variant to evaluate."""

    name: str
    kind: Literal["patchcore", "gaussian"] = "patchcore"
    config: PatchCoreConfig = Field(default_factory=PatchCoreConfig)
    select: bool = Field(False, description="choose backbone, size and cell levels per category on synthetic "
                                            "defects in held-out train/good first (judo prefilter fit --auto)")
    min_fps: float | None = None


def default_method(config: PatchCoreConfig | None = None) -> EvalMethod:
    return EvalMethod(name="patchcore", config=config or PatchCoreConfig())


def baseline_methods() -> list[EvalMethod]:
    """Ours without cell levels (raw distances), the anchor (plain PatchCore: 224 px squash, blocks
    3+8, random 10 % bank, raw distances) and PaDiM-style."""
    anchor = PatchCoreConfig(
        preprocess=PreprocessConfig(mode="squash"),
        backbone=BackboneConfig(blocks=(3, 8)),
        sampler="random",
        coreset_min=1,
        position_norm="off",
    )
    return [
        EvalMethod(name="patchcore_raw", config=PatchCoreConfig(position_norm="off")),
        EvalMethod(name="anchor_patchcore", config=anchor),
        EvalMethod(name="padim_gaussian", kind="gaussian", config=PatchCoreConfig()),
    ]


class PeakMemory:
    """Peak resident memory (MB) of this process while the block runs, sampled every 20 ms."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0
        self._proc = psutil.Process(os.getpid())
        self._stop = threading.Event()

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class FittedMethod:
    """A fitted, calibrated method: embeds frames with its bank's canvas and scores them."""

    bank: PatchCoreBank
    model: object
    calibration: Calibration

    def score(self, frames: Sequence[np.ndarray]) -> ScoreResult:
        return self.model.score_embedded(self.bank.embed(frames))


def fit_method(
    method: EvalMethod,
    train: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    target_routing_rate: float,
    folds: int,
    extractor: FeatureExtractor | None = None,
    defect_examples: Sequence[np.ndarray] = (),
) -> FittedMethod:
    """Fit and calibrate ``method``; labelled ``defect_examples`` (never test images) decide
    ``position_norm='auto'`` as in :func:`judo_model.prefilter.fitting.fit_bank_from_folder`."""
    config, report = method.config, None
    if method.select:
        config, report = select_config(train, config, min_fps=method.min_fps, progress=False)
        extractor = None if extractor is None or extractor.config != config.backbone else extractor
    bank = PatchCoreBank(config, extractor)
    embedded = bank.embed(bank.set_canvas_from(train), f"{method.name}: embed train/good")
    val = bank.embed(validation) if validation else None
    if method.kind == "gaussian":
        canvas = bank.config.preprocess.resolved_canvas()

        def make(e: Embedded) -> GaussianBaseline:
            return GaussianBaseline(canvas, map_sigma=bank.config.map_sigma).fit_embedded(e)
        model, calibration = fit_calibrated(make, embedded, val, target_routing_rate, folds, bank.config.seed)
        return FittedMethod(bank, model, calibration)
    defects = bank.embed(list(defect_examples)) if len(defect_examples) else None
    fitted = PrefilterScorer.fit_embedded(bank, embedded, val, target_routing_rate, folds, defects).bank
    fitted.selection_report = report.model_dump(mode="json") if report else None
    return FittedMethod(fitted, fitted, fitted.calibration)


def frames_per_second(score: Callable[[list], object], frames: list, batch: int, n_frames: int) -> float:
    """Throughput of ``score`` on ``n_frames`` decoded frames in batches (after one warm-up batch)."""
    pool = [frames[i % len(frames)] for i in range(max(n_frames, batch))]
    score(pool[:batch])
    start = time.perf_counter()
    for s in range(0, len(pool), batch):
        score(pool[s : s + batch])
    return len(pool) / (time.perf_counter() - start)


def pixel_auroc(result: ScoreResult, masks: list[np.ndarray | None]) -> float | None:
    """Pixel AUROC over every test frame that has a mask (good frames count as all-normal)."""
    labels, values = [], []
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        labels.append(mask.ravel())
        values.append(result.anomaly_map(i).ravel())
    if not labels or not any(l.any() for l in labels):
        return None
    return auroc(np.concatenate(labels), np.concatenate(values))


def evaluate_category(
    category: MVTecCategory,
    method: EvalMethod,
    target_routing_rate: float = 0.05,
    folds: int = 5,
    speed_frames: int = 32,
    extractor: FeatureExtractor | None = None,
) -> dict:
    """Fit, calibrate and score one category with one method; returns the metric dict."""
    train = [s.load_image() for s in category.split("train", "good")]
    validation = [s.load_image() for s in category.split("validation", "good")]
    examples = [load_image(path) for path, _ in labelled_defect_examples(category.root)]
    test_samples = category.split("test")
    test = [s.load_image() for s in test_samples]
    labels = np.array([s.is_anomalous for s in test_samples])
    with_masks = any(s.mask_path is not None for s in test_samples if s.is_anomalous)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        fitted = fit_method(method, train, validation, target_routing_rate, folds, extractor, examples)
        fit_s = time.perf_counter() - t0
        result = fitted.score(test)
        fps1 = frames_per_second(fitted.score, test, 1, speed_frames // 2)
        fps16 = frames_per_second(fitted.score, test, 16, speed_frames)
    masks = [s.load_mask() for s in test_samples] if with_masks else []
    routed = result.scores > fitted.calibration.threshold
    return {
        "image_auroc": auroc(labels, result.scores),
        "pixel_auroc": pixel_auroc(result, masks) if with_masks else None,
        "recall": float(routed[labels].mean()) if labels.any() else None,
        "routing_rate": float(routed[~labels].mean()) if (~labels).any() else None,
        "fps_batch1": fps1,
        "fps_batch16": fps16,
        "peak_mem_mb": mem.peak_mb,
        "threshold": fitted.calibration.threshold,
        "calibration": fitted.calibration.method,
        "canvas": list(fitted.bank.config.preprocess.resolved_canvas()),
        "bank_patches": int(len(fitted.bank.memory)) if isinstance(fitted.model, PatchCoreBank) else None,
        "backbone": fitted.bank.config.backbone.name,
        "size": fitted.bank.config.preprocess.size,
        "position_norm": (fitted.bank.position_norm_report or {}).get("used", False),
        "selection": fitted.bank.selection_report,
        "n_train": len(train),
        "n_test_good": int((~labels).sum()),
        "n_test_defective": int(labels.sum()),
        "fit_seconds": fit_s,
        "load_avg_1m": os.getloadavg()[0],
    }


def mean_entry(per_category: dict[str, dict]) -> dict:
    """Mean of each metric over the categories that have it (None if none has)."""
    out = {}
    for key in METRICS:
        vals = [m[key] for m in per_category.values() if m.get(key) is not None]
        out[key] = statistics.fmean(vals) if vals else None
    return out


def evaluate(
    root: str | Path,
    categories: Sequence[str] | None = None,
    methods: Sequence[EvalMethod] | None = None,
    target_routing_rate: float = 0.05,
    folds: int = 5,
    speed_frames: int = 32,
    label: str | None = None,
) -> dict[str, dict[str, dict]]:
    """``{method: {category: metrics, ..., "mean": metrics}}`` for every category under ``root``."""
    methods = list(methods or [default_method()])
    cats = discover_categories(root, categories)
    extractors: dict[str, FeatureExtractor] = {}
    results: dict[str, dict[str, dict]] = {m.name: {} for m in methods}
    jobs = [(m, c) for m in methods for c in cats]
    for method, cat in tqdm(jobs, desc=label or f"prefilter eval {Path(root).name}"):
        key = method.config.backbone.model_dump_json()
        if key not in extractors:
            extractors[key] = FeatureExtractor(method.config.backbone)
        results[method.name][cat.name] = evaluate_category(
            cat, method, target_routing_rate, folds, speed_frames, extractors[key]
        )
    for per_cat in results.values():
        per_cat["mean"] = mean_entry(per_cat)
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def results_table(results: dict[str, dict[str, dict]], title: str = "Prefilter evaluation") -> Table:
    """A rich table: one row per (method, category)."""
    table = Table(title=title)
    for col in ("method", "category", "image AUROC", "pixel AUROC", "recall", "routing",
                "fps b1", "fps b16", "peak MB"):
        table.add_column(col, justify="left" if col in ("method", "category") else "right")
    for method, per_cat in results.items():
        for cat, m in per_cat.items():
            table.add_row(
                method, cat, _fmt(m["image_auroc"]), _fmt(m["pixel_auroc"]), _fmt(m["recall"], 2),
                _fmt(m["routing_rate"], 2), _fmt(m["fps_batch1"], 1), _fmt(m["fps_batch16"], 1),
                _fmt(m["peak_mem_mb"], 0),
                end_section=cat == "mean",
            )
    return table


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """The same table as GitHub markdown."""
    head = "| method | category | image AUROC | pixel AUROC | recall | routing rate | fps b1 | fps b16 | peak MB |"
    lines = [head, "|" + "---|" * 9]
    for method, per_cat in results.items():
        for cat, m in per_cat.items():
            name = f"**{cat}**" if cat == "mean" else cat
            lines.append(
                f"| {method} | {name} | {_fmt(m['image_auroc'])} | {_fmt(m['pixel_auroc'])} | "
                f"{_fmt(m['recall'], 2)} | {_fmt(m['routing_rate'], 2)} | {_fmt(m['fps_batch1'], 1)} | "
                f"{_fmt(m['fps_batch16'], 1)} | {_fmt(m['peak_mem_mb'], 0)} |"
            )
    return "\n".join(lines) + "\n"
