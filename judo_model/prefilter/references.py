"""Reference retrieval: the k most similar normal images of a frame's product, and the labelled
defect its anomaly looks most like.

JUDO reasons better next to normal examples of the same product in the same pose: each product
keeps a :class:`ReferenceIndex` of global descriptors (same backbone and canvas as the memory
bank) and, where it has labelled defect examples, :class:`DefectExemplars` (``references/defects/``)
to name the defect type a suspect frame's anomaly resembles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import torch

from judo_model.imaging import peak_crop_box, resize_map
from judo_model.prefilter.bank_format import BankFormatError, read_store, write_store
from judo_model.prefilter.features import (
    BackboneConfig,
    FeatureExtractor,
    Frame,
    PreprocessConfig,
    Preprocessor,
    as_rgb_frame,
    global_descriptors,
    valid_cells,
)
from judo_model.prefilter.patchcore import Embedded, PatchCoreBank, PatchCoreConfig

#: sub-folder of a bank directory that holds the product's reference index
REFERENCES_SUBDIR = "references"
REFS_FORMAT = "judo-references"
REFS_FORMAT_VERSION = 1
#: ids/paths/config (json), global descriptors (npy), faiss inner-product index
REFS_FILES = ("references.json", "descriptors.npy", "index.faiss")
#: sub-folder of a reference index that holds the product's labelled defect exemplars
DEFECTS_SUBDIR = "defects"
DEFECTS_FORMAT = "judo-defect-exemplars"
#: 2: the backbone the descriptors came from is stored; 3: the exemplar backbone and closer crops;
#: 4: the deepest block alone
DEFECTS_FORMAT_VERSION = 4
DEFECTS_FILES = ("defects.json", "descriptors.npy", "index.faiss")
#: side of the crop around the anomaly peak relative to the frame's short side, and the square
#: it is resized to before the backbone: a defect fills a good part of it
EXEMPLAR_CROP_FRACTION = 0.2
EXEMPLAR_CROP_SIDE = 96
#: Lite0 blocks that describe a defect crop: deeper than the prefilter's (2, 4, 10), whose
#: low-level texture finds anomalies but tells their kinds apart less well (docs/prefilter.md, History).
EXEMPLAR_BLOCKS = (15,)
#: exemplars that vote on a frame's label
EXEMPLAR_VOTES = 5


def exemplar_backbone(threads: int = 1) -> BackboneConfig:
    """The backbone defect exemplars are described with (its own blocks, not the bank's)."""
    return BackboneConfig(blocks=EXEMPLAR_BLOCKS, threads=threads)


_SHARED_EXTRACTORS: dict[str, FeatureExtractor] = {}


def shared_extractor(config: BackboneConfig) -> FeatureExtractor:
    """One loaded backbone per configuration and process, shared by every product's library.

    Loading a backbone sets torch's thread count to its config's; a library loads its backbone on
    the first frame it labels, long after the service set the process's count, so it is kept.
    """
    key = config.model_dump_json()
    if key not in _SHARED_EXTRACTORS:
        threads = torch.get_num_threads()
        _SHARED_EXTRACTORS[key] = FeatureExtractor(config)
        torch.set_num_threads(threads)
    return _SHARED_EXTRACTORS[key]


@dataclass(frozen=True)
class Reference:
    """One retrieved normal image."""

    id: str
    path: str | None
    product: str
    similarity: float
    rank: int

    def read_bytes(self) -> bytes:
        """The reference image's encoded bytes (what JUDO shows next to the query)."""
        if self.path is None:
            raise FileNotFoundError(f"reference {self.id} has no stored path")
        return Path(self.path).read_bytes()

    def to_dict(self, with_bytes: bool = False) -> dict:
        out = {"id": self.id, "path": self.path, "product": self.product,
               "similarity": self.similarity, "rank": self.rank}
        if with_bytes:
            out["image"] = self.read_bytes()
        return out


class ReferenceIndex:
    """Global-descriptor index of one product's normal images (cosine similarity)."""

    def __init__(self, product: str, config: PatchCoreConfig, extractor: FeatureExtractor | None = None):
        self.product = product
        self._embedding_bank = PatchCoreBank(config, extractor, product)
        self.ids: list[str] = []
        self.paths: list[str | None] = []
        self.descriptors = np.zeros((0, 0), np.float32)
        self.index: faiss.Index | None = None
        self.defects: DefectExemplars | None = None

    @property
    def config(self) -> PatchCoreConfig:
        return self._embedding_bank.config

    @property
    def extractor(self) -> FeatureExtractor:
        return self._embedding_bank.embedder.extractor

    def descriptors_of(self, frames: Sequence[Frame]) -> np.ndarray:
        """Global descriptors ``(B, dim)`` of frames on this index's canvas."""
        return self._embedding_bank.embed(frames).descriptors

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls,
        product: str,
        frames: Sequence[Frame],
        ids: Sequence[str],
        paths: Sequence[str | None] | None = None,
        config: PatchCoreConfig | None = None,
        extractor: FeatureExtractor | None = None,
    ) -> "ReferenceIndex":
        """Index normal frames; the canvas is chosen from them unless ``config`` fixes it."""
        refs = cls(product, config or PatchCoreConfig(), extractor)
        rgb = refs._embedding_bank.set_canvas_from(frames)
        refs.add_embedded(refs._embedding_bank.embed(rgb), ids, paths)
        return refs

    @classmethod
    def from_embedded(
        cls,
        product: str,
        config: PatchCoreConfig,
        embedded: Embedded,
        ids: Sequence[str],
        paths: Sequence[str | None] | None = None,
        extractor: FeatureExtractor | None = None,
    ) -> "ReferenceIndex":
        """Reuse descriptors computed while fitting the memory bank (no second backbone pass)."""
        refs = cls(product, config, extractor)
        refs.add_embedded(embedded, ids, paths)
        return refs

    def add(self, frames: Sequence[Frame], ids: Sequence[str], paths: Sequence[str | None] | None = None) -> None:
        """Add new normal images (no rebuild)."""
        self.add_embedded(self._embedding_bank.embed(frames), ids, paths)

    def add_embedded(self, embedded: Embedded, ids: Sequence[str], paths: Sequence[str | None] | None = None) -> None:
        ids = [str(i) for i in ids]
        paths = list(paths) if paths is not None else [None] * len(ids)
        if len(ids) != len(embedded) or len(paths) != len(ids):
            raise ValueError(f"{len(embedded)} frames but {len(ids)} ids and {len(paths)} paths")
        clash = set(ids) & set(self.ids)
        if clash or len(set(ids)) != len(ids):
            raise ValueError(f"reference ids must be unique; repeated: {sorted(clash)[:5]}")
        desc = np.ascontiguousarray(embedded.descriptors, np.float32)
        if self.index is None:
            self.index = faiss.IndexFlatIP(desc.shape[1])
            self.descriptors = desc
        else:
            self.descriptors = np.concatenate([self.descriptors, desc])
        self.index.add(desc)
        self.ids.extend(ids)
        self.paths.extend(str(p) if p is not None else None for p in paths)

    def query(self, frames: Sequence[Frame], k: int = 3) -> list[list[Reference]]:
        """For each frame, its ``k`` most similar normal images, best first."""
        if self.index is None or self.index.ntotal == 0:
            raise RuntimeError(f"reference index for {self.product!r} is empty")
        return self.query_descriptors(self.descriptors_of(frames), k)

    def query_descriptors(self, descriptors: np.ndarray, k: int = 3) -> list[list[Reference]]:
        k = max(1, min(k, self.index.ntotal))
        sims, idx = self.index.search(np.ascontiguousarray(descriptors, np.float32), k)
        return [
            [
                Reference(self.ids[j], self.paths[j], self.product, float(s), rank)
                for rank, (s, j) in enumerate(zip(row_s, row_i))
            ]
            for row_s, row_i in zip(sims, idx)
        ]

    def save(self, directory: str | Path) -> Path:
        if self.index is None:
            raise RuntimeError("nothing to save: the reference index is empty")
        meta = {
            "format": REFS_FORMAT,
            "format_version": REFS_FORMAT_VERSION,
            "product": self.product,
            "config": self.config.model_dump(mode="json"),
            "ids": self.ids,
            "paths": self.paths,
        }
        write_store(directory, REFS_FILES, meta, self.descriptors, self.index)
        if self.defects is not None:
            self.defects.save(Path(directory) / DEFECTS_SUBDIR)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, extractor: FeatureExtractor | None = None) -> "ReferenceIndex":
        meta, descriptors, index = read_store(
            directory, REFS_FILES, REFS_FORMAT, REFS_FORMAT_VERSION, "reference index"
        )
        if len(meta["ids"]) != len(descriptors):
            raise BankFormatError(f"{directory}: {len(descriptors)} descriptors for {len(meta['ids'])} ids")
        refs = cls(meta["product"], PatchCoreConfig.model_validate(meta["config"]), extractor)
        refs.ids, refs.paths = list(meta["ids"]), list(meta["paths"])
        refs.descriptors, refs.index = descriptors, index
        if (Path(directory) / DEFECTS_SUBDIR).is_dir():
            refs.defects = DefectExemplars.load(Path(directory) / DEFECTS_SUBDIR)
        return refs


