"""Paired bootstrap intervals on the stage ladder: each row's average and each step's gain (``compare``)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.ablation.rows import LADDER, MODE_SUFFIX, RESULTS
from judo_model.mmad.scorer import score_answers


def image_groups(answers: list[dict]) -> dict[str, list[dict]]:
    """Answer rows by image, in order: the unit a paired bootstrap resamples."""
    groups: dict[str, list[dict]] = {}
    for answer in answers:
        groups.setdefault(answer["image"], []).append(answer)
    return groups


def resampled_averages(rows: list[list[dict]], resamples: int, seed: int = 0):
    """Each row's MMAD average on its own questions and on ``resamples`` draws of the images with
    replacement, every row scored on the same draw (rows must answer the same images)."""
    groups = [image_groups(answers) for answers in rows]
    if any(set(g) != set(groups[0]) for g in groups):
        raise SystemExit("the answer files do not cover the same images")
    keys = sorted(groups[0])

    def averages(chosen: list[str]) -> list[float]:
        return [score_answers([row for key in chosen for row in g[key]]).cell("Average", "Average") for g in groups]

    rng = np.random.default_rng(seed)
    draws = np.array([averages([keys[i] for i in rng.integers(len(keys), size=len(keys))])
                      for _ in range(resamples)])
    return averages(keys), draws


def interval(values) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return round(float(low), 1), round(float(high), 1)


def cmd_compare(args) -> None:
    """Each ladder row's average and each step's gain, with 95 % intervals from resampled images."""
    results = {"rows": [], "steps": []}
    for subset in args.subsets:
        for mode, suffix in MODE_SUFFIX.items():
            paths = {row: RESULTS / f"{name}_{subset}{suffix}.json" for row, name in LADDER.items()}
            present = [row for row, path in paths.items() if path.is_file()]
            if not present:
                continue
            answers = [json.loads(paths[row].read_text()) for row in present]
            points, draws = resampled_averages(answers, args.resamples)
            images = len(image_groups(answers[0]))
            for i, row in enumerate(present):
                low, high = interval(draws[:, i])
                results["rows"].append({"subset": subset, "mode": mode, "row": row, "average": round(points[i], 1),
                                        "low": low, "high": high, "images": images})
            steps = list(zip(present, present[1:])) + [("a", last) for last in ("d", "shipped") if
                                                        {"a", last} <= set(present)]
            for first, second in steps:
                i, j = present.index(first), present.index(second)
                low, high = interval(draws[:, j] - draws[:, i])
                results["steps"].append({"subset": subset, "mode": mode, "from": first, "to": second,
                                         "difference": round(points[j] - points[i], 1), "low": low, "high": high,
                                         "images": images, "resamples": args.resamples})
                print(json.dumps(results["steps"][-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ladder_steps.json").write_text(json.dumps(results, indent=1))
