"""``judo data ...`` and ``judo eval ...``: the data and evaluation subcommands.

``pipelines/cli.py`` calls :func:`register`. Each command group is one function in
:data:`REGISTRARS`; another area (e.g. training) adds its group by appending its
own ``register_x(subparsers)`` there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Callable

from rich.console import Console
from tqdm import tqdm

from judo_model.data.contact_sheet import draw_contact_sheet
from judo_model.data.synth.writer import generate_dataset, split_counts
from judo_model.mmad.answerers import ANSWER_ENGINES, ANSWER_MODES
from judo_model.mmad.evaluate import evaluate, render_table, write_result
from judo_model.mmad.format import MMADDataset
from judo_model.runtime.vllm_env import VLLM_PYTHON, judo_command, vllm_here, vllm_unavailable
from judo_model.training.cli import register_train as register_training_commands

Registrar = Callable[[argparse._SubParsersAction], None]
#: This checkout's root: the code ``judo eval mmad --engine vllm`` runs in the engine environment.
CHECKOUT = Path(__file__).resolve().parents[1]
#: Columns used when output is piped or captured, so the 14-column table is not squeezed.
WIDE_CONSOLE = 220


def _run_synth(args: argparse.Namespace) -> int:
    heldout = None if args.heldout is None else [c for c in args.heldout if c != "none"]
    manifest = generate_dataset(args.out, seed=args.seed, categories=args.categories,
                                images_per_category=args.images_per_category, size=args.size, heldout=heldout,
                                workers=args.workers,
                                progress=lambda jobs, total: tqdm(jobs, total=total, desc="rendering", unit="img"))
    print(f"wrote {len(manifest.images)} images of {len(manifest.categories)} categories to {args.out} "
          f"(per category and split: {split_counts(args.images_per_category)}; "
          f"held out: {', '.join(manifest.heldout) or 'none'})")
    return 0


def _run_contact_sheet(args: argparse.Namespace) -> int:
    path = draw_contact_sheet(args.out, seed=args.seed, size=args.size)
    print(f"wrote {path}")
    return 0


def eval_mmad_argv(args: argparse.Namespace) -> list[str]:
    """The ``judo eval mmad`` arguments that give ``args`` back."""
    argv = ["eval", "mmad", "--data", str(args.data), "--questions", args.questions, "--model", args.model,
            "--shots", str(args.shots), "--seed", str(args.seed), "--mode", args.mode, "--engine", args.engine,
            "--out", str(args.out)]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    flags = {"--similar-templates": args.similar_templates, "--domain-knowledge": args.domain_knowledge,
             "--verdict-first": args.verdict_first}
    return argv + [flag for flag, on in flags.items() if on]


def _eval_mmad_in_engine_environment(args: argparse.Namespace) -> int:
    """``--engine vllm`` from a Python without vLLM: the same command, run by the engine environment's
    ``judo`` (the project is installed there, ``make vllm-env``) on this checkout's code (PYTHONPATH, as
    a vLLM replica's runtime_env does); its output is this command's."""
    reason = vllm_unavailable(args.vllm_python)
    if reason:
        raise SystemExit(f"judo eval mmad --engine vllm: {reason}")
    paths = [str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.run([str(judo_command(args.vllm_python)), *eval_mmad_argv(args)],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)}).returncode


def _run_eval_mmad(args: argparse.Namespace) -> int:
    if args.engine == "vllm" and not vllm_here():
        return _eval_mmad_in_engine_environment(args)
    # CLI start-up: a JUDO answerer loads torch and transformers; the other commands must not pay for them
    from judo_model.mmad.judo_answerer import load_answerer
    dataset = MMADDataset(args.data, args.questions)
    answerer = load_answerer(args.model, seed=args.seed, data_dir=args.data, questions_file=args.questions,
                             mode=args.mode, verdict_first=args.verdict_first, engine=args.engine)
    result = evaluate(dataset, answerer, shots=args.shots, use_domain_knowledge=args.domain_knowledge,
                      limit=args.limit, similar_templates=args.similar_templates,
                      progress=lambda items: tqdm(items, desc=f"MMAD {answerer.name}", unit="img"))
    answers_path, csv_path, grounding_path = write_result(result, args.out)
    console = Console()
    if not console.is_terminal:
        console = Console(width=WIDE_CONSOLE)
    console.print(render_table(result.table, f"MMAD accuracy: {answerer.name}, {args.shots}-shot"))
    if result.table.dropped:
        console.print(f"dropped {len(result.table.dropped)} rows without a valid letter "
                      f"(and skipped {len(result.table.skipped)} after them, as MMAD does)")
    if grounding_path is not None:
        g = result.grounding
        console.print(f"grounding on {g.images} images: mean IoU {g.mean_iou}, pixel AUROC {g.pixel_auroc}")
    console.print(f"answers: {answers_path}\ntable: {csv_path}")
    return 0


def _command_group(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """``judo <name> <command>``: a parser whose own subcommand is required."""
    group = subparsers.add_parser(name, help=help_text)
    commands = group.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND")
    commands.required = True
    return commands


def register_data(subparsers: argparse._SubParsersAction) -> None:
    commands = _command_group(subparsers, "data", "synthetic industrial data")
    synth = commands.add_parser("synth", help="render an MMAD + MVTec-style synthetic dataset")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--categories", nargs="+", help="subset of categories (default: all)")
    synth.add_argument("--images-per-category", type=int, default=100,
                       help="images per category over train/val/test, half of each split defective")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--heldout", nargs="+", help="held-out categories ('none' for none; default: leather washer)")
    synth.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    synth.set_defaults(func=_run_synth)
    sheet = commands.add_parser("contact-sheet", help="draw normal / defect / mask for every category")
    sheet.add_argument("--out", type=Path, default=Path("docs/contact_sheet.png"))
    sheet.add_argument("--seed", type=int, default=0)
    sheet.add_argument("--size", type=int, default=192)
    sheet.set_defaults(func=_run_contact_sheet)


def register_eval(subparsers: argparse._SubParsersAction) -> None:
    commands = _command_group(subparsers, "eval", "benchmarks")
    mmad = commands.add_parser("mmad", help="answer and score an MMAD-format folder exactly as MMAD does")
    mmad.add_argument("--data", type=Path, required=True, help="MMAD-format folder")
    mmad.add_argument("--questions", default="mmad.json", help="question file inside --data")
    mmad.add_argument("--model", required=True, help="checkpoint path or baseline:random")
    mmad.add_argument("--shots", type=int, default=1, help="normal templates shown with each query")
    mmad.add_argument("--similar-templates", action="store_true", help="use similar instead of random templates")
    mmad.add_argument("--domain-knowledge", action="store_true", help="add the category's expert text")
    mmad.add_argument("--limit", type=int, default=None, help="only the first N images")
    mmad.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    mmad.add_argument("--mode", choices=ANSWER_MODES, default="generate",
                      help="match the generated answer to an option, decode the answer as one of the options "
                           "(guided), or pick the most likely option")
    mmad.add_argument("--verdict-first", action="store_true",
                      help="write the verdict without the question first, then the answer after it")
    mmad.add_argument("--engine", choices=ANSWER_ENGINES, default="transformers",
                      help="generate with transformers or with vLLM (run in vLLM's engine environment when this "
                           "Python has no vLLM; docs/vllm.md)")
    mmad.add_argument("--vllm-python", type=Path, default=VLLM_PYTHON,
                      help="the engine environment's interpreter (make vllm-env; env JUDO_VLLM_PYTHON)")
    mmad.add_argument("--out", type=Path, required=True, help="answers file; the table goes to *_accuracy.csv")
    mmad.set_defaults(func=_run_eval_mmad)


#: Command groups this module contributes; other areas append their own registrar.
def register_train(subparsers: argparse._SubParsersAction) -> None:
    register_training_commands(subparsers)


REGISTRARS: list[Registrar] = [register_data, register_eval, register_train]


def register(subparsers: argparse._SubParsersAction) -> None:
    for registrar in REGISTRARS:
        registrar(subparsers)
