"""Per-product choice of backbone, canvas size and cell levels, made on the product's normal frames only.

A plant rarely has labelled defects when it fits a bank, and the test images must never choose settings.
So the choice is made the way anomalib's synthetic validation split makes it: synthetic defects
(cut-and-paste patches, scratches, stains) are drawn into held-out ``train/good`` frames, and each
candidate is scored by how well it tells them from the untouched frames (k-fold image AUROC). A
larger canvas is the tiled scoring of a long or high-resolution frame: the backbone is fully
convolutional, so scoring a 320-px canvas equals scoring its 224-px tiles without seams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from judo_model.metrics import auroc
from judo_model.prefilter.calibration import CellLevels, frame_maxima
from judo_model.prefilter.features import BackboneConfig, BackboneName, FeatureExtractor
from judo_model.prefilter.patchcore import Embedded, PatchCoreBank, PatchCoreConfig

BACKBONES: tuple[BackboneName, ...] = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
#: canvas short sides tried (larger ones from ``--size``: 448 px was no better on synthetic defects than
#: 320 px for long commutator frames and cost 3-4x the time, docs/prefilter_benchmark.md)
SIZES = (224, 320)
#: candidates within this AUROC of the best count as tied; the fastest of them is chosen
AUROC_TIE = 0.005
DefectKind = Literal["cutpaste", "scratch", "stain"]
DEFECT_KINDS: tuple[DefectKind, ...] = ("cutpaste", "scratch", "stain")


class Candidate(BaseModel):
    """One point of the search: a backbone, the canvas short side, and whether cell levels divide scores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: BackboneName
    size: int
    position_norm: Literal["on", "off"]

    def apply(self, base: PatchCoreConfig) -> PatchCoreConfig:
        backbone = BackboneConfig(name=self.backbone, grid_stride=base.backbone.grid_stride,
                                  neighbourhood=base.backbone.neighbourhood, threads=base.backbone.threads)
        preprocess = base.preprocess.model_copy(update={"size": self.size, "canvas": None})
        return base.model_copy(update={"backbone": backbone, "preprocess": preprocess,
                                       "position_norm": self.position_norm})


def default_candidates(normal_short_side: float) -> list[Candidate]:
    """Every backbone and cell-level choice at 224 px, plus the larger canvases the frames' own
    resolution supports (never upsampling a frame beyond its median short side)."""
    sizes = [s for s in SIZES if s == SIZES[0] or s <= normal_short_side]
    return [Candidate(backbone=b, size=s, position_norm=p) for b in BACKBONES for s in sizes for p in ("on", "off")]


