"""Procedural industrial products: five textures and seven objects.

Every product is a function ``draw(pose, defect_rng, size, defect) -> Painting``.
``pose`` drives the normal variation (position, rotation, colour, texture phase)
and is consumed identically whatever the defect, so re-drawing with the same
pose and ``defect=None`` gives the defect-free twin of a defective image. That
twin gives the ground-truth mask of structural and logical defects (a missing
component, a bent tip), which :mod:`.render` derives by comparing the two.
Surface defects come from :mod:`.defects` and return their mask directly.
"""

from __future__ import annotations

from .catalog import Painting, Product
from .objects import OBJECTS
from .textures import TEXTURES

#: every category, textures first (the order of tables, contact sheets and ``CATEGORIES``)
PRODUCTS: dict[str, Product] = {**TEXTURES, **OBJECTS}

__all__ = ["PRODUCTS", "Painting", "Product"]
