"""Training rows a-c with ``judo train`` and scoring checkpoints (and the random baseline) with the MMAD harness."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.ablation.rows import MODE_SUFFIX, RESULTS, ROOT, ROWS, recipe_summary, save_row, subset_file
from judo_model.mmad.answerers import RandomAnswerer
from judo_model.mmad.evaluate import evaluate, write_result
from judo_model.mmad.format import MMADDataset
from judo_model.mmad.judo_answerer import load_juxtaposed_answerer


def cmd_train(args) -> None:
    for row in args.rows:
        flags = ROWS[row][1]
        if flags is None:
            continue
        flags = [f.replace("{main}", str(args.main)) for f in flags]
        command = [sys.executable, "-m", "pipelines.cli", "train", "--stage", "all", "--data", str(args.data),
                   "--out", str(args.runs / row), *flags, *args.extra]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)


def verdict_latency(answerer, data: Path, file: str, count: int) -> dict:
    """Seconds per verdict (think + defect + region, no question) of the reasoner, evidence cached."""
    judo = answerer.judo
    items = list(MMADDataset(data, file))[:count]
    times = []
    for item in items:
        start = time.perf_counter()
        with torch.inference_mode():
            judo.generate(item.template_paths(1)[0], item.image_path, questions=None, max_new_tokens=64)
        times.append(time.perf_counter() - start)
    times = times[1:] or times  # the first call pays one-off allocation
    return {"images": len(times), "p50_ms": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 1), "threads": torch.get_num_threads()}


def cmd_eval(args) -> None:
    torch.set_num_threads(args.threads)
    answerer = load_juxtaposed_answerer(args.checkpoint, args.data, name=f"judo-{args.row}", mode=args.mode,
                                        verdict_first=args.verdict_first)
    result = {"row": args.row, "description": ROWS[args.row][0], "checkpoint": str(args.checkpoint),
              "recipe": recipe_summary(args.checkpoint), "mode": args.mode, "verdict_first": args.verdict_first}
    suffix = MODE_SUFFIX[args.mode]
    for name in args.subsets:
        file = subset_file(args.data, name)
        start = time.time()
        evaluation = evaluate(MMADDataset(args.data, file), answerer, shots=1, use_domain_knowledge=False)
        answers_path = RESULTS / f"{args.row}_{name}{suffix}.json"
        write_result(evaluation, answers_path)
        table = evaluation.table
        result[name] = {
            "accuracy": {c: round(table.cell("Average", c), 1) for c in table.columns},
            "questions": len(evaluation.answers),
            "dropped": len(table.dropped),
            "grounding": evaluation.grounding.as_dict(),
            "seconds": round(time.time() - start, 1),
        }
        print(args.row, name, json.dumps(result[name]), flush=True)
    if args.latency:
        result["latency"] = verdict_latency(answerer, args.data, subset_file(args.data, "test"), args.latency)
        print("latency", result["latency"], flush=True)
    save_row(RESULTS / f"row_{args.row}{suffix}.json", result)



def cmd_random(args) -> None:
    draw = {"row": "random", "description": "random letter (one draw, seed 0)", "checkpoint": "baseline:random"}
    chance = {"row": "chance", "checkpoint": "baseline:random",
              "description": f"chance: the expected accuracy of a uniform guess (mean of {args.draws} random-letter draws)"}
    for name in args.subsets:
        dataset = MMADDataset(args.data, subset_file(args.data, name))
        tables = [evaluate(dataset, RandomAnswerer(seed)).table for seed in range(args.draws)]
        questions = sum(len(item.record.conversation) for item in dataset)
        draw[name] = {"accuracy": {c: round(tables[0].cell("Average", c), 1) for c in tables[0].columns},
                      "questions": questions, "dropped": len(tables[0].dropped)}
        chance[name] = {"accuracy": {c: round(statistics.fmean(t.cell("Average", c) for t in tables), 1)
                                     for c in tables[0].columns},
                        "questions": questions, "dropped": 0,
                        "average_spread": round(statistics.stdev(t.cell("Average", "Average") for t in tables), 1)}
        print(name, "one draw", draw[name]["accuracy"]["Average"], "expected", chance[name]["accuracy"]["Average"],
              "spread of one draw", chance[name]["average_spread"], flush=True)
    for row in (draw, chance):
        save_row(RESULTS / f"row_{row['row']}.json", row)
