"""Fast anomaly prefilter: a PatchCore-style memory bank per product, calibrated for routing.

Every frame on the plant gets a score from :class:`PatchCoreBank` (nearest-neighbour
distance of each locally aware patch feature to a coreset of normal patches, divided by
that canvas cell's normal level where :class:`CellLevels` help); frames above the
calibrated threshold are routed to the JUDO reasoner. The threshold is set on normal
frames that the bank never saw, for a target routing (false-positive) rate.

The core (everything above the "Ray actor" section) has no Ray dependency; the
actor at the bottom imports Ray only when its class is built.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from actors.features import (
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

BANK_FORMAT = "judo-patchcore"
BANK_FORMAT_VERSION = 2
#: metadata, config and calibration (json)
BANK_META = "bank.json"
#: metadata (json), memory bank vectors (npy), faiss index of the bank
BANK_FILES = (BANK_META, "memory.npy", "index.faiss")
#: per-cell normal levels (npy), present when the bank divides by them (:class:`CellLevels`)
CELL_LEVELS_FILE = "cell_levels.npy"


class BankFormatError(ValueError):
    """A saved bank or reference index is missing files or was written by an incompatible version."""


def write_store(directory: str | Path, names: tuple[str, str, str], meta: dict, vectors: np.ndarray,
                index: faiss.Index) -> Path:
    """Save ``meta`` (json), ``vectors`` (npy, no pickle) and a faiss index under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta_name, vectors_name, index_name = names
    np.save(directory / vectors_name, vectors, allow_pickle=False)
    faiss.write_index(index, str(directory / index_name))
    (directory / meta_name).write_text(json.dumps(meta, indent=2))
    return directory


def read_store(directory: str | Path, names: tuple[str, str, str], fmt: str, version: int,
               what: str) -> tuple[dict, np.ndarray, faiss.Index]:
    """Inverse of :func:`write_store`, checking files, format name, version and row counts."""
    directory = Path(directory)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise BankFormatError(f"{directory} is not a {what}: missing {', '.join(missing)}")
    meta_name, vectors_name, index_name = names
    meta = json.loads((directory / meta_name).read_text())
    if meta.get("format") != fmt or meta.get("format_version") != version:
        raise BankFormatError(
            f"{directory}: {what} format {meta.get('format')} v{meta.get('format_version')}, expected {fmt} v{version}"
        )
    vectors = np.load(directory / vectors_name, allow_pickle=False)
    index = faiss.read_index(str(directory / index_name))
    if index.ntotal != len(vectors):
        raise BankFormatError(f"{directory}: index holds {index.ntotal} vectors, the array {len(vectors)}")
    return meta, vectors, index


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


class SupportsScoreEmbedded(Protocol):
    def score_embedded(self, embedded: Embedded) -> "ScoreResult": ...


class FrameEmbedder:
    """Preprocessing + backbone in batches under ``torch.inference_mode``."""

    def __init__(self, config: PatchCoreConfig, extractor: FeatureExtractor | None = None):
        self.config = config
        if extractor is None or extractor.config != config.backbone:
            extractor = FeatureExtractor(config.backbone)
        self.extractor = extractor
        self.preprocessor = Preprocessor(config.preprocess)
        faiss.omp_set_num_threads(config.backbone.threads)

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


@dataclass
class Calibration:
    """Routing threshold chosen on held-out normal frames, with how it was chosen."""

    threshold: float
    target_routing_rate: float
    method: str
    n_normal: int
    normal_scores: list[float] = field(default_factory=list)

    @classmethod
    def from_normal_scores(cls, scores: Sequence[float], target_routing_rate: float, method: str) -> "Calibration":
        """Threshold: upper ``1 - rate`` prediction bound for a new normal frame's log-score.

        Why: we usually have 10-60 held-out normal frames, too few for a stable 95th
        percentile. Nearest-neighbour distances are positive and right-skewed, so we
        model log-scores as Gaussian and use the Student-t prediction interval
        ``mean + t(n-1) * std * sqrt(1 + 1/n)``, which widens when ``n`` is small
        instead of pretending the sample statistics are exact.
        """
        s = np.asarray(scores, dtype=np.float64)
        if s.size < 2:
            raise ValueError("calibration needs at least 2 held-out normal scores")
        logs = np.log(np.maximum(s, 1e-12))
        n = logs.size
        t = stats.t.ppf(1.0 - target_routing_rate, df=n - 1)
        threshold = float(np.exp(logs.mean() + t * logs.std(ddof=1) * math.sqrt(1.0 + 1.0 / n)))
        return cls(threshold, target_routing_rate, method, int(s.size), [float(v) for v in s])

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "target_routing_rate": self.target_routing_rate,
            "method": self.method,
            "n_normal": self.n_normal,
            "normal_scores": self.normal_scores,
        }


