"""Cell levels: patch distances divided by what held-out normal frames show at each place.

A fixed camera sees the same busy place (here a stripe of fresh noise) on every normal frame, far
from every bank patch; a faint defect elsewhere only stands out once each cell is compared with its
own normal level. Real backbone, real bank, frames drawn here.
"""

from __future__ import annotations

import numpy as np
import pytest

from judo_model.metrics import auroc
from judo_model.prefilter.bank_format import CELL_LEVELS_FILE, BankFormatError
from judo_model.prefilter.calibration import CellLevels, choose_position_norm
from judo_model.prefilter.features import BackboneConfig, PreprocessConfig
from judo_model.prefilter.patchcore import PatchCoreBank, PatchCoreConfig
from judo_model.prefilter.scorer import PrefilterScorer

SIZE = 96


def frame(rng: np.random.Generator, defect: bool = False) -> np.ndarray:
    """Flat grey with sensor noise; columns 40-56 hold new coarse noise on every frame (a busy
    fixture); a defect is a faint bright square away from that stripe."""
    image = np.repeat(120 + rng.normal(0, 2, (SIZE, SIZE, 1)), 3, axis=2)
    image[:, 40:56] = np.kron(rng.integers(0, 256, (SIZE // 4, 4, 1)), np.ones((4, 4, 3)))
    if defect:
        top, left = rng.integers(8, SIZE - 24), rng.choice([rng.integers(4, 20), rng.integers(64, 76)])
        image[top : top + 10, left : left + 10] += 8
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    return ([frame(rng) for _ in range(16)], [frame(rng) for _ in range(8)],
            [frame(rng, True) for _ in range(8)], [frame(rng) for _ in range(8)], [frame(rng, True) for _ in range(8)])


def config(mode: str) -> PatchCoreConfig:
    return PatchCoreConfig(preprocess=PreprocessConfig(size=SIZE), backbone=BackboneConfig(threads=1),
                           coreset_min=200, position_norm=mode)


@pytest.fixture(scope="module")
def scorers(frames):
    train, validation, examples, _, _ = frames
    return {mode: PrefilterScorer.fit(train, config(mode), validation_frames=validation, folds=4,
                                      defect_frames=examples)
            for mode in ("off", "on", "auto")}


def test_levels_separate_a_faint_defect_from_a_busy_fixture(scorers, frames):
    *_, test_good, test_defect = frames
    labels = np.r_[np.zeros(len(test_good), bool), np.ones(len(test_defect), bool)]

    def separation(mode: str) -> float:
        return auroc(labels, scorers[mode].bank.score(test_good + test_defect).scores)

    assert scorers["off"].bank.cell_levels is None and scorers["on"].bank.cell_levels is not None
    assert separation("off") < 0.8, "the stripe's normal distances hide the faint squares"
    assert separation("on") >= 0.95
    levels = scorers["on"].bank.cell_levels.levels
    assert 4 <= int(levels.mean(axis=0).argmax()) <= 7, "the stride-8 cells over the stripe hold the highest levels"


def test_auto_keeps_levels_only_when_the_labelled_examples_say_so(scorers):
    report = scorers["auto"].bank.position_norm_report
    assert report["mode"] == "auto" and report["defect_examples"] == 8 and report["normal_frames"] == 8
    assert report["used"] == (report["auroc_with"] >= report["auroc_without"])
    assert report["used"] and (scorers["auto"].bank.cell_levels is not None)
    assert "cell levels" in scorers["auto"].bank.calibration.method
    assert scorers["off"].bank.position_norm_report is None


def test_auto_drops_levels_that_blur_the_labelled_examples():
    normals = np.array([1.0, 1.1, 1.2, 0.9])
    choice = choose_position_norm(np.array([2.0, 2.2]), np.array([1.0, 1.05]), normals, normals)
    assert choice["used"] is False and choice["auroc_without"] == 1.0 and choice["auroc_with"] < 1.0
    tie = choose_position_norm(np.array([2.0]), np.array([2.0]), normals, normals)
    assert tie["used"] is True, "a tie keeps the levels"


def test_threshold_is_set_on_normals_scored_the_way_the_bank_scores(scorers, frames):
    _, validation, *_ = frames
    for scorer in scorers.values():
        scores = scorer.bank.score(validation).scores
        np.testing.assert_allclose(sorted(scorer.bank.calibration.normal_scores), sorted(scores), rtol=1e-5)


def test_leave_one_out_levels_match_levels_fitted_without_the_frame():
    rng = np.random.default_rng(0)
    grids = rng.gamma(2.0, 1.0, (6, 4, 5)).astype(np.float32)
    valid = rng.random((6, 4, 5)) > 0.2
    normalised = CellLevels.leave_one_out(grids, valid, floor=0.2)
    for i in range(len(grids)):
        others = np.arange(len(grids)) != i
        levels = CellLevels.from_heldout(grids[others], valid[others], floor=0.2)
        np.testing.assert_allclose(normalised[i], grids[i] / levels.levels, rtol=1e-5)
    with pytest.raises(ValueError, match="cell levels are"):
        CellLevels.from_heldout(grids, valid, 0.2).normalise(np.zeros((1, 3, 3), np.float32))


def test_k_fold_calibration_uses_leave_one_out_levels(frames):
    train, *_ = frames
    scorer = PrefilterScorer.fit(train, config("on"), folds=4)
    assert scorer.bank.calibration.method == "4-fold train/good, cell levels leave-one-out"
    assert scorer.bank.calibration.n_normal == len(train)


def test_levels_are_saved_and_required_on_load(scorers, frames, tmp_path):
    *_, test_good, test_defect = frames
    scorer = scorers["on"]
    directory = scorer.save(tmp_path / "bank")
    assert (directory / CELL_LEVELS_FILE).is_file()
    loaded = PrefilterScorer.load(directory, scorer.bank.embedder.extractor)
    np.testing.assert_array_equal(loaded.bank.cell_levels.levels, scorer.bank.cell_levels.levels)
    np.testing.assert_array_equal(loaded.bank.score(test_defect).scores, scorer.bank.score(test_defect).scores)
    assert loaded.bank.position_norm_report == scorer.bank.position_norm_report
    reused = scorer.save(tmp_path / "reused")
    scorers["off"].save(reused)  # a raw bank saved over one with levels leaves no stale levels behind
    assert not (reused / CELL_LEVELS_FILE).exists()
    (directory / CELL_LEVELS_FILE).unlink()
    with pytest.raises(BankFormatError, match="cell_levels.npy is missing"):
        PatchCoreBank.load(directory)
