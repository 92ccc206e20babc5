"""Pretrained visual evidence for JUDO: the prefilter's anomaly maps, cached and rendered.

This is the one module of ``judo_model`` that imports the prefilter core
(:mod:`actors.prefilter`, plain Python: EfficientNet-Lite0 + faiss, no Ray, no Kafka).
It fits one PatchCore bank per category on the category's normal train images,
calibrates it on the normal validation images, scores every image of the dataset and
caches the anomaly maps to ``DATA/evidence/maps.npz`` (plus ``index.json``), so that
training never recomputes them.

Normal *train* images are the bank's own fit set; scoring them with that bank would
give near-zero maps that never occur at test time, so they are scored out-of-fold
(two banks, each fitted on the other half).

:func:`render_evidence` turns a map into the third juxtaposed image:

- ``heat``: the map divided by the category's calibrated threshold, as a heat image
  (black: like normal samples; yellow/white: beyond the routing threshold);
- ``heat_crop`` (default): the heat image beside a 3x zoomed crop of the query centred
  on the hottest location, so even a small from-scratch vision tower sees the defect large.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from judo_model.imaging import load_image

EVIDENCE_ROUTES = ("heat", "heat_crop")
DEFAULT_ROUTE = "heat_crop"
PANEL = 112  # side of one evidence panel in pixels (4x4 merged visual tokens)
CROP_FRACTION = 1 / 3  # side of the zoomed crop relative to the query's short side
HEAT_FLOOR = 0.7  # map / threshold below which the heat image is black
HEAT_SATURATION = 1.5  # map / threshold at which the heat image is white
MAPS_FILE = "maps.npz"
INDEX_FILE = "index.json"
BANKS_FOLDER = "banks"


@dataclass(frozen=True)
class EvidenceCache:
    """Anomaly maps of every dataset image (float16, image size) and per-category thresholds."""

    keys: dict[str, int]
    maps: np.ndarray
    thresholds: dict[str, float]

    def anomaly_map(self, key: str) -> np.ndarray:
        return self.maps[self.keys[key]].astype(np.float32)

    def threshold(self, key: str) -> float:
        return self.thresholds[key.split("/")[1]]

    def render(self, key: str, query: np.ndarray, route: str = DEFAULT_ROUTE) -> Image.Image:
        return render_evidence(query, self.anomaly_map(key), self.threshold(key), route)


def evidence_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "evidence"


def heat_image(normalized: np.ndarray) -> np.ndarray:
    """``map / threshold`` as a black-red-yellow-white uint8 heat image.

    The colour ramp starts at :data:`HEAT_FLOOR` x threshold (black below: what normal
    samples look like) and is white at :data:`HEAT_SATURATION` x threshold, so a score near
    the routing threshold is the visual edge the small vision tower has to learn.
    """
    v = np.clip((normalized - HEAT_FLOOR) / (HEAT_SATURATION - HEAT_FLOOR), 0.0, 1.0)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def peak_crop_box(anomaly_map: np.ndarray, fraction: float = CROP_FRACTION) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a square crop around the map's maximum, kept inside the image."""
    height, width = anomaly_map.shape
    side = max(8, int(round(min(height, width) * fraction)))
    row, col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    top = int(np.clip(row - side // 2, 0, height - side))
    left = int(np.clip(col - side // 2, 0, width - side))
    return top, left, top + side, left + side


def render_evidence(query: np.ndarray, anomaly_map: np.ndarray, threshold: float,
                    route: str = DEFAULT_ROUTE) -> Image.Image:
    """The evidence image for one query (``route`` in :data:`EVIDENCE_ROUTES`)."""
    if route not in EVIDENCE_ROUTES:
        raise ValueError(f"unknown evidence route {route!r}; expected one of {EVIDENCE_ROUTES}")
    query = np.asarray(query)
    if anomaly_map.shape != query.shape[:2]:
        anomaly_map = np.asarray(Image.fromarray(anomaly_map.astype(np.float32), "F").resize(
            (query.shape[1], query.shape[0]), Image.BILINEAR))
    heat = Image.fromarray(heat_image(anomaly_map / max(threshold, 1e-6))).resize((PANEL, PANEL), Image.BILINEAR)
    if route == "heat":
        return heat
    top, left, bottom, right = peak_crop_box(anomaly_map)
    crop = Image.fromarray(np.ascontiguousarray(query[top:bottom, left:right, :3])).resize((PANEL, PANEL),
                                                                                          Image.BICUBIC)
    canvas = Image.new("RGB", (2 * PANEL, PANEL))
    canvas.paste(heat, (0, 0))
    canvas.paste(crop, (PANEL, 0))
    return canvas


def _fit_category(root: Path, category: str, entries: Sequence[dict], extractor, out: Path, progress):
    """Fit and save one category's bank; return ({key: map}, threshold)."""
    from actors.prefilter import PatchCoreConfig, PrefilterScorer

    def frames(rows):
        return [load_image(root / e["key"]) for e in rows]

    train_good = [e for e in entries if e["split"] == "train" and e["label"] == "good"]
    val_good = [e for e in entries if e["split"] == "val" and e["label"] == "good"]
    others = [e for e in entries if e not in train_good]
    train_frames = frames(train_good)
    scorer = PrefilterScorer.fit(train_frames, config=PatchCoreConfig(backbone=extractor.config),
                                 validation_frames=frames(val_good) or None, product=category, extractor=extractor)
    scorer.save(out / BANKS_FOLDER / category)
    bank = scorer.bank
    maps: dict[str, np.ndarray] = {}
    result = bank.score(frames(others))
    for i, entry in enumerate(others):
        maps[entry["key"]] = result.anomaly_map(i)
    embedded = bank.embed(train_frames)
    order = np.arange(len(train_good))
    halves = [order[0::2], order[1::2]]
    for held, fit in (halves, halves[::-1]):
        if len(fit) == 0 or len(held) == 0:
            continue
        result = bank.fresh_fit(embedded.subset(fit)).score_embedded(embedded.subset(held))
        for j, i in enumerate(held):
            maps[train_good[i]["key"]] = result.anomaly_map(j)
    progress(category)
    return maps, float(scorer.threshold)


def prepare_evidence(data_dir: str | Path, progress=lambda category: None, force: bool = False) -> Path:
    """Fit banks and cache the anomaly map of every image in ``DATA/splits.json``; returns the folder."""
    from actors.features import BackboneConfig, FeatureExtractor

    root = Path(data_dir)
    out = evidence_dir(root)
    if (out / MAPS_FILE).is_file() and (out / INDEX_FILE).is_file() and not force:
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((root / "splits.json").read_text())
    extractor = FeatureExtractor(BackboneConfig(threads=1))  # 2 threads on 2 shared cores is slower
    keys, arrays, thresholds = [], [], {}
    for category in manifest["categories"]:
        entries = [e for e in manifest["images"] if e["category"] == category]
        maps, thresholds[category] = _fit_category(root, category, entries, extractor, out, progress)
        for key, amap in maps.items():
            keys.append(key)
            arrays.append(amap.astype(np.float16))
    np.savez_compressed(out / MAPS_FILE, maps=np.stack(arrays))
    (out / INDEX_FILE).write_text(json.dumps({"keys": keys, "thresholds": thresholds}, indent=1))
    return out


def load_evidence(data_dir: str | Path) -> EvidenceCache:
    out = evidence_dir(data_dir)
    index = json.loads((out / INDEX_FILE).read_text())
    maps = np.load(out / MAPS_FILE)["maps"]
    return EvidenceCache({k: i for i, k in enumerate(index["keys"])}, maps, index["thresholds"])


class BankEvidence:
    """Evidence for images outside the cache: the category's saved bank scores the query live."""

    def __init__(self, banks_dir: str | Path):
        self.banks_dir = Path(banks_dir)
        self._scorers: dict = {}

    def scorer(self, category: str):
        from actors.prefilter import PrefilterScorer

        if category not in self._scorers:
            self._scorers[category] = PrefilterScorer.load(self.banks_dir / category)
        return self._scorers[category]

    def render(self, category: str, query: np.ndarray, route: str = DEFAULT_ROUTE) -> Image.Image:
        scorer = self.scorer(category)
        result = scorer.bank.score([query])
        return render_evidence(query, result.anomaly_map(0), scorer.threshold, route)
