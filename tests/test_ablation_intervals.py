"""The ablation's resampling intervals on hand-made MMAD answer rows."""

from __future__ import annotations

import pytest

from benchmarks.ablation.intervals import interval, resampled_averages


def answers(right: list[bool]) -> list[dict]:
    """One Defect Classification question per image, answered right or wrong."""
    return [{"image": f"Synthetic/tile/test/crack/{i:04d}.png",
             "question": {"type": "text", "text": "Question: ? \nA. crack\nB. hole\n"},
             "question_type": "Defect Classification", "correct_answer": "A", "gpt_answer": "A" if ok else "B"}
            for i, ok in enumerate(right)]


def test_rows_are_resampled_on_the_same_images():
    first = answers([True, False] * 10)
    points, draws = resampled_averages([first, first, answers([True] * 20)], resamples=200)
    assert points == [50.0, 50.0, 100.0]
    assert draws.shape == (200, 3)
    assert interval(draws[:, 1] - draws[:, 0]) == (0.0, 0.0)  # a row against itself: exactly no gain
    assert set(draws[:, 2]) == {100.0}
    low, high = interval(draws[:, 0])
    assert 20.0 < low < 50.0 < high < 80.0


def test_rows_on_other_images_are_refused():
    shifted = answers([True] * 20)
    shifted[0] = {**shifted[0], "image": "Synthetic/tile/test/crack/9999.png"}
    with pytest.raises(SystemExit, match="same images"):
        resampled_averages([answers([True] * 20), shifted], resamples=10)
