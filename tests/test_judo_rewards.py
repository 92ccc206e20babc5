"""GRPO rewards on hand-made completions with exact expected values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from judo_model.runtime.output import format_target
from judo_model.rewards import (
    JUDO_REWARD_FUNCTIONS,
    answer_accuracy_reward,
    completion_text,
    segmentation_iou_reward,
    structure_reward,
)

YES_NO = {"A": "Yes", "B": "No"}
TYPES = {"A": "Crack", "B": "Scratch", "C": "Hole"}


def output(answers=(), boxes=(), defect=None, reasoning="r"):
    defect = bool(boxes) if defect is None else defect
    return format_target(reasoning=reasoning, defect=defect, defect_type="crack" if defect else None,
                         boxes=boxes, answers=answers)


def test_answer_accuracy_single_question():
    completions = [output(["Yes"], [[0, 0, 10, 10]]), output(["No"]), "B", output(["yes."], [[0, 0, 10, 10]])]
    rewards = answer_accuracy_reward(completions, answer=["A", "A", "B", "A"], options=[YES_NO] * 4)
    # a bare letter outside the contract has no <answer>, so it scores 0
    assert rewards == [1.0, 0.0, 0.0, 1.0]


def test_answer_accuracy_several_questions_counts_each():
    completions = [
        output(["Yes", "Scratch"], [[0, 0, 10, 10]]),
        output(["Yes", "Hole"], [[0, 0, 10, 10]]),
        output(["Yes"], [[0, 0, 10, 10]]),  # second answer missing
    ]
    rewards = answer_accuracy_reward(
        completions, answer=[["A", "B"], ["A", "B"], ["A", "B"]], options=[[YES_NO, TYPES]] * 3
    )
    assert rewards == [1.0, 0.5, 0.5]


def test_answer_accuracy_with_content_answers_and_no_options():
    completions = [output(["Scratch"], [[1, 1, 5, 5]]), output(["crack"], [[1, 1, 5, 5]]), output()]
    rewards = answer_accuracy_reward(completions, answer=["scratch", "Scratch", None])
    assert rewards == [1.0, 0.0, None]


def test_answer_given_as_content_is_matched_through_the_options():
    rewards = answer_accuracy_reward([output(["Hole"], [[0, 0, 9, 9]])], answer=["Hole"], options=[TYPES])
    assert rewards == [1.0]


def test_conversational_completions_are_read():
    message = [{"role": "assistant", "content": output(["No"])}]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": output(["No"])}]}]
    assert completion_text(parts) == output(["No"])
    assert answer_accuracy_reward([message, parts], answer=["B", "B"], options=[YES_NO, YES_NO]) == [1.0, 1.0]


def test_segmentation_iou_against_boxes():
    truth = [[0, 0, 500, 1000]]
    completions = [
        output(boxes=[[0, 0, 500, 1000]]),  # exact
        output(boxes=[[250, 0, 750, 1000]]),  # half overlap: 250 / 750
        output(boxes=[[600, 0, 1000, 1000]]),  # disjoint
        output(),  # says normal
        "<think>r</think><defect>yes</defect>",  # no region at all
    ]
    rewards = segmentation_iou_reward(completions, gt_boxes=[truth] * 5)
    assert rewards == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 0.0])


def test_segmentation_iou_on_normal_images():
    rewards = segmentation_iou_reward(
        [output(), output(boxes=[[0, 0, 10, 10]]), "<think>r</think><defect>no</defect>"], gt_boxes=[[], [], []]
    )
    assert rewards == [1.0, 0.0, 0.0]



def test_an_empty_region_pays_only_on_a_normal_image():
    completions = [output(), output(boxes=[[0, 0, 10, 10]]), output(), output(boxes=[[0, 0, 500, 1000]])]
    rewards = segmentation_iou_reward(completions, gt_boxes=[[], [], [[0, 0, 500, 1000]], [[0, 0, 500, 1000]]])
    # an empty region is right for a normal image only; a defect's exact box earns as much
    assert rewards == pytest.approx([1.0, 0.0, 0.0, 1.0])

def test_segmentation_iou_against_a_mask_array_and_a_mask_file(tmp_path):
    mask = np.zeros((100, 200), dtype=bool)
    mask[0:50, 0:100] = True  # the top-left quarter
    path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    completions = [output(boxes=[[0, 0, 500, 500]]), output(boxes=[[0, 0, 500, 1000]])]
    for column in ([mask, mask], [str(path), path]):
        assert segmentation_iou_reward(completions, mask=column) == pytest.approx([1.0, 0.5])


def test_segmentation_without_ground_truth_is_skipped_or_refused():
    assert segmentation_iou_reward([output()], gt_boxes=[None], mask=[None]) == [None]
    with pytest.raises(ValueError, match="mask"):
        segmentation_iou_reward([output()], answer=["A"])


def test_structure_reward_counts_passed_checks():
    good = output(["Yes"], [[0, 0, 10, 10]])
    completions = [
        good,
        good + " trailing words",  # order/layout fails: 4/5 checks
        "<think>r</think><defect>yes</defect><region>[[0, 0, 2000, 10]]</region>",  # boxes fail
        "<think>r</think><defect>no</defect><region>oops</region>",  # region, boxes, consistent fail
        "plain text",  # nothing passes
    ]
    assert structure_reward(completions) == pytest.approx([1.0, 0.8, 0.8, 0.4, 0.0])


def test_structure_reward_checks_answer_count_when_questions_are_known():
    completions = [output(["Yes"], [[0, 0, 10, 10]]), output(["Yes", "Crack"], [[0, 0, 10, 10]])]
    rewards = structure_reward(completions, answer=[["A", "A"], ["A", "A"]])
    assert rewards == pytest.approx([5 / 6, 1.0])


def test_rewards_have_trl_signature_and_names():
    kwargs = dict(prompts=["p"], completion_ids=[[1]], answer=["A"], options=[YES_NO], gt_boxes=[[]],
                  trainer_state=None)
    for reward in JUDO_REWARD_FUNCTIONS:
        values = reward(completions=[output(["Yes"])], **kwargs)
        assert len(values) == 1
    assert [f.__name__ for f in JUDO_REWARD_FUNCTIONS] == [
        "answer_accuracy_reward", "segmentation_iou_reward", "structure_reward"
    ]
