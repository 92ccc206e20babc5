"""PatchCore-style memory bank of one product's normal patch features, and its scores.

A frame's score is the largest nearest-neighbour distance of its locally aware patch features to a
coreset of normal patches (divided by that canvas cell's normal level where :class:`CellLevels`
help); the bank fits from normal frames only and saves as json + npy + a faiss index.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from judo_model.prefilter.bank_format import (
    BANK_FILES,
    BANK_FORMAT,
    BANK_FORMAT_VERSION,
    CELL_LEVELS_FILE,
    BankFormatError,
    read_store,
    write_store,
)
from judo_model.prefilter.calibration import Calibration, CellLevels, frame_maxima
from judo_model.prefilter.features import (
    BackboneConfig,
    FeatureExtractor,
    Frame,
    Placement,
    PreprocessConfig,
    Preprocessor,
    as_rgb_frame,
    choose_canvas,
    global_descriptors,
    valid_cells,
)


class PatchCoreConfig(BaseModel):
    """Everything that decides a bank's scores; saved with the bank."""

    model_config = ConfigDict(extra="forbid")

    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    sampler: Literal["greedy", "random"] = Field(
        "greedy", description="coreset: k-center greedy (covers rare normal patterns) or random"
    )
    coreset_ratio: float = Field(0.1, gt=0, le=1)
    coreset_min: int = Field(1000, ge=1, description="keep at least this many patches")
    coreset_max: int = Field(20000, ge=1, description="cap the bank so search stays fast")
    projection_dim: int = Field(64, ge=8, description="random projection for k-center greedy")
    map_sigma: float = Field(4.0, ge=0, description="Gaussian sigma of the pixel map (canvas px)")
    position_norm: Literal["auto", "on", "off"] = Field(
        "auto", description="divide each patch distance by the typical held-out normal distance at its canvas cell "
        "(CellLevels); 'auto' keeps that only if the product's labelled defect examples are told from normal "
        "frames at least as well with it as without (on when it has none)"
    )
    position_norm_floor: float = Field(
        0.2, ge=0, description="added to every cell's level, as a fraction of the mean level, so cells that normal "
        "frames match closely do not turn small distances into large scores"
    )
    batch_size: int = Field(16, ge=1)
    seed: int = 0


def kcenter_greedy(
    features: np.ndarray,
    n_select: int,
    projection_dim: int = 64,
    seed: int = 0,
    min_distances: np.ndarray | None = None,
    stop_radius: float | None = None,
) -> tuple[np.ndarray, float]:
    """Greedy k-center coreset: repeatedly take the point farthest from the chosen set.

    Why: a random subset drops rare-but-normal patches (edges, text, fixtures) and
    turns them into false alarms; k-center keeps the whole normal manifold covered
    with a known radius. Distances are computed on a Gaussian random projection to
    ``projection_dim`` dims (Johnson-Lindenstrauss) for speed. ``min_distances``
    (squared, in the projected space) continues from an existing bank; the loop stops
    early once every point is within ``stop_radius`` (projected L2). Returns the
    selected row indices and the final coverage radius (projected L2).
    """
    n = features.shape[0]
    n_select = min(n_select, n)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if x.shape[1] > projection_dim:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    sq = (x * x).sum(1)
    if min_distances is None:
        min_d = torch.full((n,), float("inf"))
        current = int(np.random.default_rng(seed).integers(n))
    else:
        min_d = torch.from_numpy(np.asarray(min_distances, np.float32)).clone()
        current = int(torch.argmax(min_d))
    selected: list[int] = []
    d = torch.empty(n)
    threads = torch.get_num_threads()
    # Thousands of tiny memory-bound steps: one thread avoids OpenMP barrier stalls when
    # other jobs share the cores, and is no slower when they do not.
    torch.set_num_threads(1)
    try:
        for _ in range(n_select):
            if stop_radius is not None and float(min_d[current]) <= stop_radius**2:
                break
            selected.append(current)
            torch.addmv(sq, x, x[current], beta=1.0, alpha=-2.0, out=d)
            d.add_(sq[current]).clamp_min_(0.0)
            torch.minimum(min_d, d, out=min_d)
            current = int(torch.argmax(min_d))
    finally:
        torch.set_num_threads(threads)
    return np.asarray(selected, dtype=np.int64), float(math.sqrt(max(float(min_d.max()), 0.0)))


