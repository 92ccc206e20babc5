"""Normal-reference retrieval: the k most similar normal images of a frame's product.

JUDO reasons better when it sees the query next to normal examples of the same
product in the same pose. Each product keeps a :class:`ReferenceIndex`: one global
descriptor per normal image (mean of the prefilter's patch features over the image,
L2-normalised, so it is the same backbone and canvas as the memory bank) in a faiss
inner-product index, with ids and file paths so the bytes can be attached.

The core has no Ray dependency; the actor at the bottom imports Ray lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from actors.features import FeatureExtractor, Frame
from actors.prefilter import (
    BankFormatError,
    Embedded,
    PatchCoreBank,
    PatchCoreConfig,
    ProductService,
    read_store,
    write_store,
)

#: sub-folder of a bank directory that holds the product's reference index
REFERENCES_SUBDIR = "references"
REFS_FORMAT = "judo-references"
REFS_FORMAT_VERSION = 1
#: ids/paths/config (json), global descriptors (npy), faiss inner-product index
REFS_FILES = ("references.json", "descriptors.npy", "index.faiss")


@dataclass(frozen=True)
class Reference:
    """One retrieved normal image."""

    id: str
    path: str | None
    product: str
    similarity: float
    rank: int

    def read_bytes(self) -> bytes:
        """The reference image's encoded bytes (what JUDO shows next to the query)."""
        if self.path is None:
            raise FileNotFoundError(f"reference {self.id} has no stored path")
        return Path(self.path).read_bytes()

    def to_dict(self, with_bytes: bool = False) -> dict:
        out = {"id": self.id, "path": self.path, "product": self.product,
               "similarity": self.similarity, "rank": self.rank}
        if with_bytes:
            out["image"] = self.read_bytes()
        return out


