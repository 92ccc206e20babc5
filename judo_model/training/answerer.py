"""MMAD answerer for checkpoints trained with juxtaposed evidence.

The harness's :class:`judo_model.inference.JudoMMADAnswerer` shows the reference and the
query only. A checkpoint trained by ``judo train`` may also expect the prefilter's evidence
image, and was trained on reference and query at :data:`IMAGE_SIDE` px. :class:`JuxtaposedJudo`
wraps :class:`judo_model.inference.JudoModel` so that the same answerer builds exactly the
training prompt: it resizes the images and adds the evidence image (from the data folder's
cached maps, or live from the saved PatchCore banks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from judo_model.imaging import load_image
from judo_model.inference import JudoMMADAnswerer, JudoModel
from judo_model.training.data import PromptOptions, shown
from judo_model.training.evidence import BANKS_FOLDER, BankEvidence, EvidenceCache, evidence_dir, render_evidence
from judo_model.training.pipeline import prompt_options_of


def _pixels(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return load_image(image)
    return np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)


def image_key(path: str | Path, depth: int = 5) -> str:
    """``<dataset>/<category>/<split>/<label>/<file>``: the last parts of an image path."""
    return "/".join(Path(path).parts[-depth:])


class JuxtaposedJudo:
    """``JudoModel.generate`` with the training-time image sizes and evidence image added."""

    def __init__(self, judo: JudoModel, options: PromptOptions, cache: EvidenceCache | None = None,
                 banks: BankEvidence | None = None):
        self.judo = judo
        self.options = options
        self.cache = cache
        self.banks = banks

    def evidence(self, query_path, query: np.ndarray):
        if not self.options.evidence_route:
            return None
        key = image_key(query_path) if isinstance(query_path, (str, Path)) else None
        if self.cache is not None and key in self.cache.keys:
            return self.cache.render(key, query, self.options.evidence_route)
        if self.banks is not None and key is not None:
            return self.banks.render(key.split("/")[1], query, self.options.evidence_route)
        raise ValueError(f"no evidence for {query_path}: not in the cache and no bank for its category")

    def generate(self, reference_image, query_image, evidence_image=None, **kwargs):
        query = _pixels(query_image)
        if evidence_image is None:
            evidence_image = self.evidence(query_image, query)
        reference = shown(_pixels(reference_image)) if reference_image is not None and self.options.reference else None
        return self.judo.generate(reference, shown(query), evidence_image=evidence_image, **kwargs)


def load_juxtaposed_answerer(checkpoint: str | Path, data_dir: str | Path | None = None,
                             max_new_tokens: int = 96, name: str | None = None) -> JudoMMADAnswerer:
    """An MMAD answerer for a ``judo train`` checkpoint; evidence from ``data_dir``'s cache and banks."""
    from judo_model.training.evidence import load_evidence

    checkpoint = Path(checkpoint)
    options = prompt_options_of(checkpoint)
    cache = banks = None
    if options.evidence_route and data_dir is not None:
        cache = load_evidence(data_dir)
        banks = BankEvidence(evidence_dir(data_dir) / BANKS_FOLDER)
    judo = JuxtaposedJudo(JudoModel.load(checkpoint), options, cache, banks)
    return JudoMMADAnswerer(judo, name=name or f"judo-{checkpoint.name}", max_new_tokens=max_new_tokens)


__all__ = ["JuxtaposedJudo", "load_juxtaposed_answerer", "render_evidence"]
