"""Surface defects that look the same on any product: scratches, cracks, holes, stains.

Each painter draws one defect into ``rgb`` (float32, in place) somewhere inside
``region`` (where the product's surface is) and returns the boolean ground-truth
mask. Structural and logical defects (a missing part, a bent tip) depend on the
product's geometry and live with the products in :mod:`.products`.
Sizes scale with the image so that a defect covers roughly 0.3-3 % of it.
"""

from __future__ import annotations

import numpy as np

from .surface import (
    Color,
    blend,
    dilate,
    draw_mask,
    erode,
    irregular_blob,
    pick_point,
    pixel_grid,
    shade,
    smooth_noise,
    soften,
)

#: Stain colours: dried liquid, oil, rust, dust.
STAIN_COLORS: tuple[Color, ...] = ((0.35, 0.22, 0.10), (0.12, 0.11, 0.10), (0.55, 0.28, 0.10), (0.80, 0.78, 0.72))
#: Colour shifts as (gain, offset) per channel: bleached, darkened, yellowed.
DISCOLORATIONS: tuple[tuple[Color, Color], ...] = (((0.6, 0.6, 0.6), (0.35, 0.35, 0.33)),
                                                   ((0.45, 0.45, 0.45), (0.0, 0.0, 0.0)),
                                                   ((1.2, 1.1, 0.6), (0.15, 0.1, 0.0)))


def _anchor(rng: np.random.Generator, region: np.ndarray, margin: int) -> tuple[float, float]:
    """A point inside ``region`` at least ``margin`` px from its edge when possible."""
    inner = erode(region, margin)
    return pick_point(rng, inner if inner.any() else region)


def _polyline(rng: np.random.Generator, start: tuple[float, float], angle: float, length: float,
              steps: int, wander: float) -> list[tuple[float, float]]:
    """A wandering path of ``steps`` segments as PIL ``(x, y)`` points."""
    row, col = start
    points = [(col, row)]
    step = length / steps
    for _ in range(steps):
        angle += rng.normal(0.0, wander)
        col += step * np.cos(angle)
        row += step * np.sin(angle)
        points.append((col, row))
    return points


