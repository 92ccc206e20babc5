"""Anomaly-map normalisation and the routing threshold: cell levels and calibration.

Both are set on normal frames the bank never saw (k-fold held-out or a validation folder), so
they describe what a new normal frame looks like rather than the bank's own near-zero distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
from scipy import stats
from tqdm import tqdm

from judo_model.metrics import auroc


class EmbeddedFrames(Protocol):
    """What held-out scoring needs of embedded frames (:class:`~judo_model.prefilter.patchcore.Embedded`)."""

    valid: np.ndarray

    def __len__(self) -> int: ...

    def subset(self, idx: Sequence[int]) -> "EmbeddedFrames": ...


class PatchScores(Protocol):
    """Image scores and patch-score grids of embedded frames (a ``ScoreResult``)."""

    scores: np.ndarray
    grids: np.ndarray


class SupportsScoreEmbedded(Protocol):
    """A fitted model that scores embedded frames: a bank, or an evaluation baseline."""

    def score_embedded(self, embedded: EmbeddedFrames) -> PatchScores: ...


@dataclass
class Calibration:
    """Routing threshold chosen on held-out normal frames, with how it was chosen."""

    threshold: float
    target_routing_rate: float
    method: str
    n_normal: int
    normal_scores: list[float] = field(default_factory=list)
    #: how the threshold was chosen (:class:`OperatingPoint` as a dict); None in banks saved before it existed
    operating_point: dict | None = None

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

    def routed_share(self, threshold: float) -> float:
        """Expected share of normal frames above ``threshold``: the same log-Gaussian prediction model
        the budget threshold comes from (at the budget threshold it is the target routing rate)."""
        logs = np.log(np.maximum(np.asarray(self.normal_scores, np.float64), 1e-12))
        n = logs.size
        spread = logs.std(ddof=1) * math.sqrt(1.0 + 1.0 / n)
        if not spread > 0:
            return float(np.mean(logs > math.log(max(threshold, 1e-12))))
        return float(stats.t.sf((math.log(max(threshold, 1e-12)) - logs.mean()) / spread, df=n - 1))

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "target_routing_rate": self.target_routing_rate,
            "method": self.method,
            "n_normal": self.n_normal,
            "normal_scores": self.normal_scores,
            "operating_point": self.operating_point,
        }


#: labelled defect examples a recall target needs; with fewer the routing budget sets the threshold
MIN_RECALL_EXAMPLES = 5


@dataclass
class OperatingPoint:
    """Where a product's threshold sits and what it buys: recall-first where labelled defects exist.

    ``mode`` is ``recall`` (the threshold is the highest that keeps ``target_recall`` of the labelled
    defect examples above it, cross-validated, and never above the budget's threshold) or ``budget``
    (the threshold routes ``routing_budget`` of normal frames). ``expected_recall``: the share of
    labelled defects above the threshold (held-out folds in ``recall`` mode; None without examples);
    ``routed_share``: the expected share of normal frames routed to JUDO.
    """

    mode: str
    threshold: float
    routing_budget: float
    routed_share: float
    target_recall: float | None = None
    expected_recall: float | None = None
    defect_examples: int = 0
    folds: int | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {"mode": self.mode, "threshold": self.threshold, "routing_budget": self.routing_budget,
                "routed_share": self.routed_share, "target_recall": self.target_recall,
                "expected_recall": self.expected_recall, "defect_examples": self.defect_examples,
                "folds": self.folds, "note": self.note}


def recall_threshold(defect_scores: np.ndarray, target_recall: float) -> float:
    """The highest threshold that keeps at least ``target_recall`` of ``defect_scores`` strictly
    above it (halfway to the next lower score, so it does not sit on a score)."""
    s = np.sort(np.asarray(defect_scores, np.float64))
    keep = min(max(math.ceil(target_recall * len(s) - 1e-9), 1), len(s))
    lowest_kept = s[len(s) - keep]
    below = s[: len(s) - keep]
    return float((below[-1] + lowest_kept) / 2 if below.size else lowest_kept * 0.999)


def choose_operating_point(calibration: Calibration, defect_scores: Sequence[float] | None,
                           target_recall: float | None, folds: int = 5, seed: int = 0) -> OperatingPoint:
    """The operating point from the budget ``calibration`` and the labelled defects' scores.

    With ``target_recall`` and at least :data:`MIN_RECALL_EXAMPLES` defect scores: the recall
    threshold chosen on k-1 folds of the defects is scored on the held-out fold (that is the expected
    recall), and the threshold kept is the one chosen on all of them, capped at the budget threshold
    (routing more buys recall; routing less than the budget is never chosen). Else the budget's.
    """
    budget = calibration.threshold
    scores = np.asarray(defect_scores if defect_scores is not None else [], np.float64)
    if target_recall is None or len(scores) < MIN_RECALL_EXAMPLES:
        note = ("" if target_recall is None or not len(scores) else
                f"{len(scores)} labelled defect examples, fewer than {MIN_RECALL_EXAMPLES}: the budget decides")
        recall = float(np.mean(scores > budget)) if len(scores) else None
        return OperatingPoint("budget", budget, calibration.target_routing_rate, calibration.routed_share(budget),
                              target_recall, recall, len(scores), None, note)
    k = min(folds, len(scores))
    order = np.random.default_rng(seed).permutation(len(scores))
    hits = 0
    for held in np.array_split(order, k):
        chosen = min(recall_threshold(scores[np.setdiff1d(order, held)], target_recall), budget)
        hits += int(np.sum(scores[held] > chosen))
    threshold = min(recall_threshold(scores, target_recall), budget)
    note = "the budget threshold already meets the recall target" if threshold == budget else ""
    return OperatingPoint("recall", threshold, calibration.target_routing_rate, calibration.routed_share(threshold),
                          target_recall, hits / len(scores), len(scores), k, note)


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


def heldout_normal_grids(
    make_model: Callable[[EmbeddedFrames], SupportsScoreEmbedded],
    embedded: EmbeddedFrames,
    folds: int = 5,
    seed: int = 0,
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

    def separation(defects: np.ndarray, normals: np.ndarray) -> float:
        labels = np.r_[np.ones(len(defects), bool), np.zeros(len(normals), bool)]
        return float(auroc(labels, np.r_[defects, normals]))

    without, with_levels = separation(defects_raw, normals_raw), separation(defects_normalised, normals_normalised)
    return {"used": with_levels >= without, "defect_examples": len(defects_raw), "normal_frames": len(normals_raw),
            "auroc_without": round(without, 4), "auroc_with": round(with_levels, 4)}
