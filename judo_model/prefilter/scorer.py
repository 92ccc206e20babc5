"""A calibrated bank that decides which frames go to the reasoner, and how it is fitted.

The threshold is set on normal frames the bank never saw, for a target routing (false-positive)
rate; :class:`PrefilterScorer` is what the prefilter service loads per product.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from judo_model.prefilter.calibration import (
    Calibration,
    CellLevels,
    SupportsScoreEmbedded,
    choose_operating_point,
    choose_position_norm,
    frame_maxima,
    heldout_normal_grids,
)
from judo_model.prefilter.features import FeatureExtractor, Frame
from judo_model.prefilter.patchcore import Embedded, PatchCoreBank, PatchCoreConfig


def fit_calibrated(
    make_model: Callable[[Embedded], SupportsScoreEmbedded],
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
        target_recall: float | None = None,
    ) -> "PrefilterScorer":
        """As :meth:`fit`, from frames already embedded with ``bank``'s canvas.

        Unless ``position_norm`` is off, k-fold held-out grids of ``embedded`` give the
        :class:`CellLevels`; under 'auto' they are kept only if the labelled ``defects`` are told
        from held-out normals at least as well with them (AUROC) as without. The threshold is then
        set on held-out normals scored the way the bank will score: ``validation`` when given,
        else the k-fold grids (divided by leave-one-out levels when the bank keeps them).
        ``heldout``: those grids if the caller already has them
        (``heldout_normal_grids(bank.fresh_fit, embedded, folds, bank.config.seed)``).
        ``target_recall`` (recall-first routing): where ``defects`` holds enough labelled examples, the
        threshold is lowered until that share of them, cross-validated, is routed
        (:func:`~judo_model.prefilter.calibration.choose_operating_point`); otherwise the routing
        budget ``target_routing_rate`` sets it. The chosen point is saved in the calibration.
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
        calibration = Calibration.from_normal_scores(normal_scores, target_routing_rate, method)
        defect_scores = fitted.score_embedded(defects).scores if defects is not None and len(defects) else None
        point = choose_operating_point(calibration, defect_scores, target_recall, folds, config.seed)
        calibration.threshold, calibration.operating_point = point.threshold, point.to_dict()
        fitted.calibration = calibration
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
