"""``judo eval mmad`` end to end on a generated folder, the answerer loader and grounding metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from judo_model.imaging import encode_png, load_mask
from judo_model.mmad.answerers import AnswererNotAvailable, GroundedAnswer, MMADQuery
from judo_model.metrics import auroc
from judo_model.mmad.evaluate import evaluate
from judo_model.mmad.format import MMADDataset
from judo_model.mmad.judo_answerer import load_answerer
from pipelines.cli import main
from tests.test_data_dataset import synthetic_dataset  # noqa: F401  (shared session fixture)


def _read_table(path):
    with open(path) as handle:
        rows = list(csv.reader(handle))
    return {r[0]: dict(zip(rows[0][1:], map(float, r[1:]))) for r in rows[1:]}


def test_random_baseline_cli_scores_near_chance(synthetic_dataset, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "answers_1_shot_random.json"
    code = main(["eval", "mmad", "--data", str(synthetic_dataset), "--questions", "mmad_train.json",
                 "--model", "baseline:random", "--shots", "1", "--domain-knowledge", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Anomaly Detection" in printed and "Synthetic" in printed
    answers = json.loads(out.read_text())
    assert set(answers[0]) == {"image", "question", "question_type", "correct_answer", "gpt_answer"}
    table = _read_table(tmp_path / "answers_1_shot_random_accuracy.csv")
    assert list(table) == ["Synthetic", "Average"]
    row = table["Synthetic"]
    assert 35 <= row["Anomaly Detection"] <= 65
    for four_options in ("Defect Classification", "Defect Localization", "Defect Description", "Defect Analysis",
                         "Object Classification", "Object Analysis"):
        assert 10 <= row[four_options] <= 40, (four_options, row[four_options])


def test_limit_counts_images(synthetic_dataset, tmp_path):  # noqa: F811
    out = tmp_path / "few.json"
    assert main(["eval", "mmad", "--data", str(synthetic_dataset), "--model", "baseline:random", "--limit", "3",
                 "--out", str(out)]) == 0
    assert len({a["image"] for a in json.loads(out.read_text())}) == 3


def test_random_baseline_is_seeded_and_answers_with_offered_letters():
    query = MMADQuery("k.png", Path("k.png"), "q?", {"A": "x", "B": "y", "C": "z", "D": "w"},
                      "Defect Classification")
    first, second = load_answerer("baseline:random", seed=3), load_answerer("baseline:random", seed=3)
    replies = [first.answer(query) for _ in range(40)]
    assert replies == [second.answer(query) for _ in range(40)]
    assert set(replies) == set(query.options)


def test_unknown_baseline_gives_a_clear_error():
    with pytest.raises(AnswererNotAvailable, match="baseline:random"):
        load_answerer("baseline:oracle")


class MaskReadingAnswerer:
    """Answers correctly and points at the true defect: the upper bound of every metric."""

    name = "oracle"

    def __init__(self, dataset: MMADDataset):
        self.answers = {(item.key, q.Question): q.Answer for item in dataset for q in item.record.conversation}

    def answer(self, query: MMADQuery) -> GroundedAnswer:
        text = f"Answer: {self.answers[(query.image_key, query.question)]}."
        if query.mask_path is None:
            return GroundedAnswer(text, boxes=[])
        mask = load_mask(query.mask_path)
        return GroundedAnswer(text, mask=mask, anomaly_map=mask.astype(np.float32))


def test_grounding_metrics_for_a_perfect_answerer(synthetic_dataset):  # noqa: F811
    dataset = MMADDataset(synthetic_dataset)
    result = evaluate(dataset, MaskReadingAnswerer(dataset), shots=1)
    assert result.table.cell("Average", "Average") == pytest.approx(100.0)
    defective = sum(not item.is_normal for item in dataset)
    assert result.grounding.images == defective
    assert result.grounding.mean_iou == pytest.approx(1.0)
    assert result.grounding.pixel_auroc == pytest.approx(1.0)


def test_auroc_rank_identity():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(np.array([0, 1]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert auroc([1, 1], [0.2, 0.3]) is None


def test_eval_runs_on_a_folder_laid_out_like_the_real_mmad(tmp_path):
    """Other dataset names, masks two levels up, knowledge under MMAD's 'MVTec' alias."""
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 4:9] = 255
    files = {"MVTec-AD/bottle/test/good/000.png": image, "MVTec-AD/bottle/train/good/001.png": image,
             "MVTec-LOCO/box/test/logical_anomalies/002.png": image,
             "MVTec-LOCO/box/ground_truth/logical_anomalies/002/000.png": mask}
    for key, pixels in files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(encode_png(pixels))
    question = {"Question": "Is there any defect in the object?", "Options": {"A": "Yes.", "B": "No."},
                "Answer": "B", "type": "Anomaly Detection"}
    records = {
        "MVTec-AD/bottle/test/good/000.png": {"conversation": [question], "mask_path": "",
                                              "similar_templates": [], "random_templates": [
                                                  "MVTec-AD/bottle/train/good/001.png"]},
        "MVTec-LOCO/box/test/logical_anomalies/002.png": {
            "conversation": [{**question, "Answer": "A"}, {**question, "type": "Object Structure",
                                                          "Options": {"A": "x", "B": "y", "C": "z"}}],
            "mask_path": "../ground_truth/logical_anomalies/002/000.png",
            "similar_templates": [], "random_templates": []},
    }
    (tmp_path / "mmad.json").write_text(json.dumps(records))
    (tmp_path / "domain_knowledge.json").write_text(json.dumps(
        {"MVTec": {"bottle": {"good": " <Normal>\n Description: round."}}}))
    dataset = MMADDataset(tmp_path)
    assert dataset.missing_files() == []
    bottle = next(iter(dataset))
    assert dataset.knowledge_text(bottle) == " <Normal>\n Description: round."
    out = tmp_path / "answers.json"
    assert main(["eval", "mmad", "--data", str(tmp_path), "--model", "baseline:random",
                 "--domain-knowledge", "--out", str(out)]) == 0
    table = _read_table(tmp_path / "answers_accuracy.csv")
    assert list(table) == ["MVTec-AD", "MVTec-LOCO", "Average"]
    assert set(table["MVTec-AD"]) >= {"Anomaly Detection", "Object Analysis", "Average", "Overkill", "Miss"}