class ReferenceIndex:
    """Global-descriptor index of one product's normal images (cosine similarity)."""

    def __init__(self, product: str, config: PatchCoreConfig, extractor: FeatureExtractor | None = None):
        self.product = product
        self._embedding_bank = PatchCoreBank(config, extractor, product)
        self.ids: list[str] = []
        self.paths: list[str | None] = []
        self.descriptors = np.zeros((0, 0), np.float32)
        self.index: faiss.Index | None = None

    @property
    def config(self) -> PatchCoreConfig:
        return self._embedding_bank.config

    @property
    def extractor(self) -> FeatureExtractor:
        return self._embedding_bank.embedder.extractor

    def descriptors_of(self, frames: Sequence[Frame]) -> np.ndarray:
        """Global descriptors ``(B, dim)`` of frames on this index's canvas."""
        return self._embedding_bank.embed(frames).descriptors

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls,
        product: str,
        frames: Sequence[Frame],
        ids: Sequence[str],
        paths: Sequence[str | None] | None = None,
        config: PatchCoreConfig | None = None,
        extractor: FeatureExtractor | None = None,
    ) -> "ReferenceIndex":
        """Index normal frames; the canvas is chosen from them unless ``config`` fixes it."""
        refs = cls(product, config or PatchCoreConfig(), extractor)
        rgb = refs._embedding_bank.set_canvas_from(frames)
        refs.add_embedded(refs._embedding_bank.embed(rgb), ids, paths)
        return refs

    @classmethod
    def from_embedded(
        cls,
        product: str,
        config: PatchCoreConfig,
        embedded: Embedded,
        ids: Sequence[str],
        paths: Sequence[str | None] | None = None,
        extractor: FeatureExtractor | None = None,
    ) -> "ReferenceIndex":
        """Reuse descriptors computed while fitting the memory bank (no second backbone pass)."""
        refs = cls(product, config, extractor)
        refs.add_embedded(embedded, ids, paths)
        return refs

    def add(self, frames: Sequence[Frame], ids: Sequence[str], paths: Sequence[str | None] | None = None) -> None:
        """Add new normal images (no rebuild)."""
        self.add_embedded(self._embedding_bank.embed(frames), ids, paths)

    def add_embedded(self, embedded: Embedded, ids: Sequence[str], paths: Sequence[str | None] | None = None) -> None:
        ids = [str(i) for i in ids]
        paths = list(paths) if paths is not None else [None] * len(ids)
        if len(ids) != len(embedded) or len(paths) != len(ids):
            raise ValueError(f"{len(embedded)} frames but {len(ids)} ids and {len(paths)} paths")
        clash = set(ids) & set(self.ids)
        if clash or len(set(ids)) != len(ids):
            raise ValueError(f"reference ids must be unique; repeated: {sorted(clash)[:5]}")
        desc = np.ascontiguousarray(embedded.descriptors, np.float32)
        if self.index is None:
            self.index = faiss.IndexFlatIP(desc.shape[1])
            self.descriptors = desc
        else:
            self.descriptors = np.concatenate([self.descriptors, desc])
        self.index.add(desc)
        self.ids.extend(ids)
        self.paths.extend(str(p) if p is not None else None for p in paths)

    def query(self, frames: Sequence[Frame], k: int = 3) -> list[list[Reference]]:
        """For each frame, its ``k`` most similar normal images, best first."""
        if self.index is None or self.index.ntotal == 0:
            raise RuntimeError(f"reference index for {self.product!r} is empty")
        return self.query_descriptors(self.descriptors_of(frames), k)

    def query_descriptors(self, descriptors: np.ndarray, k: int = 3) -> list[list[Reference]]:
        k = max(1, min(k, self.index.ntotal))
        sims, idx = self.index.search(np.ascontiguousarray(descriptors, np.float32), k)
        return [
            [
                Reference(self.ids[j], self.paths[j], self.product, float(s), rank)
                for rank, (s, j) in enumerate(zip(row_s, row_i))
            ]
            for row_s, row_i in zip(sims, idx)
        ]

    def save(self, directory: str | Path) -> Path:
        if self.index is None:
            raise RuntimeError("nothing to save: the reference index is empty")
        meta = {
            "format": REFS_FORMAT,
            "format_version": REFS_FORMAT_VERSION,
            "product": self.product,
            "config": self.config.model_dump(mode="json"),
            "ids": self.ids,
            "paths": self.paths,
        }
        return write_store(directory, REFS_FILES, meta, self.descriptors, self.index)

    @classmethod
    def load(cls, directory: str | Path, extractor: FeatureExtractor | None = None) -> "ReferenceIndex":
        meta, descriptors, index = read_store(
            directory, REFS_FILES, REFS_FORMAT, REFS_FORMAT_VERSION, "reference index"
        )
        if len(meta["ids"]) != len(descriptors):
            raise BankFormatError(f"{directory}: {len(descriptors)} descriptors for {len(meta['ids'])} ids")
        refs = cls(meta["product"], PatchCoreConfig.model_validate(meta["config"]), extractor)
        refs.ids, refs.paths = list(meta["ids"]), list(meta["paths"])
        refs.descriptors, refs.index = descriptors, index
        return refs


# --- Ray actor ------------------------------------------------------------------------


class ReferenceService(ProductService):
    """Answers reference queries with each product's saved :class:`ReferenceIndex`."""

    what = "reference index"

    def _load(self, directory: str, extractor: FeatureExtractor | None) -> ReferenceIndex:
        return ReferenceIndex.load(directory, extractor)

    def _extractor_of(self, item: ReferenceIndex) -> FeatureExtractor:
        return item.extractor

    def query(self, product: str, frames: Sequence[Frame], k: int = 3, with_bytes: bool = False) -> list[list[dict]]:
        """Per frame, ``k`` reference dicts (id, path, similarity, rank[, image bytes])."""
        return [[r.to_dict(with_bytes) for r in refs] for refs in self.get(product).query(frames, k)]

    def query_descriptors(self, product: str, descriptors: np.ndarray, k: int = 3,
                          with_bytes: bool = False) -> list[list[dict]]:
        """As :meth:`query`, from descriptors the prefilter already computed (no backbone pass)."""
        found = self.get(product).query_descriptors(np.atleast_2d(descriptors), k)
        return [[r.to_dict(with_bytes) for r in refs] for refs in found]


def reference_actor_class(**ray_options):
    """``ray.remote`` class of :class:`ReferenceService` (Ray imported only here)."""
    import ray

    options = {"num_cpus": 1, **ray_options}
    return ray.remote(**options)(ReferenceService)
