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
- ``heat_crop``: the heat image beside a 3x zoomed crop of the query centred on the
  hottest location, so even a small from-scratch vision tower sees the defect large;
- ``heat_crop_text`` (default): ``heat_crop`` plus the same evidence in words
  (:func:`evidence_note`: the score relative to the routing threshold, whether that is above
  or below it, the hottest region as a box in the output contract's coordinates and, where
  the product has labelled defect examples, the type the anomaly looks most like, by the
  name answers use for it (:class:`actors.references.DefectExemplars`). A tiny model reads a word and copies a box
  far sooner than it learns to read them off 4x4 visual tokens; a 7B reads both.

The defect exemplars are the category's labelled training defects; a training image that is
one of them is labelled by the others (leave one out), and one training image in
:data:`HINT_DROPOUT` gets no hint at all, so the model also answers for products without a
library (an MMAD folder has none).

:func:`refine_region` is the other direction: the model's boxes, cut down to the pixels the
anomaly map marks inside them, are the verdict's mask.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from judo_model.imaging import load_image, peak_crop_box, resize_map
from judo_model.output import Box, boxes_to_mask, largest_boxes

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
HINT_DROPOUT = 5  # one training image in this many is shown without the defect hint
PRODUCT_FORMAT = " Nearest known product: {name}."
#: :func:`refine_region` keeps the pixels of the model's boxes above this share of the anomaly map's
#: range inside them: chosen by ``benchmarks/judo_ablation.py region-cut`` on the validation split's
#: defective images (mean IoU 0.463 at 0.6 vs 0.445 at 0.5 for the shipped checkpoint; best for the
#: previous one too), never on a test image.
REGION_CUT = 0.6
#: 2: labelled-defect hints in the index; 3: hints by their answer names; 4: exemplar format 2; 5: products;
#: 6: exemplar format 3 (deeper blocks, closer crops); 7: exemplar format 4, training normals' maps
#: from :data:`TRAIN_MAP_FOLDS` folds; 8: banks divide by cell levels where that tells the labelled
#: training defects apart better (``PatchCoreConfig.position_norm``), training normals' maps by
#: leave-one-out levels
EVIDENCE_VERSION = 8
#: a normal training image's map comes from a bank fitted on the other folds' images: it must not
#: be in the bank that scores it, and the bank should be nearly as large as the one that scores
#: every other image. With halves, the notes of 13.5 % of the synthetic training normals said
#: "above" against 0 % of the validation and 2.1 % of the test normals (8 folds: 6.9 %), so Stages
#: 0-2 read "above" on normal images far more often than inference shows it.
TRAIN_MAP_FOLDS = 8
MAPS_FILE = "maps.npz"
INDEX_FILE = "index.json"
BANKS_FOLDER = "banks"
PRODUCTS_FOLDER = "products"


@dataclass(frozen=True)
class EvidenceCache:
    """Anomaly maps of every dataset image (float16, image size) and per-category thresholds."""

    keys: dict[str, int]
    maps: np.ndarray
    thresholds: dict[str, float]
    hints: dict[str, str]
    #: per category, the types of its labelled defect examples (categories without any: absent)
    defect_types: dict[str, list[str]] = field(default_factory=dict)
    #: per image, the known product its whole look is nearest to
    products: dict[str, str] = field(default_factory=dict)

    def anomaly_map(self, key: str) -> np.ndarray:
        return self.maps[self.keys[key]].astype(np.float32)

    def threshold(self, key: str) -> float:
        return self.thresholds[key.split("/")[1]]

    def defect_types_of(self, key: str) -> list[str] | None:
        """The labelled defect types of the product of ``key`` (None: its category has no library)."""
        return self.defect_types.get(key.split("/")[1])

    def inputs(self, key: str, query: np.ndarray, route: str = DEFAULT_ROUTE,
               with_product: bool = False, product_shown_as: str | None = None) -> "EvidenceInputs":
        """The evidence shown for ``key``; ``product_shown_as`` renames the product where the note names one."""
        product = self.products.get(key) if with_product else None
        return evidence_inputs(query, self.anomaly_map(key), self.threshold(key), route, self.hints.get(key),
                               product_shown_as if product and product_shown_as else product)


@dataclass(frozen=True)
class EvidenceInputs:
    """What a prompt shows of the prefilter's evidence: the evidence image and/or its note."""

    image: Image.Image | None = None
    note: str | None = None


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


def _fit_category(root: Path, category: str, entries: Sequence[dict], extractor, out: Path, progress):
    """Fit and save one category's bank and defect exemplars; return ({key: map}, threshold, {key: hint})."""
    from actors.prefilter import CellLevels, PatchCoreBank, PatchCoreConfig, PrefilterScorer, heldout_normal_grids

    def frames(rows):
        return [load_image(root / e["key"]) for e in rows]

    train_good = [e for e in entries if e["split"] == "train" and e["label"] == "good"]
    train_defects = [e for e in entries if e["split"] == "train" and e["label"] != "good"]
    val_good = [e for e in entries if e["split"] == "val" and e["label"] == "good"]
    others = [e for e in entries if e not in train_good]
    bank = PatchCoreBank(PatchCoreConfig(backbone=extractor.config), extractor, category)
    embedded = bank.embed(bank.set_canvas_from(frames(train_good)), "embed normal frames")
    # the same held-out grids give the bank's cell levels and the training normals' own maps
    heldout = heldout_normal_grids(bank.fresh_fit, embedded, TRAIN_MAP_FOLDS, bank.config.seed)
    scorer = PrefilterScorer.fit_embedded(
        bank, embedded, bank.embed(frames(val_good)) if val_good else None, folds=TRAIN_MAP_FOLDS,
        defects=bank.embed(frames(train_defects)) if train_defects else None, heldout=heldout)
    scorer.save(out / BANKS_FOLDER / category)
    bank = scorer.bank
    maps: dict[str, np.ndarray] = {}
    result = bank.score(frames(others))
    for i, entry in enumerate(others):
        maps[entry["key"]] = result.anomaly_map(i)
    if bank.cell_levels is not None:
        heldout = CellLevels.leave_one_out(heldout, embedded.valid, bank.config.position_norm_floor)
    result = bank.result_from_grids(heldout, embedded)
    for i, entry in enumerate(train_good):
        maps[entry["key"]] = result.anomaly_map(i)
    hints = _defect_hints(root, category, entries, maps, out)
    progress(category)
    return maps, float(scorer.threshold), hints


def _defect_hints(root: Path, category: str, entries: Sequence[dict], maps: dict[str, np.ndarray],
                  out: Path) -> dict[str, str]:
    """Build the category's defect exemplars from its labelled training defects (saved beside its
    bank) and label every image by them: exemplars leave themselves out; no hint for the training
    images :data:`HINT_DROPOUT` picks, nor for any image when there are no labelled defects."""
    from actors.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, DefectExemplars
    from judo_model.data.knowledge import defect_title

    library = [e for e in entries if e["split"] == "train" and e["label"] != "good"]
    if not library:
        return {}
    exemplars = DefectExemplars.build(category, [load_image(root / e["key"]) for e in library],
                                      [maps[e["key"]] for e in library],
                                      [defect_title(category, e["label"]) for e in library],
                                      [e["key"] for e in library])
    exemplars.save(out / BANKS_FOLDER / category / REFERENCES_SUBDIR / DEFECTS_SUBDIR)
    member = {e["key"]: i for i, e in enumerate(library)}
    keys = [key for key in maps if key not in member]
    labelled = dict(zip(member, exemplars.vote(exemplars.descriptors, exclude=list(member.values()))))
    for start in range(0, len(keys), 32):
        chunk = keys[start:start + 32]
        descriptors = exemplars.crop_descriptors([load_image(root / key) for key in chunk], [maps[k] for k in chunk])
        labelled.update(zip(chunk, exemplars.vote(descriptors)))
    split_of = {e["key"]: e["split"] for e in entries}
    return {key: label for key, label in labelled.items() if not dropped(key, split_of[key])}


def dropped(key: str, split: str, salt: str = "") -> bool:
    """Whether the training image ``key`` is shown without an evidence field: one in
    :data:`HINT_DROPOUT`, a fixed draw per image and ``salt`` (each field has its own salt)."""
    return split == "train" and zlib.crc32(f"{salt}{key}".encode()) % HINT_DROPOUT == 0


def prepare_evidence(data_dir: str | Path, progress=lambda category: None, force: bool = False) -> Path:
    """Fit banks and cache the anomaly map of every image in ``DATA/splits.json``; returns the folder."""
    from actors.features import BackboneConfig, FeatureExtractor

    root = Path(data_dir)
    out = evidence_dir(root)
    if (out / MAPS_FILE).is_file() and (out / INDEX_FILE).is_file() and not force:
        if json.loads((out / INDEX_FILE).read_text()).get("version") == EVIDENCE_VERSION:
            return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((root / "splits.json").read_text())
    extractor = FeatureExtractor(BackboneConfig(threads=1))  # 2 threads on 2 shared cores is slower
    keys, arrays, thresholds, hints = [], [], {}, {}
    for category in manifest["categories"]:
        entries = [e for e in manifest["images"] if e["category"] == category]
        maps, thresholds[category], category_hints = _fit_category(root, category, entries, extractor, out, progress)
        hints.update(category_hints)
        for key, amap in maps.items():
            keys.append(key)
            arrays.append(amap.astype(np.float16))
    products = _product_names(root, manifest["images"], extractor, out)
    np.savez_compressed(out / MAPS_FILE, maps=np.stack(arrays))
    (out / INDEX_FILE).write_text(json.dumps({"version": EVIDENCE_VERSION, "keys": keys, "thresholds": thresholds,
                                              "hints": hints, "products": products}, indent=1))
    return out


def _product_names(root: Path, entries: Sequence[dict], extractor, out: Path) -> dict[str, str]:
    """Build the product library from every category's normal training images (saved as
    ``products/``) and name every image's product by it: members leave themselves out; no name for
    the training images :data:`HINT_DROPOUT` picks (another draw than the hint's)."""
    library = [e for e in entries if e["split"] == "train" and e["label"] == "good"]
    exemplars = build_product_library([root / e["key"] for e in library], [e["category"] for e in library],
                                      [e["key"] for e in library], extractor)
    exemplars.save(out / PRODUCTS_FOLDER)
    member = {e["key"]: i for i, e in enumerate(library)}
    named = dict(zip(member, exemplars.vote(exemplars.descriptors, exclude=list(member.values()))))
    others = [e["key"] for e in entries if e["key"] not in member]
    for start in range(0, len(others), 32):
        chunk = others[start:start + 32]
        named.update(zip(chunk, exemplars.vote(exemplars.describe([load_image(root / key) for key in chunk]))))
    split_of = {e["key"]: e["split"] for e in entries}
    return {key: name for key, name in named.items() if not dropped(key, split_of[key], salt="product:")}


def build_product_library(paths: Sequence[Path], categories: Sequence[str], keys: Sequence[str], extractor):
    """The known-product library: each category's normal images, named by the product's title."""
    from actors.references import ProductExemplars
    from judo_model.data.knowledge import product_title

    return ProductExemplars.build_products([load_image(path) for path in paths],
                                           [product_title(category) for category in categories], list(keys), extractor)


def load_evidence(data_dir: str | Path) -> EvidenceCache:
    out = evidence_dir(data_dir)
    index = json.loads((out / INDEX_FILE).read_text())
    maps = np.load(out / MAPS_FILE)["maps"]
    return EvidenceCache({k: i for i, k in enumerate(index["keys"])}, maps, index["thresholds"], index.get("hints", {}),
                         _library_types(out / BANKS_FOLDER, index["thresholds"]), index.get("products", {}))


def _library_types(banks_dir: Path, categories) -> dict[str, list[str]]:
    """Per category, the types of the defect exemplar library saved beside its bank."""
    from actors.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, DefectExemplars

    libraries = {category: banks_dir / category / REFERENCES_SUBDIR / DEFECTS_SUBDIR for category in categories}
    types = {category: DefectExemplars.load(folder).types for category, folder in libraries.items() if folder.is_dir()}
    return {category: names for category, names in types.items() if names}


class BankEvidence:
    """Evidence for images outside the cache: a saved PatchCore bank scores the query live.

    Banks are looked up by category (``banks_dir/<category>``, as :func:`prepare_evidence`
    saves them) or by ``<dataset>/<category>``. With ``templates`` (category key -> normal
    image paths, e.g. an MMAD folder's template images) a missing bank is fitted on them,
    calibrated k-fold, and saved, so any MMAD-format folder gets evidence without a test image
    ever entering a bank; the product library is built the same way from all their templates.
    """

    def __init__(self, banks_dir: str | Path, templates: dict[str, list[Path]] | None = None):
        self.banks_dir = Path(banks_dir)
        self.templates = templates
        self._scorers: dict = {}
        self._exemplars: dict = {}
        self._products = None

    def products(self):
        """The library of known products: ``prepare_evidence``'s beside the banks, else built on the templates."""
        from actors.references import ProductExemplars

        if self._products is None:
            folder = self.banks_dir.parent / PRODUCTS_FOLDER if self.templates is None \
                else self.banks_dir / PRODUCTS_FOLDER
            if not folder.is_dir() and self.templates:
                from actors.features import BackboneConfig, FeatureExtractor

                named = [(path, name.split("/")[-1]) for name, paths in self.templates.items() for path in paths]
                build_product_library([path for path, _ in named], [category for _, category in named],
                                      [str(path) for path, _ in named],
                                      FeatureExtractor(BackboneConfig(threads=1))).save(folder)
            self._products = ProductExemplars.load(folder) if folder.is_dir() else False
        return self._products or None

    def scorer(self, name: str):
        from actors.prefilter import BANK_META, PrefilterScorer

        if name not in self._scorers:
            folder = self.banks_dir / name
            if not (folder / BANK_META).is_file():
                paths = list(self.templates.get(name, [])) if self.templates is not None else []
                if not paths:
                    raise ValueError(f"no prefilter bank in {folder} and no normal templates to fit one on")
                PrefilterScorer.fit([load_image(p) for p in paths], product=name).save(folder)
            self._scorers[name] = PrefilterScorer.load(folder)
        return self._scorers[name]

    def exemplars(self, name: str):
        """The bank's labelled defect exemplars, or None where it has none (an MMAD folder's banks)."""
        from actors.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, DefectExemplars

        if name not in self._exemplars:
            folder = self.banks_dir / name / REFERENCES_SUBDIR / DEFECTS_SUBDIR
            self._exemplars[name] = DefectExemplars.load(folder) if folder.is_dir() else None
        return self._exemplars[name]

    def _name(self, key: str) -> str:
        dataset, category = key.split("/")[:2]
        return category if (self.banks_dir / category).is_dir() or self.templates is None else f"{dataset}/{category}"

    def defect_types(self, key: str) -> list[str] | None:
        """The defect types the product of ``key`` has labelled examples of (None without a library)."""
        exemplars = self.exemplars(self._name(key))
        return exemplars.types if exemplars is not None else None

    def evidence(self, key: str, query: np.ndarray,
                 with_product: bool = False) -> tuple[np.ndarray, float, str | None, str | None]:
        """The anomaly map of the image at ``key`` (``<dataset>/<category>/...``), the bank's threshold,
        the labelled defect the anomaly looks most like (None without exemplars) and, ``with_product``,
        the known product the image looks most like (None without a product library; the library
        costs a backbone pass per query and is only built for checkpoints that read it)."""
        name = self._name(key)
        scorer = self.scorer(name)
        anomaly_map = scorer.bank.score([query]).anomaly_map(0)
        exemplars = self.exemplars(name)
        hint = exemplars.label_of(query, anomaly_map) if exemplars is not None else None
        products = self.products() if with_product else None
        return anomaly_map, float(scorer.threshold), hint, products.product_of(query) if products else None
