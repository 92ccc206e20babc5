"""MMAD's file formats (``mmad.json``, ``domain_knowledge.json``) and a folder loader.

One loader reads both the real MMAD release and our synthetic folders: image keys
are paths relative to the folder root (``<dataset>/<category>/<split>/<label>/<file>``)
and ``mask_path`` is relative to the first three parts of the key, exactly as
MMAD's own tools resolve it.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field, RootModel

ANSWER_LETTERS = ("A", "B", "C", "D", "E")
QUESTION_TYPES = (
    "Anomaly Detection",
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Structure",
    "Object Details",
)
DEFECT_QUESTION_TYPES = QUESTION_TYPES[1:5]
NORMAL_FLAG = "good"
#: Source-dataset names in ``mmad.json`` keys whose knowledge sits under another name.
KNOWLEDGE_ALIASES = {"MVTec-AD": "MVTec", "DS-MVTec": "MVTec"}


class MMADQuestion(BaseModel):
    """One multiple-choice question of an image's conversation."""

    model_config = ConfigDict(extra="allow")

    Question: str
    Options: dict[str, str]
    Answer: str
    type: str


class MMADRecord(BaseModel):
    """All questions and references for one query image."""

    model_config = ConfigDict(extra="allow")

    conversation: list[MMADQuestion]
    mask_path: str = ""
    similar_templates: list[str] = Field(default_factory=list)
    random_templates: list[str] = Field(default_factory=list)


class MMADFile(RootModel[dict[str, MMADRecord]]):
    """The whole of ``mmad.json``: image key -> record."""


class MMADFormatError(ValueError):
    """The folder or file does not follow MMAD's format; the message says where."""


def mask_key(image_key: str, mask_path: str) -> str:
    """Key of the mask file: ``mask_path`` joined to the first three parts of the image key."""
    if not mask_path:
        return ""
    prefix = "/".join(image_key.split("/")[:3])
    return posixpath.normpath(posixpath.join(prefix, mask_path))


def read_mmad_json(path: str | Path) -> dict[str, MMADRecord]:
    """Parse and validate an ``mmad.json``-style file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MMADFormatError(f"cannot read {path}: {exc}") from exc
    try:
        return MMADFile.model_validate(raw).root
    except ValueError as exc:
        raise MMADFormatError(f"{path} is not in MMAD format: {exc}") from exc


def write_mmad_json(path: str | Path, records: dict[str, MMADRecord]) -> None:
    Path(path).write_text(json.dumps({k: v.model_dump() for k, v in records.items()}, indent=1))


@dataclass(frozen=True)
class MMADItem:
    """One query image with resolved paths: what an evaluator iterates over."""

    key: str
    root: Path
    record: MMADRecord

    @property
    def dataset(self) -> str:
        return self.key.split("/")[0]

    @property
    def category(self) -> str:
        return self.key.split("/")[1]

    @property
    def is_normal(self) -> bool:
        return NORMAL_FLAG in self.key

    @property
    def image_path(self) -> Path:
        return self.root / self.key

    @property
    def mask_path(self) -> Path | None:
        key = mask_key(self.key, self.record.mask_path)
        return self.root / key if key else None

    def template_paths(self, shots: int, similar: bool = False) -> list[Path]:
        """The first ``shots`` normal references (MMAD's 1-shot protocol uses random templates)."""
        templates = self.record.similar_templates if similar else self.record.random_templates
        return [self.root / t for t in templates[:shots]]


class MMADDataset:
    """An MMAD-format folder: ``<root>/<questions file>``, images and ``domain_knowledge.json``."""

    def __init__(self, root: str | Path, questions_file: str = "mmad.json"):
        self.root = Path(root)
        questions = self.root / questions_file
        if not questions.is_file():
            raise MMADFormatError(f"{questions} not found (expected an MMAD-format folder)")
        self.records = read_mmad_json(questions)
        knowledge = self.root / "domain_knowledge.json"
        self.domain_knowledge: dict[str, dict[str, dict[str, str]]] = (
            json.loads(knowledge.read_text()) if knowledge.is_file() else {}
        )

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[MMADItem]:
        for key, record in self.records.items():
            yield MMADItem(key, self.root, record)

    def knowledge_text(self, item: MMADItem) -> str | None:
        """The category's expert text, all values joined by newlines as MMAD does; None if absent."""
        dataset = item.dataset if item.dataset in self.domain_knowledge else KNOWLEDGE_ALIASES.get(item.dataset, "")
        entry = self.domain_knowledge.get(dataset, {}).get(item.category)
        if not entry:
            return None
        return "\n".join(entry.values())

    def missing_files(self) -> list[Path]:
        """Images, masks and templates the question file names but the folder lacks."""
        missing = []
        for item in self:
            paths = [item.image_path, *item.template_paths(len(item.record.random_templates))]
            paths += item.template_paths(len(item.record.similar_templates), similar=True)
            if item.mask_path is not None:
                paths.append(item.mask_path)
            missing.extend(p for p in paths if not p.is_file())
        return missing
