"""Learning from the line: a product's bank folder grown from frames an operator reviewed.

A confirmed false alarm becomes a normal image of the bank (incremental add, the threshold kept),
a relabelled or confirmed defect an exemplar of the product's defect library, and every reviewed
frame an image of an MVTec/MMAD-layout folder for retraining JUDO. The bank's ``revision`` is bumped
once per update and the update is recorded in ``bank.json`` under ``feedback``; a running prefilter
reloads the folder when that file changes (``actors/prefilter.py``). No Kafka or Ray here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from judo_model.data.knowledge import defect_title
from judo_model.data.mvtec import GOOD
from judo_model.imaging import encode_png
from judo_model.mmad.format import MMADQuestion, MMADRecord, write_mmad_json
from judo_model.prefilter.bank_format import BANK_FILES, BANK_META, CELL_LEVELS_FILE
from judo_model.prefilter.features import FeatureExtractor
from judo_model.prefilter.patchcore import PatchCoreBank
from judo_model.prefilter.references import REFERENCES_SUBDIR, DefectExemplars, ReferenceIndex
from judo_model.prefilter.scorer import PrefilterScorer

#: ``bank.json`` key holding the update history (one entry per revision an update made)
FEEDBACK_META_KEY = "feedback"
#: where the update keeps the reviewed images inside the bank folder (references point at them)
FEEDBACK_SUBDIR = "feedback"
#: a false alarm added to the bank must score below this fraction of the threshold afterwards
FALSE_ALARM_MARGIN = 0.9
#: label of a defect the operator did not type (a missed defect, a confirmed verdict without a type)
UNKNOWN = "unknown"
#: dataset name of the retraining folder (``<out>/<DATASET>/<product>/...``, MMAD keys start with it)
DATASET = "Feedback"


def review_label(action: str, verdict_is_anomalous: bool, verdict_defect_type: str | None,
                 defect_type: str | None) -> str:
    """What the operator says the frame shows: ``good`` or a defect type in canonical form
    (``Broken Large`` -> ``broken_large``; ``unknown`` when untyped).

    ``confirm`` keeps the verdict's call, ``reject`` inverts it (a rejected flag is a false alarm, a
    rejected pass a missed defect), ``relabel`` names the type.
    """
    if action == "relabel":
        if not defect_type or not _canonical(defect_type):
            raise ValueError("relabel needs a defect type")
        return _canonical(defect_type)
    if action == "confirm":
        return (_canonical(verdict_defect_type or "") or UNKNOWN) if verdict_is_anomalous else GOOD
    if action == "reject":
        return GOOD if verdict_is_anomalous else UNKNOWN
    raise ValueError(f"unknown feedback action {action!r}")


@dataclass
class ReviewedFrame:
    """One frame an operator judged, with its pixels (RGB uint8) and the label the judgement gives."""

    frame_id: str
    product: str
    image: np.ndarray
    label: str
    feedback_id: str
    action: str
    operator: str = ""
    comment: str = ""
    verdict_is_anomalous: bool | None = None
    model_version: str = ""

    @property
    def is_false_alarm(self) -> bool:
        """A flagged frame the operator says is normal: what the bank learns from."""
        return self.label == GOOD and bool(self.verdict_is_anomalous)


@dataclass
class BankUpdate:
    """What one update did to one product's bank folder (also written into ``bank.json``)."""

    product: str
    revision_before: int
    revision: int
    threshold: float
    normal_frames: list[str] = field(default_factory=list)
    patches_added: int = 0
    patches_pinned: int = 0
    scores_before: list[float] = field(default_factory=list)
    scores_after: list[float] = field(default_factory=list)
    defect_frames: list[str] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    feedback_ids: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def applied_feedback_ids(bank_dir: str | Path) -> set[str]:
    """Feedback ids already applied to a bank (so a repeated apply after a crash adds nothing twice)."""
    meta = json.loads((Path(bank_dir) / BANK_META).read_text())
    return {fid for entry in meta.get(FEEDBACK_META_KEY) or [] for fid in entry.get("feedback_ids", [])}


