"""Labelled defect exemplars: built with a product's bank, saved with its references, asked by the pipeline."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from actors.references import ReferenceService
from judo_model.data.knowledge import defect_title
from judo_model.data.mvtec import discover_categories
from judo_model.prefilter.fitting import labelled_defect_examples
from judo_model.prefilter.references import (
    DEFECTS_FORMAT_VERSION,
    DEFECTS_SUBDIR,
    REFERENCES_SUBDIR,
    DefectExemplars,
    ReferenceIndex,
    exemplar_backbone,
    shared_extractor,
)
from judo_model.prefilter.scorer import PrefilterScorer
from tooling.demo import prepare_banks

PRODUCTS = ("bottle", "hex_nut")


@pytest.fixture(scope="module")
def library(pipeline_banks):
    data = next(iter(pipeline_banks.values())).parent.parent / "data" / "Synthetic"
    return pipeline_banks, data


def test_the_bank_folder_carries_every_labelled_example(library):
    banks, data = library
    for product in PRODUCTS:
        examples = labelled_defect_examples(data / product)
        assert examples, "the synthetic data has labelled training defects"
        index = ReferenceIndex.load(banks[product] / REFERENCES_SUBDIR)
        assert index.defects is not None and len(index.defects) == len(examples)
        assert sorted(index.defects.labels) == sorted(defect_title(product, label) for _, label in examples)
        reloaded = DefectExemplars.load(banks[product] / REFERENCES_SUBDIR / DEFECTS_SUBDIR)
        assert reloaded.ids == index.defects.ids and (reloaded.descriptors == index.defects.descriptors).all()
        assert reloaded.backbone == index.defects.extractor.config, "reloaded, it describes crops as it was built"
        assert reloaded.backbone == exemplar_backbone(), "crops are described by the exemplar blocks, not the bank's"
        assert reloaded.extractor is index.defects.extractor, "one backbone per process serves every library"
        other = index.defects.backbone.model_copy(update={"blocks": (2, 4)})
        with pytest.raises(ValueError, match="were described with"):
            DefectExemplars(product, other, index.defects.extractor)


def test_test_defects_are_labelled_better_than_chance(library):
    """The service labels each product's (unseen) test defects from its anomaly crop; the most
    frequent label alone would be right for at most the largest type's share."""
    banks, data = library
    service = ReferenceService({p: str(banks[p] / REFERENCES_SUBDIR) for p in PRODUCTS}, threads=1)
    for product in PRODUCTS:
        scorer = PrefilterScorer.load(banks[product])
        (category,) = discover_categories(data, [product])
        defects = [s for s in category.split("test") if s.is_anomalous]
        frames = [s.load_image() for s in defects]
        scored = scorer.bank.score(frames)
        hints = [service.defect_hint(product, frame, scored.anomaly_map(i)) for i, frame in enumerate(frames)]
        truth = [defect_title(product, s.label) for s in defects]
        assert set(hints) <= set(service.get(product).defects.labels)
        assert service.defect_types(product) == sorted(set(service.get(product).defects.labels))
        assert service.defect_evidence(product, frames[0], scored.anomaly_map(0)) == \
            (hints[0], service.defect_types(product))
        right = sum(h == t for h, t in zip(hints, truth))
        majority = Counter(truth).most_common(1)[0][1]
        assert right > majority, f"{product}: {right}/{len(truth)} right, the majority type alone {majority}"


def test_a_product_without_labelled_examples_has_no_hint(tmp_path, library):
    banks, _ = library
    index = ReferenceIndex.load(banks["bottle"] / REFERENCES_SUBDIR)
    index.defects = None
    index.save(tmp_path / "refs")
    service = ReferenceService({"bottle": str(tmp_path / "refs")}, threads=1)
    assert service.get("bottle").defects is None
    frame = np.zeros((64, 64, 3), np.uint8)
    assert service.defect_hint("bottle", frame, np.zeros((64, 64), np.float32)) is None
    assert service.defect_types("bottle") is None
    assert service.defect_evidence("bottle", frame, np.zeros((64, 64), np.float32)) == (None, None)


def test_a_bank_saved_by_an_older_release_is_fitted_again(library, tmp_path):
    """The demo's cached assets outlive a release: a library in an older format is refitted, not fatal."""
    banks, _ = library
    assets = tmp_path / "assets"
    shutil.copytree(banks["bottle"].parent.parent, assets)
    meta_file = assets / "banks" / "bottle" / REFERENCES_SUBDIR / DEFECTS_SUBDIR / "defects.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format_version": DEFECTS_FORMAT_VERSION - 1}))
    refreshed = prepare_banks(assets, ("bottle",), images_per_category=40)
    assert json.loads(meta_file.read_text())["format_version"] == DEFECTS_FORMAT_VERSION
    original = ReferenceIndex.load(banks["bottle"] / REFERENCES_SUBDIR).defects
    assert ReferenceIndex.load(refreshed["bottle"] / REFERENCES_SUBDIR).defects.labels == original.labels


def test_a_library_loading_its_backbone_keeps_the_services_thread_count():
    """The exemplar backbone is loaded on the first frame a library labels: the reference service's
    thread count (set after loading its indexes) must survive that."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        unseen = exemplar_backbone().model_copy(update={"neighbourhood": 5})  # not loaded by any other test
        assert shared_extractor(unseen).config.threads == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
