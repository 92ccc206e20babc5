"""On-disk format of banks, reference indexes and exemplar libraries: json + npy + faiss, no pickle.

One writer and one reader check format name, version and row counts, so a stale or partial
directory fails with a readable error instead of scoring with the wrong model.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

BANK_FORMAT = "judo-patchcore"
BANK_FORMAT_VERSION = 2
#: metadata, config and calibration (json)
BANK_META = "bank.json"
#: metadata (json), memory bank vectors (npy), faiss index of the bank
BANK_FILES = (BANK_META, "memory.npy", "index.faiss")
#: per-cell normal levels (npy), present when the bank divides by them (``CellLevels``)
CELL_LEVELS_FILE = "cell_levels.npy"


class BankFormatError(ValueError):
    """A saved bank or reference index is missing files or was written by an incompatible version."""


def write_store(directory: str | Path, names: tuple[str, str, str], meta: dict, vectors: np.ndarray,
                index: faiss.Index) -> Path:
    """Save ``meta`` (json), ``vectors`` (npy, no pickle) and a faiss index under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta_name, vectors_name, index_name = names
    np.save(directory / vectors_name, vectors, allow_pickle=False)
    faiss.write_index(index, str(directory / index_name))
    (directory / meta_name).write_text(json.dumps(meta, indent=2))
    return directory


def read_store(directory: str | Path, names: tuple[str, str, str], fmt: str, version: int,
               what: str) -> tuple[dict, np.ndarray, faiss.Index]:
    """Inverse of :func:`write_store`, checking files, format name, version and row counts."""
    directory = Path(directory)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise BankFormatError(f"{directory} is not a {what}: missing {', '.join(missing)}")
    meta_name, vectors_name, index_name = names
    meta = json.loads((directory / meta_name).read_text())
    if meta.get("format") != fmt or meta.get("format_version") != version:
        raise BankFormatError(
            f"{directory}: {what} format {meta.get('format')} v{meta.get('format_version')}, expected {fmt} v{version}"
        )
    vectors = np.load(directory / vectors_name, allow_pickle=False)
    index = faiss.read_index(str(directory / index_name))
    if index.ntotal != len(vectors):
        raise BankFormatError(f"{directory}: index holds {index.ntotal} vectors, the array {len(vectors)}")
    return meta, vectors, index