@dataclass
class Embedded:
    """Patch features of a set of frames on the product canvas (cacheable across fits)."""

    features: np.ndarray  # (B, C, gh, gw) float32
    valid: np.ndarray  # (B, gh, gw) bool: cells with content, not padding
    placements: list[Placement]
    descriptors: np.ndarray  # (B, C) L2-normalised global descriptors

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, idx: Sequence[int]) -> "Embedded":
        idx = list(idx)
        return Embedded(
            self.features[idx], self.valid[idx], [self.placements[i] for i in idx], self.descriptors[idx]
        )

    def patches(self) -> np.ndarray:
        """Valid patch vectors ``(N, C)`` (padding cells left out)."""
        feats = np.moveaxis(self.features, 1, -1)
        return np.ascontiguousarray(feats[self.valid])


class FrameEmbedder:
    """Preprocessing + backbone in batches under ``torch.inference_mode``."""

    def __init__(self, config: PatchCoreConfig, extractor: FeatureExtractor | None = None):
        self.config = config
        if extractor is None or extractor.config != config.backbone:
            # loading sets the process's threads; a given backbone leaves them to its loader (a service pins its own)
            extractor = FeatureExtractor(config.backbone)
            faiss.omp_set_num_threads(config.backbone.threads)
        self.extractor = extractor
        self.preprocessor = Preprocessor(config.preprocess)

    def __call__(self, frames: Sequence[Frame], progress: str | None = None) -> Embedded:
        if len(frames) == 0:
            raise ValueError("no frames to embed")
        bs = self.config.batch_size
        feats, valids, places, descs = [], [], [], []
        starts = range(0, len(frames), bs)
        for start in tqdm(starts, desc=progress, disable=progress is None, leave=False):
            batch, placements = self.preprocessor(frames[start : start + bs])
            f = self.extractor(batch)
            v = valid_cells(placements, self.config.backbone.grid_stride, tuple(f.shape[2:]))
            descs.append(global_descriptors(f, v))
            feats.append(f.numpy())
            valids.append(v)
            places.extend(placements)
        return Embedded(np.concatenate(feats), np.concatenate(valids), places, np.concatenate(descs))