def update_bank_folder(bank_dir: str | Path, reviewed: Sequence[ReviewedFrame],
                       extractor: FeatureExtractor | None = None) -> BankUpdate | None:
    """Apply one product's reviewed frames to its bank folder; None when nothing new was applied.

    False alarms are added to the memory bank with :meth:`PatchCoreBank.update` (k-center greedy
    from the current bank, within its coverage radius), and any of their patches still scoring above
    :data:`FALSE_ALARM_MARGIN` x threshold are added as well, so the reviewed frame itself passes from
    now on. The calibration is kept: adding normal patches only lowers scores, so the routing rate on
    normal frames stays within its target (docs/prefilter.md, "Learning from the line"). False alarms
    also join the reference index; typed defects join the defect library. Files are replaced one by
    one with ``bank.json`` last, the file a running prefilter watches.
    """
    bank_dir = Path(bank_dir)
    done = applied_feedback_ids(bank_dir)
    fresh = [r for r in reviewed if r.feedback_id not in done]
    normals = [r for r in fresh if r.is_false_alarm]
    defects = [r for r in fresh if r.label not in (GOOD, UNKNOWN)]
    if not normals and not defects:
        return None
    scorer = PrefilterScorer.load(bank_dir, extractor)
    bank = scorer.bank
    used = {id(r) for r in [*normals, *defects]}
    report = BankUpdate(bank.product, bank.revision, bank.revision, scorer.threshold,
                        feedback_ids=[r.feedback_id for r in fresh],
                        skipped=[r.frame_id for r in fresh if id(r) not in used])
    references = ReferenceIndex.load(bank_dir / REFERENCES_SUBDIR, bank.embedder.extractor)
    if normals:
        _add_normals(bank, scorer.threshold, references, normals, bank_dir, report)
    else:
        bank.revision += 1  # the folder changed (its library): a new version all the same
    if defects:
        _add_defects(bank, references, defects, bank_dir, report)
    report.revision = bank.revision
    references.save(bank_dir / REFERENCES_SUBDIR)
    _replace_bank(bank, bank_dir, report)
    return report


def _add_normals(bank: PatchCoreBank, threshold: float, references: ReferenceIndex,
                 normals: Sequence[ReviewedFrame], bank_dir: Path, report: BankUpdate) -> None:
    images = [r.image for r in normals]
    report.normal_frames = [r.frame_id for r in normals]
    report.scores_before = [float(s) for s in bank.score(images).scores]
    report.patches_added = bank.update(images)
    report.patches_pinned = _pin(bank, images, FALSE_ALARM_MARGIN * threshold)
    report.scores_after = [float(s) for s in bank.score(images).scores]
    ids, paths = [], []
    for r in normals:
        ref_id = f"{FEEDBACK_SUBDIR}/{r.frame_id}"
        if ref_id in references.ids:
            continue
        ids.append(ref_id)
        paths.append(str(_save_image(bank_dir / FEEDBACK_SUBDIR / GOOD, r).resolve()))
    if ids:
        references.add([r.image for r in normals if f"{FEEDBACK_SUBDIR}/{r.frame_id}" in ids], ids, paths)


def _pin(bank: PatchCoreBank, images: Sequence[np.ndarray], target: float) -> int:
    """Add the patches of ``images`` that still score above ``target`` to the bank; returns how many."""
    embedded = bank.embed(images)
    result = bank.score_embedded(embedded)
    hot = (result.grids > target) & embedded.valid
    chosen = hot[embedded.valid]  # patches() lists the valid cells in the grids' order
    if not chosen.any():
        return 0
    new = np.ascontiguousarray(embedded.patches()[chosen])
    bank.memory = np.concatenate([bank.memory, new])
    bank.index.add(new)
    return int(len(new))


def _add_defects(bank: PatchCoreBank, references: ReferenceIndex, defects: Sequence[ReviewedFrame],
                 bank_dir: Path, report: BankUpdate) -> None:
    library = references.defects
    known = {_canonical(label): label for label in (library.labels if library is not None else [])}
    ids = set(library.ids) if library is not None else set()
    chosen = [r for r in defects if f"{FEEDBACK_SUBDIR}/{r.frame_id}" not in ids]
    if not chosen:
        return
    images = [r.image for r in chosen]
    scored = bank.score(images)
    maps = [scored.anomaly_map(i) for i in range(len(chosen))]
    labels = [known.get(_canonical(r.label)) or defect_title(bank.product, r.label) for r in chosen]
    new_ids = [f"{FEEDBACK_SUBDIR}/{r.frame_id}" for r in chosen]
    if library is None:
        references.defects = DefectExemplars.build(bank.product, images, maps, labels, new_ids)
    else:
        library.extend(images, maps, labels, new_ids)
    for r in chosen:
        _save_image(bank_dir / FEEDBACK_SUBDIR / r.label, r)
    report.defect_frames = [r.frame_id for r in chosen]
    report.defect_types = sorted(set(labels))