def test_prompt_carries_template_note_knowledge_and_options():
    query = MMADQuery("k.png", Path("k.png"), "Is there any defect in the object?", {"A": "Yes.", "B": "No."},
                      "Anomaly Detection", [Path("t.png")], " <Normal>\n Description: round.", None)
    prompt = query.prompt()
    assert "The first 1 image is the normal sample" in prompt
    assert "Description: round." in prompt and prompt.endswith("A. Yes.\nB. No.\n")


class BoxAnswerer:
    """Points at the bounding box of the true defect: IoU is the mask's share of its box."""

    name = "box"

    def answer(self, query: MMADQuery) -> GroundedAnswer:
        if query.mask_path is None:
            return GroundedAnswer("A")
        rows, cols = np.nonzero(load_mask(query.mask_path))
        size = 96
        return GroundedAnswer("A", boxes=[(cols.min() / size, rows.min() / size, (cols.max() + 1) / size,
                                           (rows.max() + 1) / size)])


def test_box_regions_are_rasterised_for_iou(synthetic_dataset):  # noqa: F811
    dataset = MMADDataset(synthetic_dataset)
    result = evaluate(dataset, BoxAnswerer())
    expected = []
    for item in dataset:
        if item.mask_path is not None:
            mask = load_mask(item.mask_path)
            rows, cols = np.nonzero(mask)
            expected.append(mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)))
    assert result.grounding.mean_iou == pytest.approx(np.mean(expected))
    assert 0.5 < result.grounding.pixel_auroc <= 1.0
