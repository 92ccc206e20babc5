"""Every image and mask of the real evaluation set loads through the MVTec loader."""

from __future__ import annotations

from judo_model.data.mvtec import discover_categories
from tests.real_data import REAL, needs_real

pytestmark = needs_real


def test_all_real_data_loads():
    categories = discover_categories(REAL)
    assert {(c.dataset, c.name) for c in categories} >= {("MTD", "magnetic_tile"), ("KolektorSDD", "commutator"),
                                                        ("MVTec3D-AD", "tire"), ("MVTecAD", "bottle")}
    loaded = 0
    for category in categories:
        samples = category.samples()
        assert any(s.split == "train" for s in samples) and any(s.is_anomalous for s in samples)
        for sample in samples:
            image = sample.load_image()
            assert image.ndim == 3 and image.shape[2] == 3 and image.size > 0
            mask = sample.load_mask()
            if mask is not None:
                assert mask.shape == image.shape[:2]
                assert mask.any() == sample.is_anomalous
            loaded += 1
    files = [p for p in REAL.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".bmp"} and "_mask" not in p.stem]
    assert loaded == len(files)
