"""MVTec-style anomaly-detection folders: discovery and samples.

Layout (see ``docs/CONTRACTS.md``)::

    <root>/<category>/train/good/*
    <root>/<category>/validation/good/*          (optional)
    <root>/<category>/test/good/*
    <root>/<category>/test/<defect>/*
    <root>/<category>/ground_truth/<defect>/<stem>_mask.<any extension>

``root`` may be a category folder itself, a dataset folder holding category
folders, or a folder of dataset folders (``/work/shared/data/real``). Pixels are
always read through :mod:`judo_model.imaging`, so sizes and channel counts are
whatever the files hold (grayscale comes back as 3-channel RGB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from judo_model.imaging import load_image, load_mask

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLITS = ("train", "validation", "test")
GOOD = "good"
MASK_SUFFIX = "_mask"


class MVTecLayoutError(ValueError):
    """The folder is not an MVTec-style dataset; the message says what is missing."""


@dataclass(frozen=True)
class MVTecSample:
    """One image of an MVTec-style folder with its label and (optional) mask path."""

    path: Path
    category: str
    split: str
    label: str
    mask_path: Path | None
    dataset: str = ""

    @property
    def is_anomalous(self) -> bool:
        return self.label != GOOD

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def sample_id(self) -> str:
        """Stable id, unique within a category: ``<split>/<label>/<file name>``."""
        return f"{self.split}/{self.label}/{self.path.name}"

    def load_image(self) -> np.ndarray:
        """RGB ``uint8`` ``(H, W, 3)`` via :func:`judo_model.imaging.load_image`."""
        return load_image(self.path)

    def load_mask(self) -> np.ndarray | None:
        """Boolean ``(H, W)`` defect mask; all-False for good images; None if a defect has no mask."""
        if self.mask_path is not None:
            return load_mask(self.mask_path)
        if not self.is_anomalous:
            height, width = self.load_image().shape[:2]
            return np.zeros((height, width), dtype=bool)
        return None


@dataclass(frozen=True)
class MVTecCategory:
    """A category folder (one product) and the dataset folder it sits in."""

    name: str
    root: Path
    dataset: str

    def samples(self, splits: Iterable[str] | None = None) -> list[MVTecSample]:
        return category_samples(self.root, splits=splits, dataset=self.dataset)

    def split(self, split: str, label: str | None = None) -> list[MVTecSample]:
        """Samples of one split, optionally of one label (``good`` or a defect name)."""
        return [s for s in self.samples([split]) if label is None or s.label == label]

    @property
    def has_validation(self) -> bool:
        return (self.root / "validation" / GOOD).is_dir()


def is_category_dir(path: Path) -> bool:
    """A category folder has ``train/good`` or ``test`` below it."""
    path = Path(path)
    return (path / "train" / GOOD).is_dir() or (path / "test").is_dir()


def image_files(folder: Path) -> list[Path]:
    """The image files of one folder, sorted (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def discover_categories(root: str | Path, names: Iterable[str] | None = None) -> list[MVTecCategory]:
    """Category folders under ``root`` (the root itself, its children or grandchildren).

    ``names`` filters by category name (or ``dataset/category``). Raises
    :class:`MVTecLayoutError` when nothing MVTec-like is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise MVTecLayoutError(f"{root} is not a directory")
    found: list[MVTecCategory] = []
    if is_category_dir(root):
        found.append(MVTecCategory(root.name, root, root.parent.name))
    else:
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if is_category_dir(child):
                found.append(MVTecCategory(child.name, child, root.name))
                continue
            for grandchild in sorted(p for p in child.iterdir() if p.is_dir()):
                if is_category_dir(grandchild):
                    found.append(MVTecCategory(grandchild.name, grandchild, child.name))
    if not found:
        raise MVTecLayoutError(
            f"no MVTec-style category under {root} (expected <category>/train/good or <category>/test)"
        )
    if names is not None:
        wanted = set(names)
        selected = [c for c in found if c.name in wanted or f"{c.dataset}/{c.name}" in wanted]
        missing = wanted - {c.name for c in selected} - {f"{c.dataset}/{c.name}" for c in selected}
        if missing:
            known = ", ".join(c.name for c in found)
            raise MVTecLayoutError(f"unknown categories {sorted(missing)} under {root}; found: {known}")
        return selected
    return found


def find_mask(category_dir: Path, label: str, stem: str) -> Path | None:
    """``ground_truth/<label>/<stem>_mask.*`` with any image extension, or None."""
    folder = Path(category_dir) / "ground_truth" / label
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.glob(f"{stem}{MASK_SUFFIX}.*")):
        if candidate.suffix.lower() in IMAGE_EXTENSIONS:
            return candidate
    return None


def category_samples(
    category_dir: str | Path, splits: Iterable[str] | None = None, dataset: str | None = None
) -> list[MVTecSample]:
    """All samples of one category folder, sorted by split, label and file name."""
    category_dir = Path(category_dir)
    if not is_category_dir(category_dir):
        raise MVTecLayoutError(f"{category_dir} is not a category folder (no train/good or test/)")
    wanted = tuple(splits) if splits is not None else SPLITS
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise MVTecLayoutError(f"unknown splits {unknown}; expected some of {SPLITS}")
    dataset = category_dir.parent.name if dataset is None else dataset
    samples: list[MVTecSample] = []
    for split in SPLITS:
        if split not in wanted:
            continue
        split_dir = category_dir / split
        if not split_dir.is_dir():
            continue
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            label = label_dir.name
            for path in image_files(label_dir):
                mask = None if label == GOOD else find_mask(category_dir, label, path.stem)
                samples.append(
                    MVTecSample(path, category_dir.name, split, label, mask, dataset)
                )
    return samples


def iter_samples(
    root: str | Path, categories: Iterable[str] | None = None, splits: Iterable[str] | None = None
) -> list[MVTecSample]:
    """Samples of every category found under ``root`` (see :func:`discover_categories`)."""
    out: list[MVTecSample] = []
    for category in discover_categories(root, categories):
        out.extend(category.samples(splits))
    return out
