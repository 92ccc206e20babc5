"""Base of the services the prefilter's Ray actors run: one saved object per product, each backbone loaded once.

Plain Python so it can be tested without Ray; subclasses say how to load one product's object
and where its feature extractor is.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import torch

from cluster.telemetry import setup_tracing
from judo_model.prefilter.features import BackboneConfig, FeatureExtractor


class ProductService:
    """Loads each product's saved object and hands them out by product; products whose banks use the same
    backbone (``judo prefilter fit --auto`` may choose a different one per product) share it."""

    what = "model"
    #: the json file of a saved folder that holds its config (the backbone is found before loading)
    meta_file = ""

    def __init__(
        self,
        directories: dict[str, str],
        threads: int = 2,
        service_name: str | None = None,
        trace_file: str | None = None,
        extractors: dict[str, FeatureExtractor] | None = None,
    ):
        if service_name or trace_file:
            setup_tracing(service_name, trace_file=trace_file)
        self._extractors = {} if extractors is None else extractors
        self.items: dict[str, object] = {
            product: self._load(directory, self.extractor_for(directory)) for product, directory in directories.items()
        }
        self.threads = threads
        self.pin_threads()

    def extractor_for(self, directory: str) -> FeatureExtractor | None:
        """The loaded backbone of the configuration saved in ``directory``, loaded once per configuration;
        None when the folder cannot be read (loading it then says why)."""
        try:
            meta = json.loads((Path(directory) / self.meta_file).read_text())
            config = BackboneConfig.model_validate(meta["config"]["backbone"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        key = config.model_dump_json()
        if key not in self._extractors:
            self._extractors[key] = FeatureExtractor(config)
        return self._extractors[key]

    def pin_threads(self) -> None:
        """The service's torch and faiss thread counts; call after loading, since each bank's backbone sets
        its own fitting-time ones."""
        torch.set_num_threads(self.threads)
        faiss.omp_set_num_threads(self.threads)

    def _load(self, directory: str, extractor: FeatureExtractor | None):
        raise NotImplementedError

    def products(self) -> list[str]:
        return sorted(self.items)

    def get(self, product: str):
        if product not in self.items:
            raise KeyError(f"no {self.what} for product {product!r}; have {self.products()}")
        return self.items[product]
