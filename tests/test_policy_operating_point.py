"""Recall-first routing (issue #28 item 1): a recall target sets the threshold where labelled defects
exist (cross-validated on them), the routing budget elsewhere; the point is saved with the bank and
printed by ``judo prefilter fit``; banks saved before it still load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from judo_model.prefilter.calibration import Calibration, choose_operating_point, recall_threshold
from judo_model.prefilter.scorer import PrefilterScorer
from pipelines.cli import main

NORMALS = list(np.random.default_rng(0).lognormal(0.0, 0.1, 40))


def test_recall_threshold_keeps_the_target_share_strictly_above():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert recall_threshold(scores, 0.9) == pytest.approx(1.5)
    assert np.mean(scores > recall_threshold(scores, 0.5)) == 0.5
    assert np.mean(scores > recall_threshold(scores, 1.0)) == 1.0


def test_without_defect_examples_the_budget_decides():
    cal = Calibration.from_normal_scores(NORMALS, 0.05, "validation/good")
    point = choose_operating_point(cal, None, 0.9)
    assert point.mode == "budget" and point.threshold == cal.threshold and point.expected_recall is None
    assert point.routed_share == pytest.approx(0.05, abs=1e-6)
    few = choose_operating_point(cal, [0.5, 0.6], 0.9)
    assert few.mode == "budget" and "fewer than" in few.note and few.expected_recall == 0.0


def test_a_recall_target_routes_more_to_catch_faint_defects_and_never_less_than_the_budget():
    cal = Calibration.from_normal_scores(NORMALS, 0.05, "validation/good")
    faint = list(np.linspace(0.95, 1.4, 20))  # many below the budget threshold (~1.18)
    point = choose_operating_point(cal, faint, 0.9)
    assert point.mode == "recall" and point.threshold < cal.threshold
    assert point.routed_share > 0.05 and 0.7 <= point.expected_recall <= 1.0 and point.folds == 5
    assert np.mean(np.array(faint) > point.threshold) >= 0.9
    strong = list(np.linspace(3.0, 6.0, 20))
    capped = choose_operating_point(cal, strong, 0.9)
    assert capped.threshold == cal.threshold and capped.expected_recall == 1.0 and capped.note


def test_fit_writes_the_point_with_the_bank_and_prints_it_and_old_banks_load(pipeline_banks, tmp_path, capsys):
    data = pipeline_banks["bottle"].parent.parent / "data" / "Synthetic"
    out = tmp_path / "bottle"
    assert main(["prefilter", "fit", "--data", str(data), "--category", "bottle", "--out", str(out),
                 "--target-recall", "0.95"]) == 0
    printed = capsys.readouterr().out
    assert "operating point: recall target 0.95 -> threshold" in printed and "routed share" in printed, printed
    meta = json.loads((out / "bank.json").read_text())
    point = meta["calibration"]["operating_point"]
    assert point["mode"] == "recall" and point["defect_examples"] > 0 and point["expected_recall"] is not None
    assert meta["calibration"]["threshold"] == point["threshold"] <= PrefilterScorer.load(out).threshold + 1e-12
    old = tmp_path / "old"
    shutil.copytree(out, old)
    del meta["calibration"]["operating_point"]  # as a bank saved before this field existed
    (old / "bank.json").write_text(json.dumps(meta))
    loaded = PrefilterScorer.load(old)
    assert loaded.bank.calibration.operating_point is None and loaded.threshold == point["threshold"]
