"""``judo prefilter fit|eval|score`` on a small generated MVTec-style folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from judo_model.imaging import encode_png
from judo_model.prefilter.cli import register
from judo_model.prefilter.evaluation import METRICS
from judo_model.prefilter.references import REFERENCES_SUBDIR
from judo_model.prefilter.scorer import PrefilterScorer


def _texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Regular stripes with a random phase and mild noise (a woven or brushed surface)."""
    x = np.arange(size)[None, :] + rng.uniform(0, 12)
    noise = gaussian_filter(rng.normal(0, 1, (size, size)), 1.0)
    return np.clip(128 + 50 * np.sin(2 * np.pi * x / 12) + 8 * noise, 0, 255).astype(np.uint8)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Grayscale texture product: train/good, validation/good, test/good and test/spot with masks."""
    root = tmp_path_factory.mktemp("mvtec") / "Toy" / "texture"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("validation", 4)):
        for i in range(n):
            _write(root / split / "good" / f"{i:03d}.png", _texture(rng))
    for i in range(4):
        _write(root / "test" / "good" / f"{i:03d}.png", _texture(rng))
        image, mask = _texture(rng), np.zeros((96, 96), np.uint8)
        y, x = rng.integers(20, 60, 2)
        image[y : y + 16, x : x + 16] = 20
        mask[y : y + 16, x : x + 16] = 255
        _write(root / "test" / "spot" / f"{i:03d}.png", image)
        _write(root / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root.parent


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="judo")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_fit_writes_a_calibrated_bank_and_references(dataset, tmp_path):
    out = tmp_path / "bank"
    assert _run(["prefilter", "fit", "--data", str(dataset), "--category", "texture", "--out", str(out),
                 "--size", "96", "--target-routing-rate", "0.1"]) == 0
    scorer = PrefilterScorer.load(out)
    assert scorer.bank.product == "texture" and scorer.bank.config.preprocess.size == 96
    assert scorer.bank.calibration.method == "validation/good, cell levels" and scorer.bank.calibration.n_normal == 4
    assert scorer.bank.position_norm_report["mode"] == "auto" and scorer.bank.cell_levels is not None
    assert (out / REFERENCES_SUBDIR / "references.json").is_file()
    assert _run(["prefilter", "score", "--bank", str(out), "--k", "2",
                 str(dataset / "texture" / "test" / "spot" / "000.png")]) == 0


def test_eval_writes_metrics_json_with_mean(dataset, tmp_path):
    out = tmp_path / "eval.json"
    assert _run(["prefilter", "eval", "--data", str(dataset), "--json", str(out), "--size", "96",
                 "--speed-frames", "4"]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"texture", "mean"}
    for entry in result.values():
        assert set(entry) == set(METRICS)
    texture = result["texture"]
    assert texture["image_auroc"] >= 0.9 and texture["pixel_auroc"] >= 0.9
    assert 0.0 <= texture["recall"] <= 1.0 and 0.0 <= texture["routing_rate"] <= 1.0
    assert texture["fps_batch1"] > 0 and texture["fps_batch16"] > 0 and texture["peak_mem_mb"] > 0
