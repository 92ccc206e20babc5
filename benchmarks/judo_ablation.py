"""JUDO ablation: MMAD-format accuracy of each training stage, through the MMAD harness.

Rows (each adds one thing to the row above):

  (a) QA SFT only, no reference image      (b) + juxtaposed normal reference
  (c) + Stage 1 on pretrained evidence     (d) + Stage 2 domain-knowledge SFT
  (e) + Stage 3 GRPO

(d) is the shipped recipe (``judo train --stage all``; its Stage 3 is off, ``--grpo-steps N`` turns
it on for (e)); (a)-(c) are the same recipe with parts switched off, same steps; rows with a digit
(d0, e0, d1, e1) are earlier recipes, kept for comparison. Every row is
scored by :func:`judo_model.mmad.evaluate.evaluate` (MMAD's 1-shot protocol, no domain
knowledge in the prompt) on a balanced subset of the synthetic test split and of the
held-out categories, plus grounding IoU on defective images and verdict latency.

    judo train --stage all --data DATA --out RUNS/main                     # rows d (stages/sft), e
    python benchmarks/judo_ablation.py train --data DATA --runs RUNS --main RUNS/main   # rows c, a, b
    python benchmarks/judo_ablation.py eval  --data DATA --row c --checkpoint RUNS/c [--mode guided|likelihood]
    python benchmarks/judo_ablation.py verdicts --data DATA --name NAME --checkpoint CKPT   # Stage 1 routes
    python benchmarks/judo_ablation.py notes --data DATA --name NAME --checkpoint CKPT   # Stage 0 copy rates
    python benchmarks/judo_ablation.py random --data DATA                  # chance: one draw and the expectation
    python benchmarks/judo_ablation.py eval ... --subsets test_wide heldout_wide   # the ladder rows, wide
    python benchmarks/judo_ablation.py compare                             # ladder steps with 95 % intervals
    python benchmarks/judo_ablation.py report                              # docs/judo_ablation.{md,json}

``verdicts`` scores a checkpoint's verdict (defect yes/no, type) and region (IoU of the boxes and
of the boxes refined by the anomaly map) without any question, on 4 normal + 4 defective test
images per category: the measure for comparing Stage 1 evidence routes. It also reports how often
the model keeps the evidence note's box (of its defect verdicts) and type (of those with a hint).

The sub-commands live in ``benchmarks/ablation/``: rows.py (rows, subsets, result files),
scoring.py (train, eval, random), probes.py (verdicts, region-cut, hint-sweep, notes),
intervals.py (compare) and report.py (report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

from benchmarks.ablation.intervals import cmd_compare  # noqa: E402
from benchmarks.ablation.probes import cmd_hint_sweep, cmd_notes, cmd_region_cut, cmd_verdicts  # noqa: E402
from benchmarks.ablation.report import cmd_report  # noqa: E402
from benchmarks.ablation.rows import MODE_SUFFIX, ROWS  # noqa: E402
from benchmarks.ablation.scoring import cmd_eval, cmd_random, cmd_train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train rows a-c (and c-heat) with judo train")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--runs", type=Path, required=True)
    train.add_argument("--rows", nargs="+", default=["c", "a", "b"])
    train.add_argument("--main", type=Path, help="the shipped recipe's run folder (judo train --stage all --out)")
    train.add_argument("extra", nargs="*", help="extra judo train flags, after --")
    train.set_defaults(func=cmd_train)
    ev = commands.add_parser("eval", help="score one row's checkpoint")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--row", choices=list(ROWS), required=True)
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--subsets", nargs="+", default=["test", "heldout"])
    ev.add_argument("--latency", type=int, default=0, help="also time N verdicts")
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--mode", choices=list(MODE_SUFFIX), default="generate")
    ev.add_argument("--verdict-first", action="store_true", help="answers written after the question-free verdict")
    ev.set_defaults(func=cmd_eval)
    verdicts = commands.add_parser("verdicts", help="verdict, type and region of one checkpoint, no questions")
    verdicts.add_argument("--data", type=Path, required=True)
    verdicts.add_argument("--name", required=True)
    verdicts.add_argument("--checkpoint", type=Path, required=True)
    verdicts.add_argument("--threads", type=int, default=1)
    verdicts.set_defaults(func=cmd_verdicts)
    cut = commands.add_parser("region-cut", help="choose the box refinement's cut on the validation split")
    cut.add_argument("--data", type=Path, required=True, help="the training data (its mmad_val.json and evidence)")
    cut.add_argument("--checkpoint", type=Path, required=True)
    cut.add_argument("--threads", type=int, default=1)
    cut.set_defaults(func=cmd_region_cut)
    hints = commands.add_parser("hint-sweep", help="choose the defect exemplars' blocks and crop on train and val")
    hints.add_argument("--data", type=Path, required=True)
    hints.add_argument("--top", type=int, default=12, help="rows of the printed table")
    hints.set_defaults(func=cmd_hint_sweep)
    notes = commands.add_parser("notes", help="Stage 0 copy rates of one checkpoint on fresh text-only notes")
    notes.add_argument("--data", type=Path, required=True, help="the training data (for its defect titles)")
    notes.add_argument("--name", required=True)
    notes.add_argument("--checkpoint", type=Path, required=True)
    notes.add_argument("--count", type=int, default=100)
    notes.add_argument("--threads", type=int, default=1)
    notes.set_defaults(func=cmd_notes)
    rnd = commands.add_parser("random", help="score the random-letter baseline on the same subsets")
    rnd.add_argument("--data", type=Path, required=True)
    rnd.add_argument("--subsets", nargs="+", default=["test", "heldout", "test_wide", "heldout_wide"])
    rnd.add_argument("--draws", type=int, default=200, help="random-letter draws averaged into the chance row")
    rnd.set_defaults(func=cmd_random)
    compare = commands.add_parser("compare", help="each ladder step's gain with a paired bootstrap interval")
    compare.add_argument("--subsets", nargs="+", default=["test_wide", "heldout_wide"])
    compare.add_argument("--resamples", type=int, default=2000)
    compare.set_defaults(func=cmd_compare)
    report = commands.add_parser("report", help="write docs/judo_ablation.md and .json")
    report.add_argument("--note", action="append", default=[])
    report.add_argument("--notes-file", type=Path, help="a JSON list of notes (e.g. the current report's notes)")
    report.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
