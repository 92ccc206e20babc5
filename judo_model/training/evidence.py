"""The prefilter's anomaly maps for training: banks fitted per category, maps cached once.

:func:`prepare_evidence` fits one PatchCore bank per category on its normal train images,
calibrates it on the normal validation images, scores every image of the dataset and caches the
maps to ``DATA/evidence/maps.npz`` (plus ``index.json``), so training never recomputes them.
Normal *train* images are the bank's own fit set, so they are scored out-of-fold
(:data:`TRAIN_MAP_FOLDS`). Labelled training defects become per-category defect exemplars
(the note's defect hint, leave one out), normal training images the known-product library.
:class:`BankEvidence` scores images outside the cache live from the saved banks.
How the maps are shown to the model is :mod:`judo_model.runtime.evidence`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from judo_model.data.knowledge import defect_title, product_title
from judo_model.imaging import load_image
from judo_model.prefilter.bank_format import BANK_META
from judo_model.prefilter.calibration import CellLevels, heldout_normal_grids
from judo_model.prefilter.features import BackboneConfig, FeatureExtractor
from judo_model.prefilter.patchcore import PatchCoreBank, PatchCoreConfig
from judo_model.prefilter.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, DefectExemplars, ProductExemplars
from judo_model.prefilter.scorer import PrefilterScorer
from judo_model.runtime.evidence import DEFAULT_ROUTE, EvidenceInputs, evidence_inputs

HINT_DROPOUT = 5  # one training image in this many is shown without the defect hint
#: bumped whenever the cached maps or exemplars change meaning (history: docs/judo_model.md)
EVIDENCE_VERSION = 8
#: a normal training image's map comes from a bank fitted on the other folds' images: it must not
#: be in the bank that scores it, and the bank should be nearly as large as the one that scores
#: every other image (fewer folds over-report "above" on training normals; docs/judo_model.md)
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
               with_product: bool = False) -> "EvidenceInputs":
        """The evidence shown for ``key`` (with ``with_product``, the note names the nearest known product)."""
        product = self.products.get(key) if with_product else None
        return evidence_inputs(query, self.anomaly_map(key), self.threshold(key), route, self.hints.get(key), product)


def evidence_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "evidence"


def _fit_category(root: Path, category: str, entries: Sequence[dict], extractor, out: Path, progress):
    """Fit and save one category's bank and defect exemplars; return ({key: map}, threshold, {key: hint})."""
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
        if self._products is None:
            folder = self.banks_dir.parent / PRODUCTS_FOLDER if self.templates is None \
                else self.banks_dir / PRODUCTS_FOLDER
            if not folder.is_dir() and self.templates:
                named = [(path, name.split("/")[-1]) for name, paths in self.templates.items() for path in paths]
                build_product_library([path for path, _ in named], [category for _, category in named],
                                      [str(path) for path, _ in named],
                                      FeatureExtractor(BackboneConfig(threads=1))).save(folder)
            self._products = ProductExemplars.load(folder) if folder.is_dir() else False
        return self._products or None

    def scorer(self, name: str):
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
