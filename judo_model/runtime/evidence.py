"""The prefilter's evidence as a JUDO prompt shows it, and the model's region refined by it.

:func:`evidence_inputs` turns a query's anomaly map (divided by its calibrated threshold) into
the third juxtaposed image and, for ``*_text`` routes, the same evidence in words:

- ``heat``: the normalised map as a heat image (black: like normal samples; yellow/white:
  beyond the routing threshold);
- ``heat_crop``: the heat image beside a 3x zoomed crop of the query centred on the hottest
  location, so even a small vision tower sees the defect large;
- ``heat_crop_text`` (default): ``heat_crop`` plus :func:`evidence_note` (score / threshold,
  above or below it, the hottest box in the output contract's coordinates, and optionally the
  nearest labelled defect type and known product). A small model copies a word or a box far
  sooner than it reads them off 4x4 visual tokens.

:func:`refine_region` goes the other way: the model's boxes cut down to the pixels the map marks.
Training and serving both use this module, so a checkpoint sees the evidence it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from judo_model.imaging import peak_crop_box, resize_map
from judo_model.runtime.output import Box, boxes_to_mask, largest_boxes

EVIDENCE_ROUTES = ("heat", "heat_crop", "heat_crop_text")
DEFAULT_ROUTE = "heat_crop_text"
#: A route with this suffix also gives the evidence in words (the note) after its image.
NOTE_SUFFIX = "_text"
PANEL = 112  # side of one evidence panel in pixels (4x4 merged visual tokens)
CROP_FRACTION = 1 / 3  # side of the zoomed crop relative to the query's short side
HEAT_FLOOR = 0.7  # map / threshold below which the heat image is black
HEAT_SATURATION = 1.5  # map / threshold at which the heat image is white
HOT_FRACTION = 0.8  # the hottest region: map >= this x its peak (and >= this x the threshold)
MAX_SCORE_RATIO = 9.9  # score / threshold is written with one decimal, capped here
NOTE_FORMAT = "Prefilter: anomaly score {ratio:.1f} x threshold ({side}), hottest at {box}."
HINT_FORMAT = " Nearest labelled defect: {label}."
PRODUCT_FORMAT = " Nearest known product: {name}."
#: :func:`refine_region` keeps the pixels of the model's boxes above this share of the anomaly map's
#: range inside them (chosen on the validation split's defective images; see docs/judo_model.md).
REGION_CUT = 0.6


@dataclass(frozen=True)
class EvidenceInputs:
    """What a prompt shows of the prefilter's evidence: the evidence image and/or its note."""

    image: Image.Image | None = None
    note: str | None = None


def heat_image(normalized: np.ndarray) -> np.ndarray:
    """``map / threshold`` as a black-red-yellow-white uint8 heat image.

    The colour ramp starts at :data:`HEAT_FLOOR` x threshold (black below: what normal
    samples look like) and is white at :data:`HEAT_SATURATION` x threshold, so a score near
    the routing threshold is the visual edge the small vision tower has to learn.
    """
    v = np.clip((normalized - HEAT_FLOOR) / (HEAT_SATURATION - HEAT_FLOOR), 0.0, 1.0)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def render_evidence(query: np.ndarray, anomaly_map: np.ndarray, threshold: float,
                    route: str = DEFAULT_ROUTE) -> Image.Image:
    """The evidence image for one query (``route`` in :data:`EVIDENCE_ROUTES`)."""
    if route not in EVIDENCE_ROUTES:
        raise ValueError(f"unknown evidence route {route!r}; expected one of {EVIDENCE_ROUTES}")
    query = np.asarray(query)
    anomaly_map = resize_map(anomaly_map, *query.shape[:2])
    heat = Image.fromarray(heat_image(anomaly_map / max(threshold, 1e-6))).resize((PANEL, PANEL), Image.BILINEAR)
    if route == "heat":
        return heat
    top, left, bottom, right = peak_crop_box(anomaly_map, CROP_FRACTION)
    crop = Image.fromarray(np.ascontiguousarray(query[top:bottom, left:right, :3])).resize((PANEL, PANEL),
                                                                                          Image.BICUBIC)
    canvas = Image.new("RGB", (2 * PANEL, PANEL))
    canvas.paste(heat, (0, 0))
    canvas.paste(crop, (PANEL, 0))
    return canvas


def hottest_boxes(anomaly_map: np.ndarray, threshold: float, count: int = 1) -> list[Box]:
    """Snapped 0-1000 boxes around the map's hottest region (never empty)."""
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    level = max(HOT_FRACTION * float(anomaly_map.max()), HOT_FRACTION * threshold)
    hot = anomaly_map >= level
    if not hot.any():
        hot = anomaly_map >= anomaly_map.max()
    return largest_boxes(hot, count)


def evidence_note(anomaly_map: np.ndarray, threshold: float, defect_hint: str | None = None,
                  product: str | None = None) -> str:
    """The prefilter's evidence in words: score / threshold, above or below it, the hottest
    region's box and, when given, the labelled defect the anomaly looks most like and the known
    product the image looks most like."""
    score = float(np.max(anomaly_map)) / max(threshold, 1e-6)
    return format_note(score, hottest_boxes(anomaly_map, threshold)[0], defect_hint, product)


def note_says_above(score_ratio: float) -> bool:
    """Whether a note calls a score / threshold ratio above the prefilter's routing threshold."""
    return score_ratio > 1.0


def format_note(score_ratio: float, box: Box, defect_hint: str | None = None, product: str | None = None) -> str:
    """The note's words for a score / threshold ratio, a hottest box, an optional defect hint and
    an optional product (last, so that Stage 0's notes are a prefix of the full note)."""
    side = "above" if note_says_above(score_ratio) else "below"
    note = NOTE_FORMAT.format(ratio=min(score_ratio, MAX_SCORE_RATIO), side=side, box=list(box))
    note += HINT_FORMAT.format(label=defect_hint) if defect_hint else ""
    return note + PRODUCT_FORMAT.format(name=product) if product else note


def route_shows_note(route: str | None) -> bool:
    """Whether an evidence route puts the prefilter's note in the prompt."""
    return (route or "").endswith(NOTE_SUFFIX)


def evidence_inputs(query: np.ndarray, anomaly_map: np.ndarray, threshold: float,
                    route: str | None = DEFAULT_ROUTE, defect_hint: str | None = None,
                    product: str | None = None) -> EvidenceInputs:
    """The evidence image (and note, for ``*_text`` routes) of one query; nothing if ``route`` is None."""
    if not route:
        return EvidenceInputs()
    image_route = route.removesuffix(NOTE_SUFFIX)
    note = evidence_note(anomaly_map, threshold, defect_hint, product) if route_shows_note(route) else None
    return EvidenceInputs(render_evidence(query, anomaly_map, threshold, image_route), note)


def refine_region(boxes: Sequence[Box], height: int, width: int, anomaly_map: np.ndarray | None,
                  cut: float = REGION_CUT) -> np.ndarray:
    """The model's region refined by the anomaly map: the pixels inside the boxes above ``cut`` of
    the map's range there.

    Boxes are coarse (25-unit grid) and defects are often thin, so the box alone overstates
    the defect; falls back to the filled boxes when there is no map or nothing inside.
    """
    region = boxes_to_mask(boxes, height, width)
    if anomaly_map is None or not region.any():
        return region
    amap = resize_map(anomaly_map, height, width)
    inside = amap[region]
    refined = region & (amap >= inside.min() + cut * (inside.max() - inside.min()))
    return refined if refined.any() else region
