"""Base of the services the prefilter's Ray actors run: one saved object per product, one shared backbone.

Plain Python so it can be tested without Ray; subclasses say how to load one product's object
and where its feature extractor is.
"""

from __future__ import annotations

import faiss
import torch

from cluster.telemetry import setup_tracing
from judo_model.prefilter.features import FeatureExtractor


class ProductService:
    """Loads each product's saved object with one shared backbone and hands them out by product."""

    what = "model"

    def __init__(
        self,
        directories: dict[str, str],
        threads: int = 2,
        service_name: str | None = None,
        trace_file: str | None = None,
    ):
        if service_name or trace_file:
            setup_tracing(service_name, trace_file=trace_file)
        self.items: dict[str, object] = {}
        extractor = None
        for product, directory in directories.items():
            item = self._load(directory, extractor)
            extractor = self._extractor_of(item)
            self.items[product] = item
        self.threads = threads
        self.pin_threads()

    def pin_threads(self) -> None:
        """The service's torch and faiss thread counts; call after loading, since each bank's backbone sets
        its own fitting-time ones."""
        torch.set_num_threads(self.threads)
        faiss.omp_set_num_threads(self.threads)

    def _load(self, directory: str, extractor: FeatureExtractor | None):
        raise NotImplementedError

    def _extractor_of(self, item) -> FeatureExtractor:
        raise NotImplementedError

    def products(self) -> list[str]:
        return sorted(self.items)

    def get(self, product: str):
        if product not in self.items:
            raise KeyError(f"no {self.what} for product {product!r}; have {self.products()}")
        return self.items[product]
