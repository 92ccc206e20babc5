"""A JUDO checkpoint shown MMAD images exactly as ``judo train`` showed its training images.

A checkpoint trained by ``judo train`` expects reference and query at
:data:`judo_model.runtime.inputs.IMAGE_SIDE` px and, where its recipe used them, the prefilter's
evidence (image and note). :class:`JuxtaposedJudo` wraps :class:`judo_model.runtime.JudoModel`
to build that prompt (evidence from the data folder's cached maps, or live from saved PatchCore
banks) and refines the model's boxes into a mask with the same anomaly map
(:class:`judo_model.mmad.judo_answerer.JudoMMADAnswerer` asks it the questions).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from judo_model.imaging import load_image
from judo_model.mmad.format import MMADDataset
from judo_model.runtime.evidence import evidence_inputs, refine_region
from judo_model.runtime.inference import JudoModel
from judo_model.runtime.inputs import PromptOptions, shown
from judo_model.training.evidence import BankEvidence, EvidenceCache


def _pixels(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return load_image(image)
    return np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)


def image_key(path: str | Path, depth: int = 5) -> str:
    """``<dataset>/<category>/<split>/<label>/<file>``: the last parts of an image path."""
    return "/".join(Path(path).parts[-depth:])


class JuxtaposedJudo:
    """``JudoModel.generate`` / ``score_options`` with the training-time image sizes and evidence."""

    def __init__(self, judo: JudoModel, options: PromptOptions, cache: EvidenceCache | None = None,
                 banks: BankEvidence | None = None):
        self.judo = judo
        self.options = options
        self.cache = cache
        self.banks = banks
        self._last_live: tuple[str, bool, tuple] | None = None

    def evidence(self, query_path, query: np.ndarray,
                 with_product: bool = False) -> tuple[np.ndarray, float, str | None, str | None]:
        """The query's anomaly map, its category's threshold, defect hint and, ``with_product``, its
        nearest known product (cache first, then the saved bank). The last live result is kept (by path
        and pixels), so that grounding the answer to a prompt does not score the query again."""
        key = image_key(query_path) if isinstance(query_path, (str, Path)) else None
        if self.cache is not None and key in self.cache.keys:
            return (self.cache.anomaly_map(key), self.cache.threshold(key), self.cache.hints.get(key),
                    self.cache.products.get(key) if with_product else None)
        if self.banks is None or key is None:
            raise ValueError(f"no evidence for {query_path}: not in the cache and no bank for its category")
        seen = f"{query_path}:{zlib.crc32(np.ascontiguousarray(query).tobytes())}"
        if self._last_live is not None and self._last_live[0] == seen and (self._last_live[1] or not with_product):
            anomaly_map, threshold, hint, product = self._last_live[2]
            return anomaly_map, threshold, hint, product if with_product else None
        found = self.banks.evidence(key, query, with_product)
        self._last_live = (seen, with_product, found)
        return found

    def _prompt_kwargs(self, reference_image, query_image) -> dict:
        query = _pixels(query_image)
        evidence = None
        if self.options.evidence_route:
            anomaly_map, threshold, hint, product = self.evidence(query_image, query, self.options.product_note)
            evidence = evidence_inputs(query, anomaly_map, threshold, self.options.evidence_route, hint, product)
        reference = shown(_pixels(reference_image)) if reference_image is not None and self.options.reference else None
        return dict(reference_image=reference, query_image=shown(query),
                    evidence_image=evidence.image if evidence else None,
                    evidence_note=evidence.note if evidence else None)

    def defect_types(self, query_path) -> list[str] | None:
        """The query's product's labelled defect types, which the verdict's type is constrained to
        (None where the product has no defect library, e.g. an MMAD folder: decoded freely)."""
        if not isinstance(query_path, (str, Path)):
            return None
        key = image_key(query_path)
        if self.cache is not None and key in self.cache.keys:
            return self.cache.defect_types_of(key)
        if self.banks is None:
            return None
        try:
            return self.banks.defect_types(key)
        except ValueError:  # no bank for the category: nothing to constrain to
            return None

    def generate(self, reference_image, query_image, **kwargs):
        kwargs.setdefault("defect_types", self.defect_types(query_image))
        return self.judo.generate(**self._prompt_kwargs(reference_image, query_image), **kwargs)

    def score_options(self, reference_image, query_image, **kwargs):
        kwargs.setdefault("defect_types", self.defect_types(query_image))
        return self.judo.score_options(**self._prompt_kwargs(reference_image, query_image), **kwargs)

    def grounding(self, query_image, boxes) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(the boxes refined by the anomaly map, the anomaly map over its routing threshold) at the
        query's size: in threshold units, maps of products scored differently (raw distances, or
        divided by cell levels) pool into one pixel AUROC."""
        if not self.options.evidence_route:
            return None, None
        query = _pixels(query_image)
        anomaly_map, threshold = self.evidence(query_image, query)[:2]
        anomaly_map = anomaly_map / max(threshold, 1e-6)
        height, width = query.shape[:2]
        return refine_region(list(boxes), height, width, anomaly_map), anomaly_map


def mmad_templates(data_dir: str | Path, questions_file: str = "mmad.json"):
    """``"<dataset>/<category>"`` -> the normal template images an MMAD question file names for it."""
    by_category: dict[str, list[Path]] = {}
    for item in MMADDataset(data_dir, questions_file):
        paths = by_category.setdefault(f"{item.dataset}/{item.category}", [])
        for path in (*item.template_paths(len(item.record.random_templates)),
                     *item.template_paths(len(item.record.similar_templates), similar=True)):
            if path not in paths:
                paths.append(path)
    return by_category


def template_banks_dir(data_dir: str | Path) -> Path:
    """Where banks fitted on a folder's templates are kept (outside the user's data folder)."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("JUDO_CACHE", Path.home() / ".cache" / "judo-inspect"))
    return cache / "mmad-banks" / digest
