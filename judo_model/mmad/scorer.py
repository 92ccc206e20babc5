"""MMAD's accuracy table, computed exactly as MMAD's ``helper/summary.py`` does.

Rules reproduced (see ``../shared/reference/mmad/FORMAT.md`` and the published CSVs):

* one row per source dataset (first path part of the image), in order of first appearance;
* ``Object Structure`` and ``Object Details`` are merged into ``Object Analysis``;
* a cell is correct / total x 100 (0 when the cell is empty), except ``Anomaly Detection``,
  which is the mean of the accuracy on normal images (path contains ``good``) and on
  abnormal images;
* ``Average`` is the row mean of the question-type columns; ``Recall``, ``Precision``, ``F1``
  (abnormal = positive), ``Overkill`` = (1 - normal acc) x 100 and ``Miss`` = (1 - abnormal
  acc) x 100 follow; the ``Average`` row is the column mean over datasets;
* rows whose correct or predicted letter is not A-E are dropped. MMAD drops them with
  ``list.remove`` while iterating the same list, which also skips the row right after each
  dropped one; ``skip_after_invalid=True`` (the default) keeps that so numbers match
  published tables.

Columns come in MMAD's published order; a question type MMAD does not know is
appended after them.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import BaseModel

from .format import ANSWER_LETTERS, NORMAL_FLAG

MERGED_TYPES = {"Object Structure": "Object Analysis", "Object Details": "Object Analysis"}
TYPE_COLUMNS = ("Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
                "Defect Analysis", "Object Classification", "Object Analysis")
DETECTION_COLUMNS = ("Recall", "Precision", "F1", "Overkill", "Miss")
AVERAGE = "Average"
_LETTER = re.compile(r"\b([A-E])\b")


class AnswerRow(BaseModel):
    """One line of an MMAD answers file."""

    image: str
    question: Any = None
    question_type: str
    correct_answer: str
    gpt_answer: str


def parse_letter(reply: str, options: Mapping[str, str] | None = None) -> str:
    """The answer letter in a model reply, as MMAD extracts it.

    The last standalone capital A-E wins; if there is none, the option whose text is
    closest to the reply (``difflib``, no cutoff). Returns ``""`` when neither works.
    """
    letters = _LETTER.findall(reply)
    if letters:
        return letters[-1]
    if options:
        values = list(options.values())
        match = get_close_matches(reply, values, n=1, cutoff=0.0)
        if match:
            return next(letter for letter, text in options.items() if text == match[0])
    return ""


@dataclass
class _Counts:
    total: int = 0
    correct: int = 0

    def add(self, ok: bool) -> None:
        self.total += 1
        self.correct += int(ok)

    @property
    def rate(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class AccuracyTable:
    """Rows (datasets + ``Average``) by columns, values in percent, like MMAD's CSV."""

    rows: list[str]
    columns: list[str]
    values: dict[str, dict[str, float]]
    dropped: list[AnswerRow] = field(default_factory=list)
    skipped: list[AnswerRow] = field(default_factory=list)

    def cell(self, row: str, column: str) -> float:
        return self.values[row][column]

    def to_csv(self, path: str | Path) -> None:
        """Write the table as MMAD does (pandas ``to_csv``: empty corner, full-precision floats)."""
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", *self.columns])
            for row in self.rows:
                writer.writerow([row, *(repr(float(self.values[row][c])) for c in self.columns)])


def _column_order(types: Iterable[str]) -> list[str]:
    seen = list(dict.fromkeys(types))
    return [c for c in TYPE_COLUMNS if c in seen] + [t for t in seen if t not in TYPE_COLUMNS]


def score_answers(answers: Iterable[Mapping[str, Any] | AnswerRow], normal_flag: str = NORMAL_FLAG,
                  skip_after_invalid: bool = True) -> AccuracyTable:
    """Compute MMAD's accuracy table from answer rows (dicts or :class:`AnswerRow`)."""
    rows = [a if isinstance(a, AnswerRow) else AnswerRow.model_validate(a) for a in answers]
    datasets = list(dict.fromkeys(r.image.split("/")[0] for r in rows))
    columns = _column_order(MERGED_TYPES.get(r.question_type, r.question_type) for r in rows)
    cells = {d: {c: _Counts() for c in columns} for d in datasets}
    normal = {d: _Counts() for d in datasets}
    abnormal = {d: _Counts() for d in datasets}
    dropped, skipped = [], []
    index = 0
    while index < len(rows):
        row = rows[index]
        index += 1
        if row.correct_answer not in ANSWER_LETTERS or row.gpt_answer not in ANSWER_LETTERS:
            dropped.append(row)
            if skip_after_invalid and index < len(rows):
                skipped.append(rows[index])
                index += 1
            continue
        dataset = row.image.split("/")[0]
        question_type = MERGED_TYPES.get(row.question_type, row.question_type)
        ok = row.correct_answer == row.gpt_answer
        cells[dataset][question_type].add(ok)
        if question_type == "Anomaly Detection":
            (normal if normal_flag in row.image else abnormal)[dataset].add(ok)

    values: dict[str, dict[str, float]] = {}
    for dataset in datasets:
        line = {c: cells[dataset][c].rate * 100 for c in columns}
        if "Anomaly Detection" in line:
            line["Anomaly Detection"] = (normal[dataset].rate + abnormal[dataset].rate) / 2 * 100
        line[AVERAGE] = sum(line[c] for c in columns) / len(columns)
        if "Anomaly Detection" in columns:
            line.update(_detection_metrics(normal[dataset], abnormal[dataset]))
        values[dataset] = line
    all_columns = columns + [AVERAGE] + (list(DETECTION_COLUMNS) if "Anomaly Detection" in columns else [])
    values[AVERAGE] = {c: sum(values[d][c] for d in datasets) / len(datasets) for c in all_columns} if datasets else {}
    return AccuracyTable(datasets + [AVERAGE], all_columns, values, dropped, skipped)


def _detection_metrics(normal: _Counts, abnormal: _Counts) -> dict[str, float]:
    """Recall, precision, F1 (abnormal is positive), overkill and miss, in percent."""
    true_pos = abnormal.correct
    false_pos = normal.total - normal.correct
    false_neg = abnormal.total - abnormal.correct
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"Recall": recall * 100, "Precision": precision * 100, "F1": f1 * 100,
            "Overkill": (1 - normal.rate) * 100, "Miss": (1 - abnormal.rate) * 100}
