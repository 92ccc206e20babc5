"""The thin Ray actors wrap the prefilter and reference cores unchanged.

RAY TEST: starts a local Ray (2 CPUs, no dashboard) for one short check and shuts it down.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.prefilter import PrefilterService, prefilter_actor_class
from actors.references import ReferenceService
from judo_model.data.mvtec import discover_categories
from judo_model.prefilter.bank_format import BANK_META
from judo_model.prefilter.fitting import fit_bank_from_folder
from judo_model.prefilter.references import REFERENCES_SUBDIR
from judo_model.prefilter.scorer import PrefilterScorer
from tests.real_data import REAL, needs_real

pytestmark = needs_real


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("banks") / "bottle"
    fit_bank_from_folder(REAL / "MVTecAD", "bottle", out, folds=3)
    (cat,) = discover_categories(REAL, ["bottle"])
    frames = [s.path.read_bytes() for s in cat.split("test")[::4]]  # encoded bytes, as from Kafka
    return out, frames


def test_service_without_ray_matches_core(bank_dir):
    out, frames = bank_dir
    assert (out / BANK_META).is_file() and (out / REFERENCES_SUBDIR / "references.json").is_file()
    service = PrefilterService({"bottle": str(out)}, threads=2)
    direct = PrefilterScorer.load(out, service.get("bottle").bank.embedder.extractor).route(frames)
    results = service.score_frames("bottle", frames, [{} for _ in frames])
    assert [r["score"] for r in results] == [v.score for v in direct]
    assert [r["suspect"] for r in results] == [v.suspect for v in direct]
    for r, frame in zip(results, frames):
        assert (r["anomaly_map"] is not None) == r["suspect"]
    suspect = next(r for r in results if r["suspect"])
    assert suspect["anomaly_map"].dtype == np.float32 and suspect["anomaly_map"].shape == (900, 900)
    with pytest.raises(KeyError, match="no prefilter bank"):
        service.score_frames("tire", frames)


def test_prefilter_descriptors_find_the_same_references_as_the_images(bank_dir):
    out, frames = bank_dir
    service = PrefilterService({"bottle": str(out)}, threads=1)
    results = service.score_frames("bottle", frames)
    assert service.get("bottle").bank.config.backbone.threads == 2 and torch.get_num_threads() == 1, \
        "the service's thread count wins over the one the bank was fitted with"
    references = ReferenceService({"bottle": str(out / REFERENCES_SUBDIR)}, threads=1)
    for result, frame in zip(results, frames):
        assert (result["descriptor"] is not None) == result["suspect"]
        if result["suspect"]:
            by_descriptor = references.query_descriptors("bottle", result["descriptor"], 3)
            by_image = references.query("bottle", [frame], 3)
            assert [r["id"] for r in by_descriptor[0]] == [r["id"] for r in by_image[0]]


def test_ray_actors_wrap_the_cores(bank_dir):
    ray = pytest.importorskip("ray")
    out, frames = bank_dir
    expected = PrefilterService({"bottle": str(out)}).score_frames("bottle", frames)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        prefilter = prefilter_actor_class().remote({"bottle": str(out)}, 1, with_references=True)
        routed = ray.get(prefilter.score_frames.remote("bottle", frames), timeout=120)
        ids = [f"f{i}" for i in range(len(frames))]
        screened = ray.get(prefilter.screen_frames.remote("bottle", frames, [None] * len(frames), ids, 2), timeout=120)
    finally:
        ray.shutdown()
    assert [r["suspect"] for r in routed] == [r["suspect"] for r in expected]
    assert [r["score"] for r in routed] == pytest.approx([r["score"] for r in expected], rel=1e-4)
    suspects = [r for r in screened if r["suspect"]]
    assert suspects and all(len(r["references"]) == 2 for r in suspects)
    assert all(ref["id"].startswith("train/good/") and "image" not in ref for r in suspects for ref in r["references"])
    assert all("references" not in r for r in screened if not r["suspect"])
