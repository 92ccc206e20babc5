"""The five texture categories: fabric, wood, brushed metal, tile, leather (each fills the frame)."""

from __future__ import annotations

import numpy as np

from . import defects as surface_defects
from .catalog import Painting, Product, full_region, pick, registrar, surface_defect
from .surface import Color, blend, fractal_noise, irregular_blob, pixel_grid, smooth_noise, soften

TEXTURES: dict[str, Product] = {}
product = registrar(TEXTURES)


@product("fabric", "texture", ("hole", "stain", "broken_thread"))
def draw_fabric(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """Plain-weave cloth: alternating warp and weft threads with fibre noise."""
    color_name, color = pick(pose, {"beige": (0.78, 0.72, 0.6), "denim blue": (0.3, 0.38, 0.55),
                                     "grey": (0.58, 0.58, 0.58), "dark red": (0.55, 0.18, 0.16)})
    yy, xx = pixel_grid(size)
    pitch = size / pose.uniform(22, 30)
    angle = pose.uniform(-0.12, 0.12)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / pitch + pose.uniform(0, 2)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / pitch + pose.uniform(0, 2)
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    height = np.where(over, np.sin(np.pi * (v % 1.0)), np.sin(np.pi * (u % 1.0)))
    fibres = smooth_noise(pose, size, 8, (8, 1)) * 0.5 + smooth_noise(pose, size, 8, (1, 8)) * 0.5
    rgb = (color * (0.55 + 0.38 * height + 0.12 * fibres)[..., None]).astype(np.float32)
    painting = Painting(rgb, attributes={"color": color_name})
    if defect == "broken_thread":
        painting.mask = surface_defects.paint_scratch(rgb, drng, full_region(size), brighter=True,
                                                      width_scale=2.5, curvature=0.5)
    elif defect:
        painting.mask = surface_defect(rgb, drng, full_region(size), defect)
    return painting


@product("wood", "texture", ("crack", "hole", "scratch", "stain"))
def draw_wood(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """Sawn timber: growth rings bent by low-frequency noise, plus fibre streaks."""
    tone_name, light = pick(pose, {"light oak": (0.8, 0.62, 0.42), "walnut": (0.55, 0.36, 0.22),
                                    "pine": (0.86, 0.72, 0.5)})
    dark = light * 0.68
    yy, xx = pixel_grid(size)
    warp = fractal_noise(pose, size, 2, 3)
    rings = np.sin(2 * np.pi * (yy / size * pose.uniform(5, 9) + 0.9 * warp + pose.uniform(0, 1)))
    streaks = smooth_noise(pose, size, 6, (12, 1))
    mix = np.clip(0.5 + 0.4 * rings + 0.25 * (streaks - 0.5), 0, 1)[..., None]
    rgb = (light * (1 - mix) + dark * mix).astype(np.float32)
    if pose.random() < 0.5:
        rgb = np.ascontiguousarray(rgb.transpose(1, 0, 2))
    painting = Painting(rgb, attributes={"color": tone_name})
    if defect:
        painting.mask = surface_defect(painting.rgb, drng, full_region(size), defect)
    return painting


@product("brushed_metal", "texture", ("scratch", "dent", "rust"))
def draw_brushed_metal(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """Brushed steel sheet: fine parallel streaks and a broad sheen."""
    level = pose.uniform(0.55, 0.72)
    streaks = smooth_noise(pose, size, 4, (48, 1)) - 0.5
    fine = smooth_noise(pose, size, 4, (128, 2)) - 0.5
    sheen = fractal_noise(pose, size, 2, 2)
    value = level + 0.09 * streaks + 0.06 * fine + 0.06 * sheen
    rgb = np.stack([value * 0.98, value, value * 1.03], axis=2).astype(np.float32)
    if pose.random() < 0.5:
        rgb = np.ascontiguousarray(rgb.transpose(1, 0, 2))
    painting = Painting(rgb, attributes={"color": "silver grey"})
    if defect:
        painting.mask = surface_defect(painting.rgb, drng, full_region(size), defect)
    return painting


#: Glazes a wrongly laid tile may have; the one used always differs clearly from the wall's.
MISMATCH_GLAZES: tuple[Color, ...] = ((0.3, 0.3, 0.34), (0.85, 0.75, 0.4), (0.25, 0.35, 0.7), (0.75, 0.3, 0.45))


@product("tile", "texture", ("crack", "chip", "color_mismatch"))
def draw_tile(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """Glazed ceramic tiles in a square grid with grout lines; one tile may be wrong (logical)."""
    color_name, glaze = pick(pose, {"white": (0.88, 0.87, 0.84), "sky blue": (0.55, 0.7, 0.82),
                                     "terracotta": (0.72, 0.4, 0.28), "sage green": (0.6, 0.7, 0.58)})
    tiles = 4
    pitch = size / tiles * pose.uniform(0.98, 1.04)
    offset = pose.uniform(0, pitch, 2)
    yy, xx = pixel_grid(size)
    fu, fv = ((xx + offset[0]) / pitch) % 1.0, ((yy + offset[1]) / pitch) % 1.0
    col_index, row_index = np.floor((xx + offset[0]) / pitch), np.floor((yy + offset[1]) / pitch)
    grout_half = max(1.0, size / 160) / pitch
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv))
    grout = edge < grout_half
    jitter = pose.normal(0, 0.025, (tiles + 2, tiles + 2)).astype(np.float32)
    brightness = 1.0 + jitter[row_index.astype(int) % (tiles + 2), col_index.astype(int) % (tiles + 2)]
    bevel = np.clip(edge / (grout_half * 3), 0, 1) ** 0.5
    glossy = 1.0 + 0.04 * fractal_noise(pose, size, 3, 2)
    rgb = glaze * (brightness * (0.82 + 0.18 * bevel) * glossy)[..., None]
    grout_color = np.asarray((0.5, 0.48, 0.45), np.float32) + pose.uniform(-0.05, 0.05)
    rgb = np.where(grout[..., None], grout_color, rgb).astype(np.float32)
    painting = Painting(rgb, attributes={"color": color_name})
    target_row, target_col = int(drng.integers(1, tiles)), int(drng.integers(1, tiles))
    one_tile = (row_index == target_row) & (col_index == target_col) & ~grout
    if defect == "color_mismatch":
        candidates = [c for c in MISMATCH_GLAZES if np.abs(np.asarray(c) - glaze).max() > 0.25]
        other = np.asarray(candidates[int(drng.integers(len(candidates)))], np.float32)
        painting.rgb = np.where(one_tile[..., None], rgb / np.maximum(glaze, 1e-3) * other, rgb).astype(np.float32)
    elif defect == "chip":
        corner = (((target_col + drng.integers(0, 2)) * pitch - offset[0]),
                  ((target_row + drng.integers(0, 2)) * pitch - offset[1]))
        radius = size * drng.uniform(0.05, 0.08)
        chip = irregular_blob(drng, size, (corner[1], corner[0]), radius, roughness=0.5) & ~grout
        rough = 0.55 + 0.15 * smooth_noise(drng, size, 40)
        blend(painting.rgb, soften(chip, 0.6), np.asarray((0.62, 0.55, 0.48), np.float32) * rough[..., None])
    elif defect:
        painting.mask = surface_defect(painting.rgb, drng, one_tile, defect)
    return painting


@product("leather", "texture", ("cut", "poke", "fold", "color"))
def draw_leather(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """Grained leather: embossed pebble relief under a dyed finish."""
    color_name, dye = pick(pose, {"brown": (0.45, 0.28, 0.16), "black": (0.16, 0.15, 0.15),
                                   "tan": (0.72, 0.52, 0.33), "burgundy": (0.42, 0.12, 0.14)})
    relief = fractal_noise(pose, size, 24, 2) + 0.3 * fractal_noise(pose, size, 6, 2)
    grad_x = np.roll(relief, -1, axis=1) - relief
    grad_y = np.roll(relief, -1, axis=0) - relief
    light = 1.0 + 1.6 * (grad_x * 0.7 + grad_y * 0.7) - 0.08 * np.abs(relief)
    rgb = (dye * light[..., None]).astype(np.float32)
    painting = Painting(rgb, attributes={"color": color_name})
    if defect == "cut":
        painting.mask = surface_defects.paint_scratch(painting.rgb, drng, full_region(size), brighter=False,
                                                      width_scale=2.2, curvature=0.03)
    elif defect:
        painting.mask = surface_defect(painting.rgb, drng, full_region(size), defect)
    return painting
