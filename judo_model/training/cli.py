"""``judo train``: registered into ``judo_model.cli.REGISTRARS``; one flag per recipe option.

A stage's option is ``--<stage>-<option>`` (``--note-steps``, ``--sft-domain-knowledge-prob``), a
shared one ``--<option>``; ``--evidence-route none`` and ``--no-reference`` switch the evidence and
the reference image off (ablation rows a and b). ``--preset qwen2.5-vl-3b|qwen2.5-vl-7b --base DIR`` trains
LoRA adapters on a local Qwen2.5-VL folder; ``--ray-workers N`` (added by ``pipelines/train_cli.py``, since
Ray lives above this package) runs one supervised stage as a Ray Train job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from judo_model.runtime.evidence import EVIDENCE_ROUTES
from judo_model.training.recipe import STAGES, Recipe, option_values

#: Shared options with a flag of their own form.
_SPECIAL = ("reference", "evidence_route")


def _dest(stage: str | None, name: str) -> str:
    return name if stage is None else f"{stage}_{name}"


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe the command line asks for: the defaults with every given flag applied."""
    values = {key: getattr(args, _dest(*key)) for key, _ in option_values(Recipe())
              if key[1] not in _SPECIAL and getattr(args, _dest(*key)) is not None}
    if args.evidence_route is not None:
        values[None, "evidence_route"] = None if args.evidence_route == "none" else args.evidence_route
    if args.no_reference:
        values[None, "reference"] = False
    return Recipe().with_values(values)


def _run_train(args: argparse.Namespace) -> int:
    # CLI start-up: training loads torch, transformers and TRL; `judo kafka status` must not pay for them
    from judo_model.training.pipeline import train
    log = train(args.data, args.out, stage=args.stage, recipe=recipe_from_args(args), init=args.init,
                curves_png=args.curves, train_file=args.train_file, preset=args.preset, base=args.base)
    return print_training_log(log, args)


def print_training_log(log, args: argparse.Namespace) -> int:
    """One line per stage (steps, seconds, last values), then where the checkpoint and curves are."""
    for stage in log.stages:
        last = {k: round(v[-1], 4) for k, v in stage["values"].items() if v}
        print(f"{stage['stage']}: {len(stage['steps'])} steps in {stage['seconds']:.0f} s, last {last}")
    print(f"checkpoint: {args.out}" + (f"\ncurves: {args.curves}" if args.curves else ""))
    return 0


def _yes_no(text: str) -> bool:
    if text.lower() not in ("yes", "no", "true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return text.lower() in ("yes", "true", "1")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _arg_type(default):
    if isinstance(default, bool):
        return _yes_no
    return _floats if isinstance(default, tuple) else type(default)


def register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train JUDO: Stage 0 notes, 1 seg, 2 SFT, 3 GRPO")
    parser.add_argument("--preset", default="tiny", help="tiny (from scratch), qwen2.5-vl-3b or qwen2.5-vl-7b (--base)")
    parser.add_argument("--base", type=Path, help="3B/7B presets: the local Qwen2.5-VL folder to adapt (LoRA)")
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--data", type=Path, required=True, help="synthetic MMAD-format folder (judo data synth)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--init", type=Path, help="start from this checkpoint (required for --stage grpo)")
    parser.add_argument("--curves", type=Path, help="PNG of the loss / reward curves")
    parser.add_argument("--train-file", default="mmad_train.json")
    parser.add_argument("--evidence-route", choices=[*EVIDENCE_ROUTES, "none"], default=None)
    parser.add_argument("--no-reference", action="store_true", help="ablation: no juxtaposed normal reference")
    for (stage, name), default in option_values(Recipe()):
        if name in _SPECIAL:
            continue
        dest = _dest(stage, name)
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, help=f"(default {default})",
                            type=_arg_type(default))
    parser.set_defaults(func=_run_train)