def paint_scratch(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray, *,
                  brighter: bool = True, width_scale: float = 1.0, curvature: float = 0.08,
                  length: tuple[float, float] = (0.16, 0.3)) -> np.ndarray:
    """A thin, gently curved line that catches (or swallows) the light, centred in ``region``.

    ``length`` is the range of its length as a fraction of the image side.
    """
    size = rgb.shape[0]
    row, col = _anchor(rng, region, size // 16)
    angle = rng.uniform(0, 2 * np.pi)
    span = size * rng.uniform(*length)
    start = (row - np.sin(angle) * span / 2, col - np.cos(angle) * span / 2)
    points = _polyline(rng, start, angle, span, 6, curvature)
    width = max(1, round(size / 128 * width_scale))
    mask = draw_mask(size, lambda d: d.line(points, fill=255, width=width, joint="curve")) & region
    alpha = soften(mask, 0.6) * region
    blend(rgb, alpha * 0.85, (0.95, 0.95, 0.93) if brighter else (0.08, 0.07, 0.06))
    return dilate(mask, 1) & region


def paint_crack(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray, *,
                direction: float | None = None) -> np.ndarray:
    """A dark jagged fracture with one or two short branches."""
    size = rgb.shape[0]
    start = _anchor(rng, region, size // 12)
    angle = rng.uniform(0, 2 * np.pi) if direction is None else direction + rng.normal(0, 0.2)
    trunk = _polyline(rng, start, angle, size * rng.uniform(0.14, 0.26), 9, 0.45)
    branches = []
    for _ in range(int(rng.integers(1, 3))):
        col, row = trunk[int(rng.integers(2, len(trunk) - 1))]
        branches.append(_polyline(rng, (row, col), angle + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2),
                                  size * rng.uniform(0.04, 0.09), 4, 0.5))
    width = max(1, round(size / 120))

    def paint(draw):
        draw.line(trunk, fill=255, width=width + 1, joint="curve")
        for branch in branches:
            draw.line(branch, fill=255, width=width, joint="curve")

    mask = draw_mask(size, paint) & region
    blend(rgb, soften(mask, 0.5) * region * 0.9, (0.04, 0.035, 0.03))
    return dilate(mask, 1) & region


def paint_hole(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray, *,
               inside: Color = (0.03, 0.03, 0.03), scale: float = 1.0) -> np.ndarray:
    """A puncture: a dark irregular opening with a frayed, lighter rim."""
    size = rgb.shape[0]
    radius = size * rng.uniform(0.022, 0.045) * scale
    center = _anchor(rng, region, int(radius * 1.5))
    mask = irregular_blob(rng, size, center, radius, roughness=0.3) & region
    rim = dilate(mask, max(1, size // 100)) & ~mask & region
    shade(rgb, 1.0 + 0.35 * soften(rim, 0.8))
    yy, xx = pixel_grid(size)
    depth = np.clip(np.hypot(yy - center[0], xx - center[1]) / max(radius, 1.0), 0, 1)
    hole_color = np.asarray(inside, np.float32) * (0.6 + 0.4 * depth[..., None])
    blend(rgb, soften(mask, 0.7), hole_color)
    return dilate(mask, 1) & region


def paint_stain(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray, *,
                color: Color | None = None, scale: float = 1.0) -> np.ndarray:
    """A blotch of foreign matter (liquid, oil, rust, dust) with an uneven density."""
    size = rgb.shape[0]
    radius = size * rng.uniform(0.04, 0.075) * scale
    center = _anchor(rng, region, int(radius))
    mask = irregular_blob(rng, size, center, radius, roughness=0.55,
                          stretch=rng.uniform(0.7, 1.4), angle=rng.uniform(0, np.pi)) & region
    if color is None:
        color = STAIN_COLORS[int(rng.integers(len(STAIN_COLORS)))]
    density = 0.55 + 0.4 * smooth_noise(rng, size, 12)
    blend(rgb, soften(mask, 1.5) * density * region, color)
    return mask


def paint_discoloration(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray, *,
                        scale: float = 1.0) -> np.ndarray:
    """A soft-edged patch where the material's colour has shifted: bleached, darkened or yellowed."""
    size = rgb.shape[0]
    radius = size * rng.uniform(0.05, 0.09) * scale
    center = _anchor(rng, region, int(radius * 0.8))
    blob = irregular_blob(rng, size, center, radius, roughness=0.4) & region
    alpha = soften(blob, radius * 0.25) * region
    gain, offset = DISCOLORATIONS[int(rng.integers(len(DISCOLORATIONS)))]
    shifted = np.clip(rgb * np.asarray(gain, np.float32) + np.asarray(offset, np.float32), 0, 1)
    blend(rgb, alpha * 0.9, shifted)
    return alpha > 0.35


def paint_dent(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """A shallow impact: the surface bends, so one side lights up and the other darkens."""
    size = rgb.shape[0]
    radius = size * rng.uniform(0.04, 0.065) * scale
    center = _anchor(rng, region, int(radius * 1.2))
    yy, xx = pixel_grid(size)
    dy, dx = (yy - center[0]) / radius, (xx - center[1]) / radius
    light = rng.uniform(0, 2 * np.pi)
    bump = np.exp(-(dx * dx + dy * dy) * 1.6)
    slope = (dx * np.cos(light) + dy * np.sin(light)) * bump
    shade(rgb, np.where(region, 1.0 + 0.9 * slope - 0.25 * bump, 1.0).astype(np.float32))
    return (dx * dx + dy * dy <= 1.0) & region


def paint_fold(rgb: np.ndarray, rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A crease: a long ridge with a highlight on one flank and a shadow on the other."""
    size = rgb.shape[0]
    start = _anchor(rng, region, size // 10)
    angle = rng.uniform(0, np.pi)
    points = _polyline(rng, start, angle, size * rng.uniform(0.25, 0.4), 5, 0.1)
    width = max(3, size // 48)
    ridge = draw_mask(size, lambda d: d.line(points, fill=255, width=width, joint="curve"))
    offset = max(1, width // 2)
    shift = (int(round(offset * np.cos(angle + np.pi / 2))), int(round(offset * np.sin(angle + np.pi / 2))))
    shadow = np.roll(ridge, shift, axis=(1, 0))
    shade(rgb, 1.0 + 0.9 * soften(ridge & ~shadow, 1.0) - 0.6 * soften(shadow & ~ridge, 1.0))
    return dilate(ridge | shadow, 1) & region
