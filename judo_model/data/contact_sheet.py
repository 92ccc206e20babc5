"""Draw ``docs/contact_sheet.png``: for every category a normal image, then each defect and its mask overlay.

Redraw it with ``judo data contact-sheet`` (the command lives in :mod:`judo_model.cli`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from judo_model.data.synth import PRODUCTS, render_sample
from judo_model.data.synth.writer import category_seed
from judo_model.imaging import encode_png

OVERLAY_COLOR = np.array([255, 40, 40], np.float32)
LABEL_HEIGHT = 14


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask tinted red and its outline drawn."""
    out = image.astype(np.float32)
    out[mask] = out[mask] * 0.45 + OVERLAY_COLOR * 0.55
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = OVERLAY_COLOR
    return out.astype(np.uint8)


def _tile(image: np.ndarray, label: str) -> Image.Image:
    tile = Image.new("RGB", (image.shape[1], image.shape[0] + LABEL_HEIGHT), (255, 255, 255))
    tile.paste(Image.fromarray(image), (0, LABEL_HEIGHT))
    ImageDraw.Draw(tile).text((2, 1), label, fill=(0, 0, 0))
    return tile


def draw_contact_sheet(out: str | Path, seed: int = 0, size: int = 192) -> Path:
    """Render one row per category: normal, then (defect, mask overlay) for each defect type."""
    rows = []
    for category, product in PRODUCTS.items():
        base = (seed, category_seed(category))
        tiles = [_tile(render_sample(category, None, (*base, 0), size).image, f"{category}: good")]
        for k, defect in enumerate(product.defects, start=1):
            sample = render_sample(category, defect, (*base, k), size)
            tiles += [_tile(sample.image, defect), _tile(overlay(sample.image, sample.mask), "mask")]
        rows.append(tiles)
    columns = max(len(r) for r in rows)
    tile_w, tile_h = rows[0][0].size
    sheet = Image.new("RGB", (columns * tile_w, len(rows) * tile_h), (255, 255, 255))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * tile_w, r * tile_h))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(np.asarray(sheet)))
    return out