def _canonical(label: str) -> str:
    return "_".join("".join(ch if ch.isalnum() else " " for ch in label.lower()).split())


def _save_image(folder: Path, reviewed: ReviewedFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_file_stem(reviewed.frame_id)}.png"
    _write_atomic(path, encode_png(reviewed.image))
    return path


def _file_stem(frame_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in frame_id)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _replace_bank(bank: PatchCoreBank, bank_dir: Path, report: BankUpdate) -> None:
    """Save ``bank`` beside ``bank_dir`` and move its files in, ``bank.json`` last; keeps the keys other
    tools wrote into ``bank.json`` and appends this update to its history."""
    old_meta = json.loads((bank_dir / BANK_META).read_text())
    with tempfile.TemporaryDirectory(prefix=".update-", dir=bank_dir) as tmp:
        bank.save(tmp)
        meta = {**old_meta, **json.loads((Path(tmp) / BANK_META).read_text())}
        meta[FEEDBACK_META_KEY] = [*(old_meta.get(FEEDBACK_META_KEY) or []),
                                   {**report.to_dict(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
        (Path(tmp) / BANK_META).write_text(json.dumps(meta, indent=2))
        for name in (*[n for n in BANK_FILES if n != BANK_META], CELL_LEVELS_FILE, BANK_META):
            if (Path(tmp) / name).exists():
                os.replace(Path(tmp) / name, bank_dir / name)


# --------------------------------------------------------------------------- retraining folder


def write_review_folder(out: str | Path, reviewed: Sequence[ReviewedFrame]) -> Path:
    """Add reviewed frames to ``out`` in the MVTec layout (``Feedback/<product>/train/good``,
    ``Feedback/<product>/test/<type>``) and rewrite ``out/mmad.json`` over every image there.

    A frame judged again moves to its new label. ``reviews.jsonl`` keeps who judged what. The folder
    is what ``judo prefilter fit`` and JUDO's training read (docs/data.md).
    """
    out = Path(out)
    root = out / DATASET
    for r in reviewed:
        stem = _file_stem(r.frame_id)
        for old in root.glob(f"{r.product}/*/*/{stem}.png"):
            old.unlink()
        split = "train" if r.label == GOOD else "test"
        _save_image(root / r.product / split / r.label, r)
    with (out / "reviews.jsonl").open("a") as log:
        for r in reviewed:
            log.write(json.dumps({"frame_id": r.frame_id, "product": r.product, "label": r.label,
                                  "feedback_id": r.feedback_id, "action": r.action, "operator": r.operator,
                                  "comment": r.comment, "verdict_is_anomalous": r.verdict_is_anomalous,
                                  "model_version": r.model_version}) + "\n")
    write_mmad_json(out / "mmad.json", _mmad_records(out))
    return out


def _mmad_records(out: Path) -> dict[str, MMADRecord]:
    """One record per image of the folder: an Anomaly Detection question, and for a typed defect of a
    product with two or more known types a Defect Classification question among them."""
    records: dict[str, MMADRecord] = {}
    for product_dir in sorted(p for p in (out / DATASET).iterdir() if p.is_dir()) if (out / DATASET).is_dir() else []:
        goods = sorted(product_dir.glob(f"train/{GOOD}/*.png"))
        types = sorted(p.name for p in (product_dir / "test").iterdir() if p.is_dir() and p.name != UNKNOWN) \
            if (product_dir / "test").is_dir() else []
        templates = [str(p.relative_to(out)) for p in goods[:3]]
        for image in sorted(product_dir.glob("*/*/*.png")):
            label = image.parent.name
            questions = [MMADQuestion(Question="Is there any defect in the object?",
                                      Options={"A": "Yes.", "B": "No."},
                                      Answer="B" if label == GOOD else "A", type="Anomaly Detection")]
            if label not in (GOOD, UNKNOWN) and len(types) > 1:
                options = dict(zip("ABCDE", [t.replace("_", " ") for t in types[:5]]))
                letter = next((k for k, v in options.items() if v == label.replace("_", " ")), None)
                if letter:
                    questions.append(MMADQuestion(Question="What type of defect is in the object?", Options=options,
                                                  Answer=letter, type="Defect Classification"))
            key = str(image.relative_to(out))
            records[key] = MMADRecord(conversation=questions,
                                      similar_templates=[t for t in templates if t != key])
    return records
