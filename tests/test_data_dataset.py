"""A generated dataset: MMAD schema, balanced splits and letters, masks, templates, MVTec view."""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from judo_model.data.mvtec import discover_categories
from judo_model.data.synth.writer import generate_dataset
from judo_model.imaging import load_image, load_mask
from judo_model.mmad.format import DEFECT_QUESTION_TYPES, MMADDataset, read_mmad_json
from pipelines.cli import main

CATEGORIES = ["fabric", "tile", "bottle", "screw", "pcb", "cable", "capsule", "leather"]
HELDOUT = ["leather"]
IMAGES_PER_CATEGORY = 30
SIZE = 96


@lru_cache(maxsize=None)
def generated_dataset(root: Path) -> Path:
    """One small dataset per test session, shared by the data and evaluation tests."""
    generate_dataset(root, seed=5, categories=CATEGORIES, images_per_category=IMAGES_PER_CATEGORY, size=SIZE,
                     heldout=HELDOUT, workers=2)
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    return generated_dataset(tmp_path_factory.getbasetemp() / "synthetic")


def _all_records(root: Path):
    for name in ("mmad.json", "mmad_train.json", "mmad_val.json", "mmad_heldout.json"):
        yield name, read_mmad_json(root / name)


def test_every_answer_is_one_of_its_options(synthetic_dataset):
    for _, records in _all_records(synthetic_dataset):
        for record in records.values():
            for question in record.conversation:
                assert question.Answer in question.Options
                assert len(set(question.Options.values())) == len(question.Options) >= 2


def test_question_types_follow_mmad(synthetic_dataset):
    for _, records in _all_records(synthetic_dataset):
        for key, record in records.items():
            types = [q.type for q in record.conversation]
            assert types[0] == "Anomaly Detection"
            assert {"Object Classification", "Object Structure", "Object Details"} <= set(types)
            if "/good/" in key:
                assert not set(types) & set(DEFECT_QUESTION_TYPES) and record.mask_path == ""
            else:
                assert set(DEFECT_QUESTION_TYPES) <= set(types) and record.mask_path


def test_answer_letters_are_balanced(synthetic_dataset):
    letters: dict[int, Counter] = {}
    for _, records in _all_records(synthetic_dataset):
        for record in records.values():
            for question in record.conversation:
                letters.setdefault(len(question.Options), Counter())[question.Answer] += 1
    for n_options, counts in letters.items():
        expected = sum(counts.values()) / n_options
        assert len(counts) == n_options
        assert all(abs(c - expected) <= 0.1 * expected + len(CATEGORIES) for c in counts.values()), counts


def test_splits_are_half_normal_and_heldout_is_never_trained_on(synthetic_dataset):
    for name, records in _all_records(synthetic_dataset):
        normal = sum("/good/" in key for key in records)
        assert normal * 2 == len(records), name
        categories = {key.split("/")[1] for key in records}
        if name == "mmad_heldout.json":
            assert categories == set(HELDOUT)
        else:
            assert not categories & set(HELDOUT) and len(categories) == len(CATEGORIES) - len(HELDOUT)
    train = read_mmad_json(synthetic_dataset / "mmad_train.json")
    test = read_mmad_json(synthetic_dataset / "mmad.json")
    assert not set(train) & set(test)


def test_masks_and_templates_resolve_like_mmad(synthetic_dataset):
    for name in ("mmad.json", "mmad_train.json", "mmad_heldout.json"):
        dataset = MMADDataset(synthetic_dataset, name)
        assert dataset.missing_files() == []
        for item in dataset:
            image = load_image(item.image_path)
            assert image.shape == (SIZE, SIZE, 3)
            if not item.is_normal:
                mask = load_mask(item.mask_path)
                assert mask.shape == image.shape[:2] and mask.any()
            templates = item.record.similar_templates + item.record.random_templates
            assert templates and item.key not in templates
            assert all(t.startswith(f"Synthetic/{item.category}/train/good/") for t in templates)
            assert dataset.knowledge_text(item).count("Description:") >= 4


def test_generation_is_deterministic(synthetic_dataset, tmp_path):
    """Regenerating with the same seed gives byte-identical files."""
    again = tmp_path / "again"
    generate_dataset(again, seed=5, categories=CATEGORIES[:2], images_per_category=IMAGES_PER_CATEGORY,
                     size=SIZE, heldout=[], workers=1)
    for path in sorted((again / "Synthetic").rglob("*.png")):
        twin = synthetic_dataset / path.relative_to(again)
        assert twin.read_bytes() == path.read_bytes(), path
    first = json.loads((again / "mmad.json").read_text())
    second = json.loads((synthetic_dataset / "mmad.json").read_text())
    assert first == {k: v for k, v in second.items() if k.split("/")[1] in CATEGORIES[:2]}


def test_mvtec_view_loads_with_the_prefilter_loader(synthetic_dataset):
    categories = discover_categories(synthetic_dataset / "Synthetic")
    assert sorted(c.name for c in categories) == sorted(CATEGORIES)
    for category in categories:
        assert category.split("train") and all(s.label == "good" for s in category.split("train"))
        assert category.has_validation and category.split("validation")
        test = category.split("test")
        defective = [s for s in test if s.is_anomalous]
        assert len(defective) * 2 == len(test)
        for sample in defective:
            mask = sample.load_mask()
            assert mask is not None and mask.any() and mask.shape == sample.load_image().shape[:2]


def test_splits_manifest_lists_every_image(synthetic_dataset):
    manifest = json.loads((synthetic_dataset / "splits.json").read_text())
    on_disk = {str(p.relative_to(synthetic_dataset)) for p in (synthetic_dataset / "Synthetic").rglob("*.png")
               if not p.stem.endswith("_mask")}
    assert {entry["key"] for entry in manifest["images"]} == on_disk
    for entry in manifest["images"]:
        assert (entry["label"] == "good") == (entry["mask"] is None) == (entry["bbox"] is None)
        if entry["bbox"]:
            assert np.all(np.asarray(entry["bbox"]) >= 0) and np.all(np.asarray(entry["bbox"]) <= 1)


def test_synth_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--out", str(out), "--seed", "2", "--categories", "washer", "hex_nut",
                 "--images-per-category", "10", "--size", "64", "--workers", "1"]) == 0
    manifest = json.loads((out / "splits.json").read_text())
    assert manifest["categories"] == ["washer", "hex_nut"] and manifest["heldout"] == []
    assert len(manifest["images"]) == 2 * (6 + 2 + 2)
    assert len(read_mmad_json(out / "mmad.json")) == 4
