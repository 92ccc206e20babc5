"""Write a synthetic dataset that is both an MMAD folder and an MVTec-style folder.

Layout (documented in ``docs/data.md``)::

    OUT/domain_knowledge.json         MMAD schema, dataset "Synthetic"
    OUT/mmad.json                     test split (in-distribution categories)
    OUT/mmad_train.json, mmad_val.json
    OUT/mmad_heldout.json             test split of the held-out categories
    OUT/splits.json                   every image with split, label, mask, bbox
    OUT/Synthetic/<cat>/train/good/         normal train images (fit set, templates)
    OUT/Synthetic/<cat>/validation/good/    normal validation images (calibration)
    OUT/Synthetic/<cat>/test/good/, test/<defect>/, ground_truth/<defect>/<stem>_mask.png
    OUT/Synthetic/<cat>/train_qa/<defect>/, train_qa_ground_truth/<defect>/   defective train images
    OUT/Synthetic/<cat>/val_qa/<defect>/,   val_qa_ground_truth/<defect>/     defective val images

Each split holds as many normal as defective images. Held-out categories get no
defective train/val images and appear only in ``mmad_heldout.json``.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from pydantic import BaseModel

from judo_model.data.knowledge import DATASET_NAME, domain_knowledge
from judo_model.data.questions import LetterBalancer, build_conversation
from judo_model.imaging import encode_png
from judo_model.mmad.format import MMADRecord, write_mmad_json

from .products import PRODUCTS
from .render import render_sample

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
DEFAULT_HELDOUT = ("leather", "washer")
N_TEMPLATES = 8
THUMBNAIL = 16

#: Where a split's normal and defective images go, relative to the category folder.
NORMAL_FOLDER = {"train": "train/good", "val": "validation/good", "test": "test/good"}
DEFECT_FOLDER = {"train": "train_qa", "val": "val_qa", "test": "test"}
MASK_FOLDER = {"train": "train_qa_ground_truth", "val": "val_qa_ground_truth", "test": "ground_truth"}
QUESTION_FILES = {"train": "mmad_train.json", "val": "mmad_val.json", "test": "mmad.json"}
HELDOUT_FILE = "mmad_heldout.json"


class ImageEntry(BaseModel):
    """One generated image: where it is and what is wrong with it."""

    key: str
    category: str
    split: str
    label: str
    mask: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    attributes: dict[str, str] = {}


class SplitsManifest(BaseModel):
    """``splits.json``: how the dataset was made and every image in it."""

    seed: int
    size: int
    categories: list[str]
    heldout: list[str]
    question_files: dict[str, str]
    images: list[ImageEntry]


@dataclass(frozen=True)
class _Job:
    out: str
    category: str
    defect: str | None
    split: str
    index: int
    seed: int
    size: int


@dataclass
class _Result:
    """A written image as the parent process keeps it (mask bit-packed: 8 KB at 256 px)."""

    entry: ImageEntry
    packed_mask: np.ndarray | None
    size: int
    thumbnail: np.ndarray

    @property
    def mask(self) -> np.ndarray | None:
        if self.packed_mask is None:
            return None
        return np.unpackbits(self.packed_mask, count=self.size * self.size).reshape(self.size, self.size).astype(bool)


def category_seed(category: str) -> int:
    """A stable number per category name (independent of the order categories are listed)."""
    return zlib.crc32(category.encode())


def split_counts(images_per_category: int) -> dict[str, int]:
    """Images per split, each even (half normal, half defective) and at least 2."""
    counts = {}
    for split, fraction in zip(SPLITS, SPLIT_FRACTIONS):
        counts[split] = max(2, int(round(images_per_category * fraction / 2)) * 2)
    return counts


def plan_jobs(out: Path, seed: int, categories: Sequence[str], images_per_category: int, size: int,
              heldout: Sequence[str]) -> list[_Job]:
    """Every image to render, with its split and defect, balanced over the category's defects."""
    jobs = []
    for category in categories:
        defects = PRODUCTS[category].defects
        rng = np.random.default_rng([seed, category_seed(category), 7])
        index = 0
        for split, count in split_counts(images_per_category).items():
            half = count // 2
            cycle = [defects[i % len(defects)] for i in range(half)]
            labels: list[str | None] = [None] * half
            if category not in heldout or split == "test":
                labels += [cycle[i] for i in rng.permutation(half)]
            for defect in labels:
                jobs.append(_Job(str(out), category, defect, split, index, seed, size))
                index += 1
    return jobs


