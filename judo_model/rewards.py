"""JUDO's three GRPO rewards as plain TRL reward functions.

Each has TRL ``GRPOTrainer``'s signature ``reward(completions, **kwargs) -> list[float | None]``;
``kwargs`` carry the dataset columns, one value per completion:

- ``answer``: the correct answer of each question, a letter of ``options`` or content
  text; a list when a sample asks several questions (in question order).
- ``options``: ``{letter: text}`` per question (a list of them for several questions), or None.
- ``gt_boxes``: ground-truth boxes in 0-1000 coordinates, ``[]`` for a normal image.
- ``mask``: ground-truth mask (bool array or image path); takes precedence over ``gt_boxes``.

A reward returns None for a sample it cannot score (no ground truth for it), which TRL
skips when it sums rewards. Every output is read with :func:`judo_model.runtime.output.parse_output`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from judo_model.imaging import load_mask
from judo_model.runtime.output import (
    COORDINATE_SCALE,
    STRUCTURE_CHECKS,
    ParsedOutput,
    boxes_to_mask,
    choose_option,
    normalize_text,
    parse_output,
)


def completion_text(completion: object) -> str:
    """Text of one completion: a string, or TRL's conversational ``[{"role", "content"}]`` form."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def _per_question(value: object) -> list:
    """A sample's per-question column value as a list (one question stored bare)."""
    if value is None:
        return []
    if isinstance(value, (str, Mapping)):
        return [value]
    return list(value)


def _column(kwargs: Mapping, name: str, count: int) -> list:
    values = kwargs.get(name)
    return [None] * count if values is None else list(values)


def answer_is_correct(predicted: str | None, expected: str, options: Mapping[str, str] | None) -> bool:
    """Whether a predicted answer (content) states the expected answer (letter or content)."""
    if predicted is None:
        return False
    if options:
        expected_letter = expected if expected in options else choose_option(expected, options)
        return expected_letter is not None and choose_option(predicted, options) == expected_letter
    return normalize_text(predicted) == normalize_text(expected)


def answer_accuracy_reward(completions: Sequence, **kwargs) -> list[float | None]:
    """Fraction of a sample's questions answered correctly (missing answers are wrong)."""
    answers = _column(kwargs, "answer", len(completions))
    options = _column(kwargs, "options", len(completions))
    rewards: list[float | None] = []
    for completion, expected, sample_options in zip(completions, answers, options, strict=True):
        expected_answers = _per_question(expected)
        if not expected_answers:
            rewards.append(None)
            continue
        question_options = _per_question(sample_options) or [None] * len(expected_answers)
        predicted = list(parse_output(completion_text(completion)).answers)
        predicted += [None] * (len(expected_answers) - len(predicted))
        correct = sum(
            answer_is_correct(p, e, o) for p, e, o in zip(predicted, expected_answers, question_options)
        )
        rewards.append(correct / len(expected_answers))
    return rewards


def _ground_truth_mask(mask: object, gt_boxes: object) -> np.ndarray | None:
    if isinstance(mask, (str, Path)) and str(mask):
        return load_mask(mask)
    if mask is not None and not isinstance(mask, str):
        return np.asarray(mask, dtype=bool)
    if gt_boxes is not None:
        return boxes_to_mask(gt_boxes, COORDINATE_SCALE, COORDINATE_SCALE)
    return None


def region_iou(parsed: ParsedOutput, truth: np.ndarray) -> float:
    """IoU of the predicted boxes, rasterized on ``truth``'s grid, with the true defect pixels.

    Normal image (no true pixels): 1.0 for an empty region, 0.0 for any box.
    An output whose region cannot be read scores 0.0, so omitting the region never pays.
    """
    if not parsed.checks.get("region", False):
        return 0.0
    predicted = boxes_to_mask(parsed.boxes, *truth.shape)
    union = np.logical_or(predicted, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(predicted, truth).sum() / union)


def segmentation_iou_reward(completions: Sequence, **kwargs) -> list[float | None]:
    """IoU between the predicted region and the ground-truth mask or boxes."""
    if "mask" not in kwargs and "gt_boxes" not in kwargs:
        raise ValueError("segmentation_iou_reward needs a 'mask' or 'gt_boxes' dataset column")
    masks = _column(kwargs, "mask", len(completions))
    boxes = _column(kwargs, "gt_boxes", len(completions))
    rewards: list[float | None] = []
    for completion, mask, gt_boxes in zip(completions, masks, boxes, strict=True):
        truth = _ground_truth_mask(mask, gt_boxes)
        rewards.append(None if truth is None else region_iou(parse_output(completion_text(completion)), truth))
    return rewards


def structure_reward(completions: Sequence, **kwargs) -> list[float]:
    """Fraction of format checks passed: tags present and closed, in order, region readable,
    boxes in range, verdict consistent with the region, and (when the ``answer`` column says
    how many questions there are) one answer per question.
    """
    answers = _column(kwargs, "answer", len(completions))
    rewards = []
    for completion, expected in zip(completions, answers, strict=True):
        parsed = parse_output(completion_text(completion))
        passed = [parsed.checks[name] for name in STRUCTURE_CHECKS]
        expected_count = len(_per_question(expected))
        if expected_count:
            passed.append(len(parsed.answers) == expected_count)
        rewards.append(sum(passed) / len(passed))
    return rewards


#: The three JUDO rewards, in the order GRPO's ``reward_weights`` refer to them.
JUDO_REWARD_FUNCTIONS = (answer_accuracy_reward, segmentation_iou_reward, structure_reward)