def frame_maxima(grids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Image scores: the maximum of each frame's grid over its content cells."""
    return np.where(valid, grids, -np.inf).reshape(len(grids), -1).max(axis=1).astype(np.float32)


def _cell_levels(sums: np.ndarray, counts: np.ndarray, floor: float) -> np.ndarray:
    overall = float(sums.sum()) / max(int(counts.sum()), 1)
    per_cell = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
    return (per_cell + floor * overall).astype(np.float32)


@dataclass
class CellLevels:
    """Typical distance of held-out normal patches to the bank at each canvas cell (floor included).

    Why: with a fixed camera some places (a tile's grout lines, a part's rim) sit far from every
    bank patch on every normal frame, so the plain maximum is set there and a fainter defect
    elsewhere stays below the threshold. Divided by the level of its cell, a patch scores how
    unusual it is *for that place*. Levels come from k-fold held-out normal frames, so they are
    what a new normal frame looks like, not the bank's own (near-zero) training distances.
    """

    levels: np.ndarray  # (gh, gw) float32

    @classmethod
    def from_heldout(cls, grids: np.ndarray, valid: np.ndarray, floor: float) -> "CellLevels":
        """Mean held-out grid per cell (cells no frame covers take the overall mean), plus the floor."""
        return cls(_cell_levels(np.where(valid, grids, 0.0).sum(0), valid.sum(0), floor))

    @staticmethod
    def leave_one_out(grids: np.ndarray, valid: np.ndarray, floor: float) -> np.ndarray:
        """Each held-out grid divided by the levels of all the others: how a new normal frame scores."""
        sums, counts = np.where(valid, grids, 0.0).sum(0), valid.sum(0)
        out = np.empty_like(grids, dtype=np.float32)
        for i in range(len(grids)):
            own = np.where(valid[i], grids[i], 0.0)
            out[i] = grids[i] / _cell_levels(sums - own, counts - valid[i], floor)
        return out

    def normalise(self, grids: np.ndarray) -> np.ndarray:
        if grids.shape[-2:] != self.levels.shape:
            raise ValueError(f"cell levels are {self.levels.shape}, the grids {grids.shape[-2:]}")
        return (grids / self.levels).astype(np.float32)


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
        """A new bank with this one's config and backbone, fitted on ``embedded`` (no cell levels:
        its scores are raw distances)."""
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
        bank.position_norm_report = meta.get("position_norm")
        if (Path(directory) / CELL_LEVELS_FILE).is_file():
            bank.cell_levels = CellLevels(np.load(Path(directory) / CELL_LEVELS_FILE, allow_pickle=False))
        elif (bank.position_norm_report or {}).get("used"):
            raise BankFormatError(f"{directory}: the bank divides by cell levels but {CELL_LEVELS_FILE} is missing")
        return bank


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


def heldout_normal_grids(
    make_model: Callable[[Embedded], "SupportsScoreEmbedded"], embedded: Embedded, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Patch-score grids of normal frames from models that did not see them (k-fold over the fit set).

    ``make_model(subset)`` returns a fitted model with ``score_embedded``; features are
    embedded once and reused by every fold.
    """
    n = len(embedded)
    if n < 2:
        raise ValueError("k-fold held-out scoring needs at least 2 normal frames")
    order = np.random.default_rng(seed).permutation(n)
    grids = np.empty(embedded.valid.shape, np.float32)
    for held in tqdm(np.array_split(order, min(folds, n)), desc="k-fold held-out normals", leave=False):
        model = make_model(embedded.subset(np.setdiff1d(order, held)))
        grids[held] = model.score_embedded(embedded.subset(held)).grids
    return grids


def choose_position_norm(defects_raw: np.ndarray, defects_normalised: np.ndarray, normals_raw: np.ndarray,
                         normals_normalised: np.ndarray) -> dict:
    """Whether dividing by the cell levels tells labelled defects from normals at least as well
    (AUROC, ties keep the levels): the evidence is saved with the bank."""
    from judo_model.metrics import auroc

    def separation(defects: np.ndarray, normals: np.ndarray) -> float:
        labels = np.r_[np.ones(len(defects), bool), np.zeros(len(normals), bool)]
        return float(auroc(labels, np.r_[defects, normals]))

    without, with_levels = separation(defects_raw, normals_raw), separation(defects_normalised, normals_normalised)
    return {"used": with_levels >= without, "defect_examples": len(defects_raw), "normal_frames": len(normals_raw),
            "auroc_without": round(without, 4), "auroc_with": round(with_levels, 4)}


def fit_calibrated(
    make_model: Callable[[Embedded], "SupportsScoreEmbedded"],
    embedded: Embedded,
    validation: Embedded | None,
    target_routing_rate: float,
    folds: int = 5,
    seed: int = 0,
):
    """Fit on all of ``embedded`` and calibrate on normal frames the model never saw.

    Held-out normals are ``validation`` when given (a validation/good folder), else
    k-fold scores over ``embedded``. Returns ``(model, Calibration)``.
    """
    model = make_model(embedded)
    if validation is not None and len(validation):
        normal, method = model.score_embedded(validation).scores, "validation/good"
    else:
        normal = frame_maxima(heldout_normal_grids(make_model, embedded, folds, seed), embedded.valid)
        method = f"{min(folds, len(embedded))}-fold train/good"
    return model, Calibration.from_normal_scores(normal, target_routing_rate, method)


@dataclass
class Verdict:
    """Prefilter outcome for one frame: route it to JUDO when ``suspect``."""

    score: float
    threshold: float
    suspect: bool
    anomaly_grid: np.ndarray | None = None


class PrefilterScorer:
    """A calibrated bank: scores frames and decides which ones go to the reasoner."""

    def __init__(self, bank: PatchCoreBank):
        if bank.calibration is None:
            raise ValueError("the bank has no calibration; run PrefilterScorer.fit or calibrate first")
        self.bank = bank

    @property
    def threshold(self) -> float:
        return self.bank.calibration.threshold

    @classmethod
    def fit(
        cls,
        normal_frames: Sequence[Frame],
        config: PatchCoreConfig | None = None,
        validation_frames: Sequence[Frame] | None = None,
        target_routing_rate: float = 0.05,
        folds: int = 5,
        product: str = "",
        camera: str | None = None,
        extractor: FeatureExtractor | None = None,
        defect_frames: Sequence[Frame] | None = None,
    ) -> "PrefilterScorer":
        """Fit a bank on ``normal_frames`` and calibrate its threshold.

        With ``validation_frames`` (normal, unseen) the threshold comes from their
        scores; otherwise from k-fold held-out scores of the fit frames. ``defect_frames``
        (labelled defect examples, optional) decide ``position_norm='auto'``.
        """
        bank = PatchCoreBank(config, extractor, product, camera)
        embedded = bank.embed(bank.set_canvas_from(normal_frames), "embed normal frames")
        validation = bank.embed(validation_frames) if validation_frames else None
        defects = bank.embed(defect_frames) if defect_frames else None
        return cls.fit_embedded(bank, embedded, validation, target_routing_rate, folds, defects)

    @classmethod
    def fit_embedded(
        cls,
        bank: PatchCoreBank,
        embedded: Embedded,
        validation: Embedded | None = None,
        target_routing_rate: float = 0.05,
        folds: int = 5,
        defects: Embedded | None = None,
        heldout: np.ndarray | None = None,
    ) -> "PrefilterScorer":
        """As :meth:`fit`, from frames already embedded with ``bank``'s canvas.

        Unless ``position_norm`` is off, k-fold held-out grids of ``embedded`` give the
        :class:`CellLevels`; under 'auto' they are kept only if the labelled ``defects`` are told
        from held-out normals at least as well with them (AUROC) as without. The threshold is then
        set on held-out normals scored the way the bank will score: ``validation`` when given,
        else the k-fold grids (divided by leave-one-out levels when the bank keeps them).
        ``heldout``: those grids if the caller already has them
        (``heldout_normal_grids(bank.fresh_fit, embedded, folds, bank.config.seed)``).
        """
        config = bank.config
        fitted = bank.fresh_fit(embedded)
        has_validation = validation is not None and len(validation) > 0
        if heldout is None and (config.position_norm != "off" or not has_validation):
            heldout = heldout_normal_grids(bank.fresh_fit, embedded, folds, config.seed)
        if has_validation:
            normal_grids, normal_valid = fitted.score_embedded(validation).grids, validation.valid
            method = "validation/good"
        else:
            normal_grids, normal_valid = heldout, embedded.valid
            method = f"{min(folds, len(embedded))}-fold train/good"
        normal_scores = frame_maxima(normal_grids, normal_valid)
        if config.position_norm != "off":
            levels = CellLevels.from_heldout(heldout, embedded.valid, config.position_norm_floor)
            if has_validation:
                normalised = levels.normalise(normal_grids)
            else:
                normalised = CellLevels.leave_one_out(heldout, embedded.valid, config.position_norm_floor)
            normalised_scores = frame_maxima(normalised, normal_valid)
            report = {"mode": config.position_norm, "used": True, "floor": config.position_norm_floor,
                      "heldout_frames": len(embedded), "folds": min(folds, len(embedded))}
            if config.position_norm == "auto" and defects is not None and len(defects):
                raw = fitted.score_embedded(defects)
                report.update(choose_position_norm(
                    raw.scores, frame_maxima(levels.normalise(raw.grids), defects.valid),
                    normal_scores, normalised_scores))
            if report["used"]:
                fitted.cell_levels, normal_scores = levels, normalised_scores
                method += ", cell levels" + ("" if has_validation else " leave-one-out")
            fitted.position_norm_report = report
        fitted.calibration = Calibration.from_normal_scores(normal_scores, target_routing_rate, method)
        return cls(fitted)

    def route(self, frames: Sequence[Frame], with_grids: bool = False) -> list[Verdict]:
        result = self.bank.score(frames)
        t = self.threshold
        return [
            Verdict(float(s), t, bool(s > t), result.grids[i] if with_grids else None)
            for i, s in enumerate(result.scores)
        ]

    def save(self, directory: str | Path) -> Path:
        return self.bank.save(directory)

    @classmethod
    def load(cls, directory: str | Path, extractor: FeatureExtractor | None = None) -> "PrefilterScorer":
        return cls(PatchCoreBank.load(directory, extractor))


#: folders of a category that hold labelled defect examples, ``<split>/<defect type>/*.png``
#: (``defect_examples`` for a plant's own library; ``train_qa`` in the synthetic data)
DEFECT_EXAMPLE_SPLITS = ("defect_examples", "train_qa")


def labelled_defect_examples(category_dir: str | Path) -> list[tuple[Path, str]]:
    """(image path, defect type) of every labelled defect example in a category folder."""
    from judo_model.data.mvtec import GOOD, image_files

    found = []
    for split in DEFECT_EXAMPLE_SPLITS:
        folder = Path(category_dir) / split
        if not folder.is_dir():
            continue
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != GOOD):
            found += [(path, label_dir.name) for path in image_files(label_dir)]
    return found


def fit_bank_from_folder(
    data: str | Path,
    category: str | None,
    out: str | Path,
    config: PatchCoreConfig | None = None,
    target_routing_rate: float = 0.05,
    folds: int = 5,
    camera: str | None = None,
) -> PrefilterScorer:
    """Fit, calibrate and save one product's bank plus its reference index from an MVTec-style folder.

    Uses ``train/good`` for the bank and the references, ``validation/good`` (if any) for the
    threshold, and labelled defect examples (:data:`DEFECT_EXAMPLE_SPLITS`, if any, labelled by the
    names answers use: :func:`judo_model.data.knowledge.defect_title`) for the reference index's
    defect exemplars and for ``position_norm='auto'``; writes ``out/`` and ``out/references/``. One
    backbone pass serves bank and references.
    """
    from actors.references import REFERENCES_SUBDIR, DefectExemplars, ReferenceIndex
    from judo_model.data.knowledge import defect_title
    from judo_model.data.mvtec import discover_categories
    from judo_model.imaging import load_image

    cats = discover_categories(data, [category] if category else None)
    if len(cats) != 1:
        raise ValueError(f"{data} holds {len(cats)} categories; name one")
    cat = cats[0]
    train = cat.split("train", "good")
    validation = cat.split("validation", "good")
    bank = PatchCoreBank(config, product=cat.name, camera=camera)
    embedded = bank.embed(bank.set_canvas_from([s.load_image() for s in train]), "embed train/good")
    val = bank.embed([s.load_image() for s in validation]) if validation else None
    examples = labelled_defect_examples(cat.root)
    defect_frames = [load_image(path) for path, _ in examples]
    defects = bank.embed(defect_frames) if examples else None
    scorer = PrefilterScorer.fit_embedded(bank, embedded, val, target_routing_rate, folds, defects)
    out = scorer.save(out)
    references = ReferenceIndex.from_embedded(
        cat.name, scorer.bank.config, embedded, [s.sample_id for s in train], [str(s.path) for s in train],
        scorer.bank.embedder.extractor,
    )
    if examples:
        scored = scorer.bank.score_embedded(defects)
        references.defects = DefectExemplars.build(
            cat.name, defect_frames, [scored.anomaly_map(i) for i in range(len(defect_frames))],
            [defect_title(cat.name, label) for _, label in examples],
            [str(path.relative_to(cat.root)) for path, _ in examples])
    references.save(out / REFERENCES_SUBDIR)
    return scorer


# --- Ray actor ------------------------------------------------------------------------


class ProductService:
    """Base of the services the Ray actors run: one saved object per product, one shared backbone.

    Plain Python so it can be tested without Ray. Subclasses say how to load one
    product's object and where its feature extractor is.
    """

    what = "model"

    def __init__(
        self,
        directories: dict[str, str],
        threads: int = 2,
        service_name: str | None = None,
        trace_file: str | None = None,
    ):
        if service_name or trace_file:
            from cluster.telemetry import setup_tracing

            setup_tracing(service_name, trace_file=trace_file)
        self.items: dict[str, object] = {}
        extractor = None
        for product, directory in directories.items():
            item = self._load(directory, extractor)
            extractor = self._extractor_of(item)
            self.items[product] = item
        # after loading: each bank's backbone sets its own fitting-time thread count, the service's wins
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)

    def _load(self, directory: str, extractor: FeatureExtractor | None):
        raise NotImplementedError

    def _extractor_of(self, item) -> FeatureExtractor:
        raise NotImplementedError

    def products(self) -> list[str]:
        return sorted(self.items)

    def get(self, product: str):
        if product not in self.items:
            raise KeyError(f"no {self.what} for product {product!r}; have {self.products()}")
        return self.items[product]


class PrefilterService(ProductService):
    """Routes frames (encoded bytes from Kafka, or arrays) with each product's calibrated bank."""

    what = "prefilter bank"

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


def _record_spans(product: str, results: list[dict], carriers: Sequence[dict | None],
                  frame_ids: Sequence[str] | None, start: int, end: int) -> None:
    """One ``prefilter`` span per frame in its own trace, timed by the batch it was scored in."""
    from cluster.telemetry import context_from_carrier, tracer

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
    """``ray.remote`` class of :class:`PrefilterService` (Ray imported only here)."""
    import ray

    options = {"num_cpus": 1, **ray_options}
    return ray.remote(**options)(PrefilterService)