def synthetic_defect(rgb: np.ndarray, kind: DefectKind, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``rgb`` with one synthetic defect of ``kind``, sized relative to the frame."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    image = Image.fromarray(rgb)
    if kind == "cutpaste":
        area = rng.uniform(0.005, 0.03) * h * w
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        ph = int(np.clip(np.sqrt(area * aspect), 4, h - 1))
        pw = int(np.clip(np.sqrt(area / aspect), 4, w - 1))
        y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        patch = rgb[y0 : y0 + ph, x0 : x0 + pw].astype(np.float32) * rng.uniform(0.7, 1.3)
        patch = np.clip(patch, 0, 255).astype(np.uint8)[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
        y1, x1 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        out = rgb.copy()
        out[y1 : y1 + ph, x1 : x1 + pw] = patch
        return out
    mean = rgb.reshape(-1, 3).mean(0)
    shift = rng.choice([-1, 1]) * rng.uniform(60, 110)
    colour = tuple(int(c) for c in np.clip(mean + shift, 0, 255))
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    if kind == "scratch":
        length = rng.uniform(0.15, 0.4) * max(h, w)
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=max(2, int(rng.uniform(0.012, 0.03) * short)))
        layer = layer.filter(ImageFilter.GaussianBlur(1))
    else:
        ry, rx = rng.uniform(0.04, 0.09, size=2) * short
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        layer = layer.filter(ImageFilter.GaussianBlur(float(max(1.0, 0.2 * min(rx, ry)))))
    alpha = np.asarray(layer, np.float32)[:, :, None] / 255.0
    if kind == "stain":
        alpha *= rng.uniform(0.6, 1.0, size=(h, w, 1)).astype(np.float32)
    blended = rgb.astype(np.float32) * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    return np.clip(blended, 0, 255).astype(np.uint8)


def synthetic_defects(frames: Sequence[np.ndarray], seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Each frame with each kind of synthetic defect, and the index of the frame each came from; the same
    frames give the same defects. Three per frame keep a ten-frame product's comparison from resting on
    a handful of defects."""
    defects = [synthetic_defect(f, kind, np.random.default_rng([seed, i, k]))
               for i, f in enumerate(frames) for k, kind in enumerate(DEFECT_KINDS)]
    return defects, np.repeat(np.arange(len(frames)), len(DEFECT_KINDS))


@dataclass
class CandidateScore:
    candidate: Candidate
    auroc: float
    ms_per_frame: float

    def to_dict(self) -> dict:
        return {**self.candidate.model_dump(), "synthetic_auroc": round(self.auroc, 4),
                "ms_per_frame": round(self.ms_per_frame, 2)}


def _kfold_grids(bank: PatchCoreBank, normals: Embedded, defects: Embedded, sources: np.ndarray, folds: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Raw patch grids of every normal frame and of its synthetic defects (``sources``: the frame each came
    from), from banks that saw neither, and the seconds spent searching the banks."""
    n = len(normals)
    order = np.random.default_rng(seed).permutation(n)
    normal_grids = np.empty(normals.valid.shape, np.float32)
    defect_grids = np.empty(defects.valid.shape, np.float32)
    search_s = 0.0
    for held in np.array_split(order, min(folds, n)):
        fold_bank = bank.fresh_fit(normals.subset(np.setdiff1d(order, held)))
        started = time.perf_counter()
        held_defects = np.flatnonzero(np.isin(sources, held))
        normal_grids[held] = fold_bank.score_embedded(normals.subset(held)).grids
        defect_grids[held_defects] = fold_bank.score_embedded(defects.subset(held_defects)).grids
        search_s += time.perf_counter() - started
    return normal_grids, defect_grids, search_s


def _separations(normal_grids: np.ndarray, defect_grids: np.ndarray, normals: Embedded, defects: Embedded,
                 sources: np.ndarray, floor: float) -> dict[str, float]:
    """Image AUROC of defects against normals, with raw distances and divided by leave-one-out cell levels."""
    labels = np.r_[np.zeros(len(normals), bool), np.ones(len(defects), bool)]
    raw = np.r_[frame_maxima(normal_grids, normals.valid), frame_maxima(defect_grids, defects.valid)]
    normal_norm = CellLevels.leave_one_out(normal_grids, normals.valid, floor)
    defect_norm = np.empty_like(defect_grids)
    keep = np.ones(len(normals), bool)
    for source in np.unique(sources):  # levels from the other frames only: the defects' own frame is held out
        keep[source] = False
        levels = CellLevels.from_heldout(normal_grids[keep], normals.valid[keep], floor)
        own = sources == source
        defect_norm[own] = levels.normalise(defect_grids[own])
        keep[source] = True
    normalised = np.r_[frame_maxima(normal_norm, normals.valid), frame_maxima(defect_norm, defects.valid)]
    return {"off": float(auroc(labels, raw)), "on": float(auroc(labels, normalised))}


class SelectionReport(BaseModel):
    """What was tried, how each did on synthetic defects, and what was chosen; saved with the bank."""

    model_config = ConfigDict(extra="forbid")

    chosen: Candidate
    method: str
    normal_frames: int
    synthetic_defects: int
    folds: int
    min_fps: float | None
    candidates: list[dict]


def select_config(
    normals: Sequence[np.ndarray],
    base: PatchCoreConfig | None = None,
    candidates: Sequence[Candidate] | None = None,
    folds: int = 3,
    min_fps: float | None = None,
    progress: bool = True,
) -> tuple[PatchCoreConfig, SelectionReport]:
    """The candidate that best tells synthetic defects from held-out normal frames (k-fold image AUROC),
    among those fast enough for ``min_fps`` (backbone plus bank search, timed on these frames at batch
    16, decoding and resizing not included; the fastest when none is); ties within :data:`AUROC_TIE` go to
    the fastest."""
    base = base or PatchCoreConfig()
    if len(normals) < 2:
        raise ValueError("choosing a prefilter configuration needs at least 2 normal frames")
    short_side = float(np.median([min(f.shape[:2]) for f in normals]))
    candidates = list(candidates or default_candidates(short_side))
    defect_frames, sources = synthetic_defects(normals, base.seed)
    extractors: dict[str, FeatureExtractor] = {}
    scores: list[CandidateScore] = []
    grouped: dict[tuple[str, int], list[Candidate]] = {}
    for c in candidates:
        grouped.setdefault((c.backbone, c.size), []).append(c)
    for (backbone, size), group in tqdm(grouped.items(), desc="choose prefilter config", disable=not progress):
        config = group[0].apply(base)
        if backbone not in extractors:
            extractors[backbone] = FeatureExtractor(config.backbone)
        bank = PatchCoreBank(config, extractors[backbone])
        rgb = bank.set_canvas_from(normals)
        started = time.perf_counter()
        embedded = bank.embed(rgb)
        defects = bank.embed(defect_frames)
        embed_ms = (time.perf_counter() - started) * 1000 / (len(rgb) + len(defect_frames))
        normal_grids, defect_grids, search_s = _kfold_grids(bank, embedded, defects, sources, folds, base.seed)
        search_ms = search_s * 1000 / (len(rgb) + len(defect_frames))
        separations = _separations(normal_grids, defect_grids, embedded, defects, sources, base.position_norm_floor)
        scores += [CandidateScore(c, separations[c.position_norm], embed_ms + search_ms) for c in group]
    eligible = [s for s in scores if min_fps is None or 1000.0 / s.ms_per_frame >= min_fps]
    if eligible:
        best = max(s.auroc for s in eligible)
        chosen = min((s for s in eligible if s.auroc >= best - AUROC_TIE), key=lambda s: s.ms_per_frame)
    else:  # nothing is fast enough here: the fastest comes closest
        chosen = min(scores, key=lambda s: s.ms_per_frame)
    report = SelectionReport(
        chosen=chosen.candidate,
        method="synthetic defects (cut-paste, scratch, stain) in k-fold held-out train/good frames",
        normal_frames=len(normals), synthetic_defects=len(defect_frames), folds=min(folds, len(normals)),
        min_fps=min_fps,
        candidates=[s.to_dict() for s in scores],
    )
    return chosen.candidate.apply(base), report