class DefectExemplars:
    """Labelled defect examples of one product, matched by what their anomaly looks like.

    Each exemplar is the pretrained global descriptor (:func:`exemplar_backbone`) of a close crop
    around the peak of its anomaly map; a suspect frame's crop is labelled by a vote of its nearest
    exemplars: a pretrained backbone types defects far better than the tiny JUDO's own vision tower
    (docs/prefilter.md, History). Labels are the example folders' names; a plant grows its library
    from reviewed verdicts.
    """

    STORE_FORMAT = DEFECTS_FORMAT

    def __init__(self, product: str, backbone: BackboneConfig, extractor: FeatureExtractor | None = None,
                 crop_fraction: float = EXEMPLAR_CROP_FRACTION):
        if extractor is not None and extractor.config != backbone:
            raise ValueError(f"defect exemplars of {product!r} were described with {backbone}, not {extractor.config}")
        self.product = product
        self.backbone = backbone
        self.crop_fraction = crop_fraction
        self._extractor = extractor
        self._preprocess = Preprocessor(PreprocessConfig(size=EXEMPLAR_CROP_SIDE, mode="squash"))
        self.labels: list[str] = []
        self.ids: list[str] = []
        self.descriptors = np.zeros((0, 0), np.float32)
        self.index: faiss.Index | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def types(self) -> list[str] | None:
        """The distinct defect types the library has examples of (None if it is empty)."""
        return sorted(set(self.labels)) or None

    @property
    def extractor(self) -> FeatureExtractor:
        """The backbone the exemplars were described with (loaded on first use, shared)."""
        if self._extractor is None:
            self._extractor = shared_extractor(self.backbone)
        return self._extractor

    def crop_descriptors(self, frames: Sequence[Frame], anomaly_maps: Sequence[np.ndarray]) -> np.ndarray:
        """``(B, dim)`` descriptors of the crops around each frame's anomaly peak."""
        crops = []
        for frame, anomaly_map in zip(frames, anomaly_maps, strict=True):
            rgb = as_rgb_frame(frame)
            top, left, bottom, right = peak_crop_box(resize_map(anomaly_map, *rgb.shape[:2]), self.crop_fraction)
            crops.append(np.ascontiguousarray(rgb[top:bottom, left:right]))
        return self.describe(crops)

    def describe(self, images: Sequence[Frame]) -> np.ndarray:
        """``(B, dim)`` global descriptors of images, each squashed to the exemplar side."""
        batch, placements = self._preprocess([as_rgb_frame(image) for image in images])
        features = self.extractor(batch)
        return global_descriptors(features, valid_cells(placements, self.extractor.config.grid_stride,
                                                        tuple(features.shape[2:])))

    @classmethod
    def build(cls, product: str, frames: Sequence[Frame], anomaly_maps: Sequence[np.ndarray],
              labels: Sequence[str], ids: Sequence[str], batch_size: int = 32,
              backbone: BackboneConfig | None = None, crop_fraction: float = EXEMPLAR_CROP_FRACTION
              ) -> "DefectExemplars":
        """The library of ``frames`` (their anomaly maps, labels and ids); ``backbone`` and
        ``crop_fraction`` default to the chosen ones and are saved with it."""
        if not (len(frames) == len(anomaly_maps) == len(labels) == len(ids)) or not labels:
            raise ValueError(f"need as many (>0) frames, maps, labels and ids; got {len(frames)}, "
                             f"{len(anomaly_maps)}, {len(labels)}, {len(ids)}")
        exemplars = cls(product, backbone or exemplar_backbone(), crop_fraction=crop_fraction)
        exemplars._index(np.concatenate([
            exemplars.crop_descriptors(frames[i:i + batch_size], anomaly_maps[i:i + batch_size])
            for i in range(0, len(frames), batch_size)]), labels, ids)
        return exemplars

    def extend(self, frames: Sequence[Frame], anomaly_maps: Sequence[np.ndarray], labels: Sequence[str],
               ids: Sequence[str]) -> None:
        """Add labelled examples (reviewed frames from the line) to the library, described as in :meth:`build`."""
        if not (len(frames) == len(anomaly_maps) == len(labels) == len(ids)):
            raise ValueError("need as many frames, maps, labels and ids")
        if frames:
            added = self.crop_descriptors(frames, anomaly_maps)
            self._index(np.concatenate([self.descriptors, added]) if len(self) else added,
                        [*self.labels, *labels], [*self.ids, *ids])

    def _index(self, descriptors: np.ndarray, labels: Sequence[str], ids: Sequence[str]) -> None:
        self.descriptors = descriptors
        self.labels, self.ids = [str(label) for label in labels], [str(i) for i in ids]
        self.index = faiss.IndexFlatIP(descriptors.shape[1])
        self.index.add(descriptors)

    def vote(self, descriptors: np.ndarray, k: int = EXEMPLAR_VOTES,
             exclude: Sequence[int | None] | None = None) -> list[str]:
        """The label most of each descriptor's ``k`` nearest exemplars carry (ties: the larger summed
        similarity). ``exclude[i]`` leaves exemplar ``exclude[i]`` out of row ``i``'s vote, so an
        exemplar is labelled as a new frame would be."""
        descriptors = np.ascontiguousarray(np.atleast_2d(descriptors), np.float32)
        exclude = list(exclude) if exclude is not None else [None] * len(descriptors)
        sims, idx = self.index.search(descriptors, min(k + 1, self.index.ntotal))
        out = []
        for row_s, row_i, skip in zip(sims, idx, exclude):
            tally: dict[str, float] = {}
            counts: dict[str, int] = {}
            kept = [(s, j) for s, j in zip(row_s, row_i) if j >= 0 and j != skip][:k]
            for s, j in kept:
                label = self.labels[j]
                counts[label] = counts.get(label, 0) + 1
                tally[label] = tally.get(label, 0.0) + float(s)
            out.append(max(counts, key=lambda label: (counts[label], tally[label])) if kept else None)
        return out

    def label_of(self, frame: Frame, anomaly_map: np.ndarray) -> str | None:
        """The label a suspect frame's anomaly looks most like (None if the library is empty)."""
        if not self.labels:
            return None
        return self.vote(self.crop_descriptors([frame], [anomaly_map]))[0]

    def save(self, directory: str | Path) -> Path:
        if self.index is None:
            raise RuntimeError("nothing to save: no defect exemplars")
        meta = {"format": self.STORE_FORMAT, "format_version": DEFECTS_FORMAT_VERSION, "product": self.product,
                "backbone": self.backbone.model_dump(mode="json"),
                "crop_fraction": self.crop_fraction, "crop_side": EXEMPLAR_CROP_SIDE,
                "labels": self.labels, "ids": self.ids}
        return write_store(directory, DEFECTS_FILES, meta, self.descriptors, self.index)

    @classmethod
    def load(cls, directory: str | Path, extractor: FeatureExtractor | None = None) -> "DefectExemplars":
        meta, descriptors, index = read_store(directory, DEFECTS_FILES, cls.STORE_FORMAT, DEFECTS_FORMAT_VERSION,
                                              "exemplar library")
        if len(meta["labels"]) != len(descriptors):
            raise BankFormatError(f"{directory}: {len(descriptors)} descriptors for {len(meta['labels'])} labels")
        exemplars = cls(meta["product"], BackboneConfig.model_validate(meta["backbone"]), extractor,
                        crop_fraction=meta["crop_fraction"])
        exemplars.labels, exemplars.ids = list(meta["labels"]), list(meta["ids"])
        exemplars.descriptors, exemplars.index = descriptors, index
        return exemplars


class ProductExemplars(DefectExemplars):
    """Normal images of every known product, labelled by product: which product a frame shows.

    The same pretrained descriptor as the defect exemplars, of the whole frame; it names products
    far more reliably than the tiny JUDO's own vision tower (docs/prefilter.md, History). A new
    product is known as soon as its normal images are, with no training.
    """

    STORE_FORMAT = "judo-product-exemplars"

    @classmethod
    def build_products(cls, frames: Sequence[Frame], products: Sequence[str], ids: Sequence[str],
                       extractor: FeatureExtractor, batch_size: int = 32) -> "ProductExemplars":
        if not (len(frames) == len(products) == len(ids)) or not products:
            raise ValueError(f"need as many (>0) frames, products and ids; got {len(frames)}, {len(products)}, {len(ids)}")
        exemplars = cls("*", extractor.config, extractor)
        exemplars._index(np.concatenate([exemplars.describe(frames[i:i + batch_size])
                                         for i in range(0, len(frames), batch_size)]), products, ids)
        return exemplars

    def product_of(self, frame: Frame) -> str | None:
        """The product a frame looks like (None if the library is empty)."""
        return self.vote(self.describe([frame]))[0] if self.labels else None
