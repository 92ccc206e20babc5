"""``judo train``: registered into ``judo_model.cli.REGISTRARS``."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from judo_model.training.recipe import STAGES, Recipe


def _run_train(args: argparse.Namespace) -> int:
    from judo_model.training.pipeline import train

    if args.preset != "tiny":
        raise SystemExit("only --preset tiny trains here (the 3B/7B presets need a GPU host and local weights)")
    overrides = {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name, None) is not None}
    if args.evidence_route == "none":
        overrides["evidence_route"] = None
    if args.no_reference:
        overrides["reference"] = False
    recipe = Recipe(**overrides)
    log = train(args.data, args.out, stage=args.stage, recipe=recipe, init=args.init, curves_png=args.curves,
                train_file=args.train_file)
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
    parser = subparsers.add_parser("train", help="train JUDO: Stage 1 seg, Stage 2 SFT, Stage 3 GRPO")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--data", type=Path, required=True, help="synthetic MMAD-format folder (judo data synth)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--init", type=Path, help="start from this checkpoint (required for --stage grpo)")
    parser.add_argument("--curves", type=Path, help="PNG of the loss / reward curves")
    parser.add_argument("--train-file", default="mmad_train.json")
    parser.add_argument("--evidence-route", choices=["heat", "heat_crop", "heat_crop_text", "none"], default=None)
    parser.add_argument("--no-reference", action="store_true", help="ablation: no juxtaposed normal reference")
    for f in fields(Recipe):
        if f.name in ("evidence_route", "reference"):
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=f"(default {f.default})",
                            type=_arg_type(f.default))
    parser.set_defaults(func=_run_train)