@dataclass
class ScoreResult:
    """Image scores and patch-score grids (full canvas grid; padding cells hold the frame's min)."""

    scores: np.ndarray  # (B,)
    grids: np.ndarray  # (B, gh, gw)
    placements: list[Placement]
    canvas: tuple[int, int]
    map_sigma: float = 4.0

    def anomaly_map(self, i: int) -> np.ndarray:
        """Pixel anomaly map of frame ``i`` at its original size, Gaussian-smoothed."""
        p = self.placements[i]
        grid = torch.from_numpy(self.grids[i].astype(np.float32))[None, None]
        canvas = F.interpolate(grid, size=self.canvas, mode="bilinear", align_corners=False)
        content = canvas[:, :, p.top : p.top + p.height, p.left : p.left + p.width]
        full = F.interpolate(
            content, size=(p.source_height, p.source_width), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        scale = p.source_height / p.height
        return gaussian_filter(full, sigma=self.map_sigma * scale) if self.map_sigma > 0 else full


class PatchCoreBank:
    """Memory bank of normal patch features for one product (optionally one camera).

    Fit from normal frames only; ``update`` adds new normal frames without a refit
    (only their patches that the bank does not already cover within its coverage
    radius are added); ``save``/``load`` use json + npy + a faiss index, no pickle.
    """

    def __init__(
        self,
        config: PatchCoreConfig | None = None,
        extractor: FeatureExtractor | None = None,
        product: str = "",
        camera: str | None = None,
    ):
        self.config = config or PatchCoreConfig()
        self.product = product
        self.camera = camera
        self._extractor = extractor
        self._embedder: FrameEmbedder | None = None
        self.memory = np.zeros((0, 0), np.float32)
        self.index: faiss.Index | None = None
        self.coverage_radius = 0.0
        self.revision = 0
        self.n_images = 0
        self.calibration: Calibration | None = None
        self.cell_levels: CellLevels | None = None
        self.position_norm_report: dict | None = None
        self.selection_report: dict | None = None

    # -- embedding -------------------------------------------------------------------
    @property
    def embedder(self) -> FrameEmbedder:
        if self._embedder is None:
            self._embedder = FrameEmbedder(self.config, self._extractor)
        return self._embedder

    def set_canvas_from(self, frames: Sequence[Frame]) -> list[np.ndarray]:
        """Fix the product canvas from normal frames' shapes; returns the decoded frames."""
        rgb = [as_rgb_frame(f) for f in frames]
        pre = self.config.preprocess
        if pre.canvas is None:
            canvas = choose_canvas([f.shape[:2] for f in rgb], pre)
            self.config = self.config.model_copy(
                update={"preprocess": pre.model_copy(update={"canvas": canvas})}
            )
            if self._embedder is not None:
                self._extractor = self._embedder.extractor
            self._embedder = None
        return rgb

    def embed(self, frames: Sequence[Frame], progress: str | None = None) -> Embedded:
        return self.embedder(frames, progress)

    # -- fitting ---------------------------------------------------------------------
    def fit(self, frames: Sequence[Frame], progress: bool = True) -> "PatchCoreBank":
        """Fit on normal frames (bytes or arrays)."""
        rgb = self.set_canvas_from(frames)
        return self.fit_embedded(self.embed(rgb, "embed normal frames" if progress else None))

    def fresh_fit(self, embedded: Embedded) -> "PatchCoreBank":
        """A new bank with this one's config and backbone, fitted on ``embedded`` (raw distances)."""
        bank = PatchCoreBank(self.config, self.embedder.extractor, self.product, self.camera)
        return bank.fit_embedded(embedded)

    def _bank_size(self, n_patches: int) -> int:
        c = self.config
        return int(min(n_patches, c.coreset_max, max(c.coreset_min, round(c.coreset_ratio * n_patches))))

    def fit_embedded(self, embedded: Embedded) -> "PatchCoreBank":
        patches = embedded.patches()
        n_select = self._bank_size(len(patches))
        if self.config.sampler == "greedy":
            idx, _ = kcenter_greedy(patches, n_select, self.config.projection_dim, self.config.seed)
        else:
            idx = np.random.default_rng(self.config.seed).choice(len(patches), n_select, replace=False)
        self.memory = np.ascontiguousarray(patches[np.sort(idx)])
        self._build_index()
        self.coverage_radius = float(self._nn_distances(patches).max())
        self.n_images = len(embedded)
        self.revision += 1
        return self

    def update(self, frames: Sequence[Frame]) -> int:
        """Add new normal frames without refitting; returns how many patches were added.

        New patches already within the bank's coverage radius change nothing; the
        rest are covered by continuing k-center greedy from the current bank.
        """
        self._require_fitted()
        embedded = self.embed([as_rgb_frame(f) for f in frames])
        patches = embedded.patches()
        dist = self._nn_distances(patches)
        budget = max(1, int(round(self.config.coreset_ratio * len(patches))))
        budget = min(budget, self.config.coreset_max - len(self.memory))
        added = np.zeros(0, np.int64)
        if budget > 0 and float(dist.max()) > self.coverage_radius:
            added, _ = kcenter_greedy(
                patches,
                budget,
                projection_dim=patches.shape[1],  # exact distances: compare with the stored radius
                seed=self.config.seed,
                min_distances=dist.astype(np.float32) ** 2,
                stop_radius=self.coverage_radius,
            )
        if len(added):
            new = np.ascontiguousarray(patches[np.sort(added)])
            self.memory = np.concatenate([self.memory, new])
            self.index.add(new)
        self.n_images += len(embedded)
        self.revision += 1
        return int(len(added))

    def _build_index(self) -> None:
        self.index = faiss.IndexFlatL2(self.memory.shape[1])
        self.index.add(self.memory)

    def _nn_distances(self, patches: np.ndarray, chunk: int = 65536) -> np.ndarray:
        out = np.empty(len(patches), np.float32)
        for s in range(0, len(patches), chunk):
            d, _ = self.index.search(np.ascontiguousarray(patches[s : s + chunk]), 1)
            out[s : s + chunk] = d[:, 0]
        return np.sqrt(np.maximum(out, 0.0))

    def _require_fitted(self) -> None:
        if self.index is None or self.index.ntotal == 0:
            raise RuntimeError("the bank is empty: fit it on normal frames first")

    # -- scoring ---------------------------------------------------------------------
    def score(self, frames: Sequence[Frame]) -> ScoreResult:
        """Image scores (max patch distance over the frame's content) and patch grids."""
        self._require_fitted()
        return self.score_embedded(self.embed(frames))

    def score_embedded(self, embedded: Embedded) -> ScoreResult:
        """Nearest-bank distance per patch, divided by the cell levels when the bank has them."""
        self._require_fitted()
        dist = self._nn_distances(embedded.patches())
        grids = np.zeros(embedded.valid.shape, np.float32)
        grids[embedded.valid] = dist
        if self.cell_levels is not None:
            grids = self.cell_levels.normalise(grids)
        return self.result_from_grids(grids, embedded)

    def result_from_grids(self, grids: np.ndarray, embedded: Embedded) -> ScoreResult:
        """Scores and maps from patch grids of ``embedded`` (padding cells take the frame's minimum)."""
        grids = grids.astype(np.float32, copy=True)
        for i in range(len(embedded)):
            grids[i][~embedded.valid[i]] = grids[i][embedded.valid[i]].min()
        return ScoreResult(frame_maxima(grids, embedded.valid), grids, embedded.placements,
                           self.config.preprocess.resolved_canvas(), self.config.map_sigma)

    # -- persistence -----------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format": BANK_FORMAT,
            "format_version": BANK_FORMAT_VERSION,
            "revision": self.revision,
            "product": self.product,
            "camera": self.camera,
            "config": self.config.model_dump(mode="json"),
            "n_images": self.n_images,
            "n_patches": int(len(self.memory)),
            "feature_dim": int(self.memory.shape[1]) if self.memory.size else 0,
            "coverage_radius": self.coverage_radius,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "position_norm": self.position_norm_report,
            "selection": self.selection_report,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, directory: str | Path) -> Path:
        self._require_fitted()
        directory = write_store(directory, BANK_FILES, self.metadata(), self.memory, self.index)
        levels_file = directory / CELL_LEVELS_FILE
        if self.cell_levels is not None:
            np.save(levels_file, self.cell_levels.levels, allow_pickle=False)
        else:
            levels_file.unlink(missing_ok=True)
        return directory

    @classmethod
    def load(cls, directory: str | Path, extractor: FeatureExtractor | None = None) -> "PatchCoreBank":
        meta, memory, index = read_store(directory, BANK_FILES, BANK_FORMAT, BANK_FORMAT_VERSION, "prefilter bank")
        bank = cls(PatchCoreConfig.model_validate(meta["config"]), extractor, meta["product"], meta["camera"])
        bank.memory, bank.index = memory, index
        bank.coverage_radius = float(meta["coverage_radius"])
        bank.revision = int(meta["revision"])
        bank.n_images = int(meta["n_images"])
        if meta.get("calibration"):
            bank.calibration = Calibration(**meta["calibration"])
        bank.position_norm_report, bank.selection_report = meta.get("position_norm"), meta.get("selection")
        if (Path(directory) / CELL_LEVELS_FILE).is_file():
            bank.cell_levels = CellLevels(np.load(Path(directory) / CELL_LEVELS_FILE, allow_pickle=False))
        elif (bank.position_norm_report or {}).get("used"):
            raise BankFormatError(f"{directory}: the bank divides by cell levels but {CELL_LEVELS_FILE} is missing")
        return bank