def _render_job(job: _Job) -> _Result:
    """Render and write one image (and its mask); runs in a worker process."""
    sample = render_sample(job.category, job.defect, (job.seed, category_seed(job.category), job.index), job.size)
    stem = f"{job.index:04d}"
    category_key = f"{DATASET_NAME}/{job.category}"
    folder = NORMAL_FOLDER[job.split] if job.defect is None else f"{DEFECT_FOLDER[job.split]}/{job.defect}"
    key = f"{category_key}/{folder}/{stem}.png"
    mask_key = None
    if job.defect is not None:
        mask_key = f"{category_key}/{MASK_FOLDER[job.split]}/{job.defect}/{stem}_mask.png"
        _write(Path(job.out) / mask_key, encode_png(sample.mask.astype(np.uint8) * 255))
    _write(Path(job.out) / key, encode_png(sample.image))
    thumbnail = np.asarray(sample.image[:: job.size // THUMBNAIL, :: job.size // THUMBNAIL], np.float32)
    entry = ImageEntry(key=key, category=job.category, split=job.split, label=sample.label, mask=mask_key,
                       bbox=sample.bbox(), attributes=sample.attributes)
    packed = None if sample.mask is None else np.packbits(sample.mask)
    return _Result(entry, packed, job.size, thumbnail)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _relative_mask_path(image_key: str, mask_key: str) -> str:
    """``mask_key`` relative to the first three parts of ``image_key`` (MMAD's convention)."""
    prefix = "/".join(image_key.split("/")[:3])
    return os.path.relpath(mask_key, prefix).replace(os.sep, "/")


def _templates(results: list[_Result], rng: np.random.Generator) -> Callable[[_Result], tuple[list[str], list[str]]]:
    """For a query image: (similar, random) normal train templates of its category."""
    references = [r for r in results if r.entry.split == "train" and r.entry.label == "good"]
    thumbs = np.stack([r.thumbnail.ravel() for r in references]) if references else np.zeros((0, 1))

    def pick(query: _Result) -> tuple[list[str], list[str]]:
        candidates = [i for i, r in enumerate(references) if r.entry.key != query.entry.key]
        distances = ((thumbs[candidates] - query.thumbnail.ravel()) ** 2).mean(axis=1)
        similar = [references[candidates[i]].entry.key for i in np.argsort(distances, kind="stable")[:N_TEMPLATES]]
        chosen = rng.permutation(len(candidates))[:N_TEMPLATES]
        return similar, [references[candidates[i]].entry.key for i in chosen]

    return pick


def _question_records(category: str, seed: int, results: list[_Result]) -> list[tuple[ImageEntry, MMADRecord]]:
    """MMAD records for every image of one category, in index order."""
    rng = np.random.default_rng([seed, category_seed(category), 11])
    balancer = LetterBalancer(rng)
    templates = _templates(results, rng)
    records = []
    for result in results:
        entry = result.entry
        defect = None if entry.label == "good" else entry.label
        similar, random = templates(result)
        records.append((entry, MMADRecord(
            conversation=build_conversation(category, defect, result.mask, entry.attributes, rng, balancer),
            mask_path=_relative_mask_path(entry.key, entry.mask) if entry.mask else "",
            similar_templates=similar,
            random_templates=random,
        )))
    return records


def generate_dataset(out: str | Path, seed: int = 0, categories: Iterable[str] | None = None,
                     images_per_category: int = 100, size: int = 256, heldout: Iterable[str] | None = None,
                     workers: int | None = None, progress: Callable[[Iterable, int], Iterable] | None = None,
                     ) -> SplitsManifest:
    """Render every image, write MMAD question files and ``splits.json``; return the manifest.

    ``progress(iterable, total)`` may wrap the stream of finished images (e.g. with tqdm).
    """
    out = Path(out)
    categories = list(categories) if categories else list(PRODUCTS)
    unknown = [c for c in categories if c not in PRODUCTS]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; known: {', '.join(PRODUCTS)}")
    if heldout is None:
        heldout = [c for c in DEFAULT_HELDOUT if c in categories] if len(categories) >= 6 else []
    heldout = [c for c in heldout if c in categories]
    jobs = plan_jobs(out, seed, categories, images_per_category, size, heldout)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    progress = progress or (lambda it, total: it)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(progress(pool.map(_render_job, jobs, chunksize=8), len(jobs)))
    else:
        results = list(progress(map(_render_job, jobs), len(jobs)))

    per_file: dict[str, dict[str, MMADRecord]] = {name: {} for name in [*QUESTION_FILES.values(), HELDOUT_FILE]}
    for category in categories:
        mine = [r for r in results if r.entry.category == category]
        for entry, record in _question_records(category, seed, mine):
            if category not in heldout:
                per_file[QUESTION_FILES[entry.split]][entry.key] = record
            elif entry.split == "test":
                per_file[HELDOUT_FILE][entry.key] = record
    out.mkdir(parents=True, exist_ok=True)
    for name, records in per_file.items():
        write_mmad_json(out / name, records)
    (out / "domain_knowledge.json").write_text(json.dumps(domain_knowledge(categories), indent=1))
    manifest = SplitsManifest(seed=seed, size=size, categories=categories, heldout=list(heldout),
                              question_files={**QUESTION_FILES, "heldout": HELDOUT_FILE},
                              images=[r.entry for r in results])
    (out / "splits.json").write_text(manifest.model_dump_json(indent=1))
    return manifest
