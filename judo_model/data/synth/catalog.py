"""What a synthetic product is: the :class:`Painting` a drawing returns, the :class:`Product`
record, the registry decorator, and helpers shared by textures and objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from . import defects as surface_defects
from .surface import Color, fractal_noise


@dataclass
class Painting:
    """A drawn product before lighting: float RGB, the defect mask if known, and facts."""

    rgb: np.ndarray
    mask: np.ndarray | None = None
    attributes: dict[str, str] = field(default_factory=dict)


DrawFn = Callable[[np.random.Generator, np.random.Generator, int, "str | None"], Painting]


@dataclass(frozen=True)
class Product:
    """A product category: its kind, the defects it can show and its drawing function."""

    name: str
    kind: Literal["texture", "object"]
    defects: tuple[str, ...]
    draw: DrawFn


def registrar(registry: dict[str, Product]):
    """A decorator ``product(name, kind, defects)`` that adds a drawing function to ``registry``."""

    def product(name: str, kind: Literal["texture", "object"], defects: tuple[str, ...]):
        def register(fn: DrawFn) -> DrawFn:
            registry[name] = Product(name, kind, defects, fn)
            return fn

        return register

    return product


def pick(rng: np.random.Generator, options: dict[str, Color]) -> tuple[str, np.ndarray]:
    """A named colour from a palette, with a small random jitter."""
    name = list(options)[int(rng.integers(len(options)))]
    color = np.clip(np.asarray(options[name], np.float32) + rng.normal(0, 0.02, 3).astype(np.float32), 0, 1)
    return name, color


def background(rng: np.random.Generator, size: int, level: float, spread: float = 0.04) -> np.ndarray:
    """A neutral, slightly mottled inspection-table background."""
    value = level + rng.uniform(-0.03, 0.03) + spread * fractal_noise(rng, size, 3, 3)
    return np.repeat(value[..., None], 3, axis=2).astype(np.float32)


def surface_defect(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray, defect: str) -> np.ndarray:
    """Dispatch the generic surface defects shared by several products."""
    if defect == "scratch":
        return surface_defects.paint_scratch(rgb, rng, region, brighter=bool(rng.random() < 0.7))
    if defect == "crack":
        return surface_defects.paint_crack(rgb, rng, region)
    if defect in ("hole", "poke"):
        return surface_defects.paint_hole(rgb, rng, region, scale=1.0 if defect == "hole" else 0.8)
    if defect == "stain":
        return surface_defects.paint_stain(rgb, rng, region)
    if defect == "rust":
        return surface_defects.paint_stain(rgb, rng, region, color=(0.52, 0.26, 0.09))
    if defect == "color":
        return surface_defects.paint_discoloration(rgb, rng, region)
    if defect == "dent":
        return surface_defects.paint_dent(rgb, rng, region)
    if defect == "fold":
        return surface_defects.paint_fold(rgb, rng, region)
    raise KeyError(f"no surface painter for defect {defect!r}")


def full_region(size: int) -> np.ndarray:
    """The whole image as a region (textures fill the frame)."""
    return np.ones((size, size), bool)
