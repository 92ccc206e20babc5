"""Turn a (category, defect, seed) into a finished image and its ground truth.

This is the single entry point the dataset writer, the frame stream and the
contact sheet share, so an image is the same bytes whichever of them asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .products import PRODUCTS, Product
from .surface import dilate, finish

#: Defect size we retry below, as a fraction of the image (about 65 px at 256 px); after
#: ``MAX_ATTEMPTS`` a smaller but non-empty defect is kept.
MIN_DEFECT_FRACTION = 0.001
#: Pixel change (0..1) that counts as "the defect touched this pixel" for structural defects.
STRUCTURAL_DIFF_THRESHOLD = 0.06
MAX_ATTEMPTS = 8

Seed = Sequence[int]


class UnknownCategoryError(KeyError):
    """The category or defect is not one the renderer knows."""


@dataclass(frozen=True)
class RenderedSample:
    """A finished ``uint8`` RGB image with its label, mask and visible facts."""

    category: str
    defect: str | None
    image: np.ndarray
    mask: np.ndarray | None
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def is_defective(self) -> bool:
        return self.defect is not None

    @property
    def label(self) -> str:
        return self.defect or "good"

    def bbox(self) -> tuple[float, float, float, float] | None:
        """Defect box ``(x1, y1, x2, y2)`` normalised to 0..1, or None for a normal image."""
        if self.mask is None or not self.mask.any():
            return None
        rows, cols = np.nonzero(self.mask)
        height, width = self.mask.shape
        return (cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height)


def get_product(category: str) -> Product:
    try:
        return PRODUCTS[category]
    except KeyError:
        raise UnknownCategoryError(f"unknown category {category!r}; known: {', '.join(sorted(PRODUCTS))}") from None


def render_sample(category: str, defect: str | None, seed: Seed, size: int = 256) -> RenderedSample:
    """Render one image; the same arguments always give the same bytes.

    ``seed`` is a sequence of ints (e.g. ``(run_seed, category_id, index)``). Normal
    variation, the defect and the camera draw from independent child streams, so a
    defective image and its normal twin share pose and lighting exactly.
    """
    product = get_product(category)
    if defect is not None and defect not in product.defects:
        raise UnknownCategoryError(f"{category} has no defect {defect!r}; known: {', '.join(product.defects)}")
    seed = tuple(int(s) for s in seed)
    mask = None
    for attempt in range(MAX_ATTEMPTS):
        # a pose can hide the defect's site (a screw head at the border): later attempts move the part too
        pose_stream = (0,) if attempt < MAX_ATTEMPTS // 2 else (0, attempt)
        painting = product.draw(_rng(seed, *pose_stream), _rng(seed, 1, attempt), size, defect)
        if defect is None:
            break
        mask = painting.mask
        if mask is None:
            twin = product.draw(_rng(seed, *pose_stream), _rng(seed, 1, attempt), size, None)
            changed = np.abs(painting.rgb - twin.rgb).max(axis=2) > STRUCTURAL_DIFF_THRESHOLD
            mask = dilate(changed, 1)
        if mask.sum() >= MIN_DEFECT_FRACTION * size * size:
            break
    else:
        if mask is None or not mask.any():
            raise RuntimeError(f"could not place a visible {defect!r} on {category} for seed {seed}")
    image = finish(painting.rgb, _rng(seed, 2))
    return RenderedSample(category, defect, image, mask, dict(painting.attributes))


def _rng(seed: tuple[int, ...], *stream: int) -> np.random.Generator:
    return np.random.default_rng([*seed, *stream])
