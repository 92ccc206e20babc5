"""Prefilter core on real images: detection, persistence, updates, calibration, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from judo_model.data.mvtec import discover_categories
from judo_model.imaging import ImageDecodeError, encode_png
from judo_model.metrics import auroc
from judo_model.prefilter.bank_format import BankFormatError
from judo_model.prefilter.calibration import Calibration
from judo_model.prefilter.features import (
    InvalidFrameError,
    PreprocessConfig,
    Preprocessor,
    as_rgb_frame,
    choose_canvas,
)
from judo_model.prefilter.patchcore import PatchCoreBank, kcenter_greedy
from judo_model.prefilter.scorer import PrefilterScorer
from tests.real_data import REAL, needs_real

pytestmark = needs_real


@pytest.fixture(scope="module")
def bottle():
    (cat,) = discover_categories(REAL, ["bottle"])
    train = [s.load_image() for s in cat.split("train", "good")]
    test_samples = cat.split("test")
    test = [s.load_image() for s in test_samples]
    labels = np.array([s.is_anomalous for s in test_samples])
    return train, test, labels


@pytest.fixture(scope="module")
def scorer(bottle):
    train, _, _ = bottle
    return PrefilterScorer.fit(train, product="bottle", target_routing_rate=0.05, folds=5)


def test_defective_frames_score_higher_than_good_ones(scorer, bottle):
    _, test, labels = bottle
    scores = scorer.bank.score(test).scores
    assert auroc(labels, scores) >= 0.8
    assert scores[labels].mean() > scores[~labels].mean()


def test_calibration_comes_from_held_out_normals(scorer):
    cal = scorer.bank.calibration
    assert cal.method == "5-fold train/good, cell levels leave-one-out" and cal.n_normal == 10
    assert cal.threshold > max(cal.normal_scores) * 0.9
    verdicts = scorer.route([np.zeros((300, 300, 3), np.uint8)])
    assert verdicts[0].suspect and verdicts[0].score > scorer.threshold


def test_saved_and_reloaded_bank_gives_identical_scores(scorer, bottle, tmp_path):
    _, test, _ = bottle
    scorer.save(tmp_path / "bank")
    for name in ("bank.json", "memory.npy", "index.faiss"):
        assert (tmp_path / "bank" / name).is_file()
    loaded = PrefilterScorer.load(tmp_path / "bank", scorer.bank.embedder.extractor)
    np.testing.assert_array_equal(loaded.bank.score(test[:6]).scores, scorer.bank.score(test[:6]).scores)
    assert loaded.threshold == scorer.threshold
    assert loaded.bank.config == scorer.bank.config
    assert loaded.bank.revision == scorer.bank.revision


def test_anomaly_map_has_image_size_and_peaks_on_defect(scorer, bottle):
    _, test, labels = bottle
    result = scorer.bank.score(test[:1])
    amap = result.anomaly_map(0)
    assert amap.shape == test[0].shape[:2] and np.isfinite(amap).all()
    assert labels[0] and amap.max() > scorer.threshold * 0.9


def test_update_adds_only_uncovered_patches(bottle):
    train, test, labels = bottle
    bank = PatchCoreBank(product="bottle").fit(train[:6], progress=False)
    size, revision = len(bank.memory), bank.revision
    assert bank.update(train[:2]) == 0  # already covered: nothing added
    new_normal = train[6:]
    before = bank.score(new_normal).scores
    added = bank.update(new_normal)
    assert added > 0 and len(bank.memory) == size + added and bank.index.ntotal == len(bank.memory)
    assert bank.revision == revision + 2 and bank.n_images == 6 + 2 + len(new_normal)
    after = bank.score(new_normal).scores
    assert (after <= before + 1e-4).all() and after.mean() < before.mean()


def test_kcenter_greedy_covers_better_than_random():
    rng = np.random.default_rng(0)
    common = rng.normal(0, 1, (3000, 32))
    rare = rng.normal(8, 1, (30, 32))  # a rare normal pattern
    x = np.concatenate([common, rare]).astype(np.float32)
    idx, radius = kcenter_greedy(x, 100, projection_dim=32, seed=0)
    assert len(set(idx.tolist())) == 100 and (idx >= 3000).any()

    def cover(sel):
        d = ((x[:, None, :] - x[sel][None]) ** 2).sum(-1)
        return np.sqrt(d.min(1)).max()

    assert cover(idx) == pytest.approx(radius, rel=1e-3)
    assert cover(idx) < cover(rng.choice(len(x), 100, replace=False))


def test_calibration_threshold_widens_with_fewer_samples():
    rng = np.random.default_rng(1)
    many = rng.lognormal(1.0, 0.1, 2000)
    cal = Calibration.from_normal_scores(many, 0.05, "test")
    assert np.mean(many > cal.threshold) == pytest.approx(0.05, abs=0.015)
    few = Calibration.from_normal_scores(many[:5], 0.05, "test")
    z_few = (np.log(few.threshold) - np.log(many[:5]).mean()) / np.log(many[:5]).std(ddof=1)
    assert z_few > 1.645
    with pytest.raises(ValueError, match="at least 2"):
        Calibration.from_normal_scores([1.0], 0.05, "test")


def test_aspect_aware_canvas_and_letterbox():
    cfg = PreprocessConfig(size=224, mode="aspect")
    assert choose_canvas([(1250, 500), (1270, 500)], cfg) == (576, 224)
    assert choose_canvas([(600, 800)], cfg) == (224, 288)
    assert choose_canvas([(900, 900)], cfg) == (224, 224)
    pre = Preprocessor(cfg.model_copy(update={"canvas": (576, 224)}))
    batch, placements = pre([np.full((1250, 500), 200, np.uint8), np.full((300, 400, 3), 50, np.uint8)])
    assert batch.shape == (2, 3, 576, 224)
    tall, wide = placements
    assert (tall.height, tall.width) == (560, 224) and tall.top == 8
    assert wide.width == 224 and wide.height == 168 and (wide.source_height, wide.source_width) == (300, 400)
    assert float(batch[1, :, 0, 0].abs().max()) < 0.02  # padding is the mean colour (zero)


def test_bad_frames_raise_readable_errors(scorer):
    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        scorer.route([png[:20]])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        scorer.route([b"not an image at all"])
    with pytest.raises(ImageDecodeError, match="empty"):
        scorer.route([b""])
    with pytest.raises(InvalidFrameError, match="zero size"):
        scorer.route([np.zeros((0, 10, 3), np.uint8)])
    with pytest.raises(InvalidFrameError, match="4 channels"):
        scorer.route([np.zeros((10, 10, 4), np.uint8)])
    with pytest.raises(InvalidFrameError, match=r"shape \(10,\)"):
        as_rgb_frame(np.zeros(10, np.uint8))
    with pytest.raises(InvalidFrameError, match="numpy array"):
        as_rgb_frame("frame.png")
    assert issubclass(InvalidFrameError, ValueError) and issubclass(ImageDecodeError, ValueError)
    assert scorer.route([png])[0].score > 0  # a valid tiny frame still scores


def test_loading_a_non_bank_is_a_clear_error(tmp_path):
    with pytest.raises(BankFormatError, match="missing bank.json"):
        PatchCoreBank.load(tmp_path)
