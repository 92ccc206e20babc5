"""Reference retrieval as a per-product service: each product's saved reference index and defect exemplars.

The model lives in :mod:`judo_model.prefilter.references`. In the pipeline this service runs
inside the prefilter actor (:class:`actors.prefilter.PrefilterService`, ``with_references``), next
to the descriptor and anomaly map it starts from, so it needs no Ray actor of its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from actors.product_service import ProductService
from judo_model.prefilter.features import FeatureExtractor, Frame
from judo_model.prefilter.references import REFS_FILES, ReferenceIndex


class ReferenceService(ProductService):
    """Answers reference queries with each product's saved :class:`ReferenceIndex`."""

    what = "reference index"
    meta_file = REFS_FILES[0]

    def _load(self, directory: str, extractor: FeatureExtractor | None) -> ReferenceIndex:
        return ReferenceIndex.load(directory, extractor)

    def query(self, product: str, frames: Sequence[Frame], k: int = 3, with_bytes: bool = False) -> list[list[dict]]:
        """Per frame, ``k`` reference dicts (id, path, similarity, rank[, image bytes])."""
        return [[r.to_dict(with_bytes) for r in refs] for refs in self.get(product).query(frames, k)]

    def query_descriptors(self, product: str, descriptors: np.ndarray, k: int = 3,
                          with_bytes: bool = False) -> list[list[dict]]:
        """As :meth:`query`, from descriptors the prefilter already computed (no backbone pass)."""
        found = self.get(product).query_descriptors(np.atleast_2d(descriptors), k)
        return [[r.to_dict(with_bytes) for r in refs] for refs in found]

    def defect_hint(self, product: str, frame: Frame, anomaly_map: np.ndarray) -> str | None:
        """The labelled defect a suspect frame's anomaly looks most like; None without a library."""
        defects = self.get(product).defects
        return defects.label_of(frame, anomaly_map) if defects is not None else None

    def defect_types(self, product: str) -> list[str] | None:
        """The defect types the product's library has examples of (JUDO's verdict names one of
        them); None without a library."""
        defects = self.get(product).defects
        return defects.types if defects is not None else None

    def defect_evidence(self, product: str, frame: Frame, anomaly_map: np.ndarray
                        ) -> tuple[str | None, list[str] | None]:
        """:meth:`defect_hint` and :meth:`defect_types` together: what JUDO is shown with every suspect frame."""
        return self.defect_hint(product, frame, anomaly_map), self.defect_types(product)

