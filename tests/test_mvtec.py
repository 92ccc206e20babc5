"""The MVTec-style loader reads every real category in the real data folder ($JUDO_REAL_DATA)."""

from __future__ import annotations

import numpy as np
import pytest

from judo_model.data.mvtec import (
    MVTecLayoutError,
    category_samples,
    discover_categories,
    find_mask,
    iter_samples,
)
from judo_model.imaging import encode_png
from tests.real_data import REAL, needs_real

EXPECTED = {
    # name: (dataset, train/good, test/good, defective, defective with mask)
    "magnetic_tile": ("MTD", 60, 30, 60, 60),
    "commutator": ("KolektorSDD", 12, 10, 10, 10),
    "tire": ("MVTec3D-AD", 10, 10, 12, 12),
    "bottle": ("MVTecAD", 10, 10, 10, 0),
}


@needs_real
def test_discovers_all_real_categories_from_the_top_folder():
    found = {c.name: c.dataset for c in discover_categories(REAL)}
    assert found == {name: spec[0] for name, spec in EXPECTED.items()}


@needs_real
def test_root_may_be_dataset_or_category_folder():
    assert [c.name for c in discover_categories(REAL / "MTD")] == ["magnetic_tile"]
    cats = discover_categories(REAL / "KolektorSDD" / "commutator")
    assert [(c.name, c.dataset) for c in cats] == [("commutator", "KolektorSDD")]
    assert [c.name for c in discover_categories(REAL, ["MVTecAD/bottle"])] == ["bottle"]
    with pytest.raises(MVTecLayoutError, match="unknown categories"):
        discover_categories(REAL, ["no_such_product"])


@needs_real
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_labels_and_masks(name):
    dataset, n_train, n_test_good, n_defect, n_masked = EXPECTED[name]
    (category,) = discover_categories(REAL, [name])
    samples = category.samples()
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    assert len(train) == n_train and all(s.label == "good" and not s.is_anomalous for s in train)
    assert sum(not s.is_anomalous for s in test) == n_test_good
    defective = [s for s in test if s.is_anomalous]
    assert len(defective) == n_defect
    assert all(s.label != "good" and s.category == name and s.dataset == dataset for s in defective)
    assert sum(s.mask_path is not None for s in defective) == n_masked
    assert all(s.mask_path is None for s in samples if not s.is_anomalous)
    assert len({s.sample_id for s in samples}) == len(samples)


@needs_real
def test_every_real_image_decodes_and_masks_match_image_size():
    samples = iter_samples(REAL)
    assert len(samples) == sum(spec[1] + spec[2] + spec[3] for spec in EXPECTED.values())
    sizes = {}
    for sample in samples:
        image = sample.load_image()
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        sizes.setdefault(sample.category, set()).add(image.shape[:2])
        mask = sample.load_mask()
        if sample.is_anomalous and sample.category == "bottle":
            assert mask is None
            continue
        assert mask is not None and mask.dtype == bool and mask.shape == image.shape[:2]
        assert mask.any() == sample.is_anomalous
    assert len(sizes["magnetic_tile"]) > 10  # crops of many different sizes
    assert len(sizes["commutator"]) > 1
    assert sizes["tire"] == {(800, 600)} and sizes["bottle"] == {(900, 900)}


def test_synthetic_layout_with_validation_and_any_mask_extension(tmp_path):
    cat = tmp_path / "Synthetic" / "widget"
    img = encode_png(np.full((8, 12, 3), 100, np.uint8))
    for rel in ("train/good/a.png", "validation/good/v.png", "test/good/b.png", "test/dent/c.png"):
        (cat / rel).parent.mkdir(parents=True, exist_ok=True)
        (cat / rel).write_bytes(img)
    (cat / "ground_truth/dent").mkdir(parents=True)
    (cat / "ground_truth/dent/c_mask.bmp").write_bytes(img)
    samples = category_samples(cat)
    assert [(s.split, s.label) for s in samples] == [
        ("train", "good"), ("validation", "good"), ("test", "dent"), ("test", "good")
    ]
    assert find_mask(cat, "dent", "c") == cat / "ground_truth/dent/c_mask.bmp"
    (category,) = discover_categories(tmp_path)
    assert category.has_validation and category.dataset == "Synthetic"
    assert [s.path.name for s in category.split("validation", "good")] == ["v.png"]


def test_not_a_dataset_is_a_readable_error(tmp_path):
    with pytest.raises(MVTecLayoutError, match="no MVTec-style category"):
        discover_categories(tmp_path)
    with pytest.raises(MVTecLayoutError, match="not a directory"):
        discover_categories(tmp_path / "missing")
