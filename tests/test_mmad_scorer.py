"""The scorer against a hand-computed table, MMAD's letter parsing and its CSV layout."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from judo_model.mmad.scorer import TYPE_COLUMNS, parse_letter, score_answers

BASELINES = Path(__file__).parent / "fixtures" / "mmad" / "baselines"  # MMAD's published tables, vendored


def _row(image: str, question_type: str, correct: str, given: str) -> dict:
    return {"image": image, "question": {"type": "text", "text": "Question: ?"}, "question_type": question_type,
            "correct_answer": correct, "gpt_answer": given}


def hand_built_answers() -> list[dict]:
    """Two datasets; comments give what each row contributes to the hand-computed table."""
    ds_good, ds_bad = "DS/bottle/test/good/000.png", "DS/bottle/test/crack/001.png"
    loco_good, loco_bad = "LOCO/box/test/good/000.png", "LOCO/box/test/logical/003.png"
    return [
        _row(ds_good, "Anomaly Detection", "B", "B"),  # DS normal 1/2
        _row(ds_good, "Anomaly Detection", "B", "A"),
        _row(ds_bad, "Anomaly Detection", "A", "A"),  # DS abnormal 3/4
        _row(ds_bad, "Anomaly Detection", "A", "A"),
        _row(ds_bad, "Anomaly Detection", "A", "A"),
        _row(ds_bad, "Anomaly Detection", "A", "B"),
        _row(ds_bad, "Defect Classification", "C", "C"),  # DS defect classification 1/4
        _row(ds_bad, "Defect Classification", "C", "D"),
        _row(ds_bad, "Defect Classification", "", "A"),  # invalid: dropped ...
        _row(ds_bad, "Defect Classification", "A", "A"),  # ... and skipped, as MMAD's loop does
        _row(ds_bad, "Defect Classification", "C", "A"),
        _row(ds_bad, "Defect Classification", "C", "B"),
        _row(ds_bad, "Object Structure", "A", "A"),  # DS object analysis 2/4 (merged)
        _row(ds_bad, "Object Structure", "B", "B"),
        _row(ds_bad, "Object Details", "A", "C"),
        _row(ds_bad, "Object Details", "D", "C"),
        _row(loco_good, "Anomaly Detection", "A", "A"),  # LOCO normal 1/1
        _row(loco_bad, "Anomaly Detection", "B", "A"),  # LOCO abnormal 0/2
        _row(loco_bad, "Anomaly Detection", "B", "A"),
        _row(loco_bad, "Defect Classification", "D", "D"),  # LOCO defect classification 2/2
        _row(loco_bad, "Defect Classification", "A", "A"),
    ]


EXPECTED = {
    "DS": {"Anomaly Detection": 62.5, "Defect Classification": 25.0, "Object Analysis": 50.0,
           "Average": 137.5 / 3, "Recall": 75.0, "Precision": 75.0, "F1": 75.0, "Overkill": 50.0, "Miss": 25.0},
    "LOCO": {"Anomaly Detection": 50.0, "Defect Classification": 100.0, "Object Analysis": 0.0,
             "Average": 50.0, "Recall": 0.0, "Precision": 0.0, "F1": 0.0, "Overkill": 0.0, "Miss": 100.0},
}


def test_hand_computed_table():
    table = score_answers(hand_built_answers())
    assert table.rows == ["DS", "LOCO", "Average"]
    assert table.columns == ["Anomaly Detection", "Defect Classification", "Object Analysis", "Average",
                             "Recall", "Precision", "F1", "Overkill", "Miss"]
    for dataset, expected in EXPECTED.items():
        for column, value in expected.items():
            assert table.cell(dataset, column) == pytest.approx(value), (dataset, column)
    for column in table.columns:
        mean = (EXPECTED["DS"][column] + EXPECTED["LOCO"][column]) / 2
        assert table.cell("Average", column) == pytest.approx(mean), column
    assert [r.correct_answer for r in table.dropped] == [""]
    assert [r.gpt_answer for r in table.skipped] == ["A"]


def test_without_mmads_skip_the_row_after_an_invalid_one_counts():
    table = score_answers(hand_built_answers(), skip_after_invalid=False)
    assert table.cell("DS", "Defect Classification") == pytest.approx(2 / 5 * 100)
    assert table.skipped == []


def test_anomaly_detection_is_balanced_not_plain_accuracy():
    rows = [_row("X/c/test/good/0.png", "Anomaly Detection", "B", "B")] * 9
    rows += [_row("X/c/test/bad/0.png", "Anomaly Detection", "A", "B")]
    table = score_answers(rows)
    assert table.cell("X", "Anomaly Detection") == pytest.approx(50.0)
    assert table.cell("X", "Overkill") == 0.0 and table.cell("X", "Miss") == 100.0


@pytest.mark.parametrize("reply,expected", [
    ("B", "B"),
    ("Answer: C.", "C"),
    ("1. Answer: A. 2. Answer: D.", "D"),
    ("I think A, but on reflection the answer is B", "B"),
    ("(E)", "E"),
    ("ABC", "D"),  # no standalone letter: closest option text wins ("ABCD")
    ("a crack in the glass", "A"),
])
def test_letter_parsing_matches_mmad(reply, expected):
    options = {"A": "A crack in the glass", "B": "No.", "C": "Yes.", "D": "ABCD"}
    assert parse_letter(reply, options) == expected


def test_unparseable_reply_without_options_is_invalid():
    assert parse_letter("no idea") == ""


def test_csv_layout_matches_mmads_published_tables(tmp_path):
    published = BASELINES / "answers_1_shot_gpt-4o_accuracy.csv"
    header = published.read_text().splitlines()[0]
    rows = [_row(f"{d}/c/test/{label}/0.png", t, "A", "A") for d in ("DS-MVTec", "VisA")
            for label in ("good", "crack") for t in (*TYPE_COLUMNS[:-1], "Object Structure")]
    path = tmp_path / "answers_accuracy.csv"
    score_answers(rows).to_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == header
    assert [line.split(",")[0] for line in lines[1:]] == ["DS-MVTec", "VisA", "Average"]
    assert lines[1].split(",")[1:] == ["100.0"] * 7 + ["100.0", "100.0", "100.0", "100.0", "0.0", "0.0"]


def test_all_published_tables_are_vendored():
    assert len(list(BASELINES.glob("*.csv"))) == 22, "tests/fixtures/mmad/baselines/ is incomplete"


@pytest.mark.parametrize("path", sorted(BASELINES.glob("*.csv")), ids=lambda p: p.stem)
def test_published_tables_obey_the_rules_we_implement(path):
    """Average = mean of the 7 subtasks, Average row = column mean, Recall = 100 - Miss, F1 = harmonic mean."""
    with open(path) as handle:
        rows = list(csv.reader(handle))
    columns = rows[0][1:]
    table = {r[0]: dict(zip(columns, map(float, r[1:]))) for r in rows[1:]}
    datasets = [name for name in table if name != "Average"]
    for name in datasets:
        line = table[name]
        assert line["Average"] == pytest.approx(sum(line[c] for c in TYPE_COLUMNS) / 7)
        if line["Precision"] + line["Recall"]:
            f1 = 2 * line["Precision"] * line["Recall"] / (line["Precision"] + line["Recall"])
            assert line["F1"] == pytest.approx(f1)
        if "Miss" in line:
            assert line["Recall"] == pytest.approx(100 - line["Miss"])
    for column in columns:
        assert table["Average"][column] == pytest.approx(sum(table[d][column] for d in datasets) / len(datasets))
