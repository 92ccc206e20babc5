"""Reference retrieval returns normal images of the queried product, and persists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actors.references import ReferenceService
from judo_model.data.mvtec import discover_categories
from judo_model.prefilter.references import ReferenceIndex
from tests.real_data import REAL, needs_real

pytestmark = needs_real


def _index(name: str) -> tuple[ReferenceIndex, list, list]:
    (cat,) = discover_categories(REAL, [name])
    train = cat.split("train", "good")
    refs = ReferenceIndex.build(
        name, [s.load_image() for s in train], [s.sample_id for s in train], [str(s.path) for s in train]
    )
    return refs, train, cat.split("test")


@pytest.fixture(scope="module")
def tire():
    return _index("tire")


def test_query_returns_k_normal_images_of_the_product(tire):
    refs, train, test = tire
    train_paths = {str(s.path) for s in train}
    queries = [test[0], test[-1]]  # a defective and a good test frame
    results = refs.query([q.load_image() for q in queries], k=3)
    assert len(results) == 2
    for row in results:
        assert [r.rank for r in row] == [0, 1, 2]
        assert all(r.product == "tire" and r.path in train_paths for r in row)
        assert all(r.id.startswith("train/good/") for r in row)
        sims = [r.similarity for r in row]
        assert sims == sorted(sims, reverse=True) and 0.5 < sims[0] <= 1.0001
        assert row[0].read_bytes() == Path(row[0].path).read_bytes()


def test_a_normal_image_retrieves_itself_first(tire):
    refs, train, _ = tire
    row = refs.query([train[3].load_image()], k=2)[0]
    assert row[0].id == train[3].sample_id and row[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_descriptor_separates_products(tire):
    refs, _, tire_test = tire
    bottle_refs, _, bottle_test = _index("bottle")
    tire_query = refs.descriptors_of([tire_test[0].load_image()])
    bottle_query = bottle_refs.descriptors_of([bottle_test[0].load_image()])
    # a tire frame is closer to tire references than to bottle references, and vice versa
    assert refs.query_descriptors(tire_query, 1)[0][0].similarity > bottle_refs.query_descriptors(tire_query, 1)[0][0].similarity
    assert bottle_refs.query_descriptors(bottle_query, 1)[0][0].similarity > refs.query_descriptors(bottle_query, 1)[0][0].similarity


def test_save_load_add_and_service(tire, tmp_path):
    refs, train, test = tire
    refs.save(tmp_path / "tire_refs")
    loaded = ReferenceIndex.load(tmp_path / "tire_refs")
    frame = test[0].load_image()
    assert [r.id for r in loaded.query([frame], 5)[0]] == [r.id for r in refs.query([frame], 5)[0]]
    with pytest.raises(ValueError, match="unique"):
        loaded.add([frame], [train[0].sample_id])
    loaded.add([frame], ["extra/0"], [str(test[0].path)])
    assert len(loaded) == len(train) + 1 and loaded.query([frame], 1)[0][0].id == "extra/0"

    service = ReferenceService({"tire": str(tmp_path / "tire_refs")})
    out = service.query("tire", [frame], k=2, with_bytes=True)
    assert len(out[0]) == 2 and isinstance(out[0][0]["image"], bytes) and out[0][0]["product"] == "tire"
    with pytest.raises(KeyError, match="no reference index"):
        service.query("bottle", [frame])
    assert np.isfinite(loaded.descriptors).all()
