"""The procedural renderer: categories, defects, masks, variation and determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from judo_model.data.knowledge import CATEGORY_FACTS, domain_knowledge
from judo_model.data.synth import PRODUCTS, UnknownCategoryError, render_sample

SIZE = 128
ALL_DEFECTS = [(c, d) for c, p in PRODUCTS.items() for d in p.defects]


def test_catalogue_spans_textures_and_objects_with_three_defects_each():
    kinds = {p.kind for p in PRODUCTS.values()}
    assert len(PRODUCTS) >= 12 and kinds == {"texture", "object"}
    assert sum(p.kind == "texture" for p in PRODUCTS.values()) >= 5
    assert all(len(p.defects) >= 3 for p in PRODUCTS.values())


def test_every_defect_has_knowledge_in_mmad_schema():
    knowledge = domain_knowledge()["Synthetic"]
    for name, product in PRODUCTS.items():
        assert set(CATEGORY_FACTS[name].defects) == set(product.defects)
        entry = knowledge[name]
        assert set(entry) == {"good", *product.defects}
        assert all(text.startswith(" <") and ">\n Description: " in text for text in entry.values())


@pytest.mark.parametrize("category,defect", ALL_DEFECTS)
def test_defect_mask_is_image_sized_nonempty_and_mvtec_scale(category, defect):
    sample = render_sample(category, defect, (3, 1), SIZE)
    assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
    assert sample.mask is not None and sample.mask.shape == (SIZE, SIZE) and sample.mask.dtype == bool
    area = sample.mask.mean()
    assert 0.001 <= area <= 0.15, f"{category}/{defect} covers {area:.2%} of the image"
    x1, y1, x2, y2 = sample.bbox()
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


@pytest.mark.parametrize("category,defect", ALL_DEFECTS)
def test_defect_changes_pixels_inside_its_mask(category, defect):
    """The defect is visible: inside the mask the image differs from its normal twin."""
    defective = render_sample(category, defect, (9, 2), SIZE)
    twin = render_sample(category, None, (9, 2), SIZE)
    change = np.abs(defective.image.astype(int) - twin.image.astype(int)).max(axis=2)
    assert change[defective.mask].mean() > 12
    assert change[~defective.mask].mean() < 3


def test_rendering_is_deterministic_per_seed():
    for category in PRODUCTS:
        first = render_sample(category, PRODUCTS[category].defects[0], (42, 7), SIZE)
        again = render_sample(category, PRODUCTS[category].defects[0], (42, 7), SIZE)
        assert first.image.tobytes() == again.image.tobytes()
        assert first.mask.tobytes() == again.mask.tobytes()


def test_no_two_normal_images_are_identical():
    for category in PRODUCTS:
        images = [render_sample(category, None, (0, i), SIZE).image.astype(int) for i in range(4)]
        for a, b in itertools.combinations(images, 2):
            assert np.abs(a - b).mean() > 1.0


def test_image_size_is_configurable():
    assert render_sample("pcb", "missing_component", (1,), 200).image.shape == (200, 200, 3)


def test_unknown_category_or_defect_is_refused():
    with pytest.raises(UnknownCategoryError):
        render_sample("teapot", None, (0,))
    with pytest.raises(UnknownCategoryError):
        render_sample("screw", "stain", (0,))
