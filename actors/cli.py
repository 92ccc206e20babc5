"""``judo prefilter ...``: fit, evaluate and try the anomaly prefilter from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prefilter configuration (per product, chosen by the operator)")
    g.add_argument("--config", type=Path, help="PatchCoreConfig JSON file (flags below override it)")
    g.add_argument("--size", type=int, help="short side of the canvas in pixels (default 224)")
    g.add_argument("--mode", choices=("aspect", "letterbox", "squash"), help="preprocessing (default aspect)")
    g.add_argument("--blocks", type=int, nargs="+", help="Lite0 blocks for patch features (default 2 4 10)")
    g.add_argument("--sampler", choices=("greedy", "random"), help="coreset sampler (default greedy)")
    g.add_argument("--coreset-ratio", type=float, help="fraction of patches kept (default 0.1)")
    g.add_argument("--position-norm", choices=("auto", "on", "off"),
                   help="divide patch distances by each canvas cell's held-out normal level (default auto: "
                        "kept if the labelled defect examples are told apart at least as well)")
    g.add_argument("--threads", type=int, help="torch/faiss threads (default 2)")
    g.add_argument("--target-routing-rate", type=float, default=0.05,
                   help="false-positive routing rate the threshold aims at (default 0.05)")
    g.add_argument("--folds", type=int, default=5,
                   help="k-fold held-out train/good: the cell levels, and the threshold when there is no "
                        "validation/good (default 5)")


def config_from_args(args: argparse.Namespace):
    """PatchCoreConfig from ``--config`` plus flag overrides."""
    from actors.features import BackboneConfig, PreprocessConfig
    from actors.prefilter import PatchCoreConfig

    base = PatchCoreConfig.model_validate_json(args.config.read_text()) if args.config else PatchCoreConfig()
    pre = base.preprocess.model_dump()
    back = base.backbone.model_dump()
    top = {}
    if args.size is not None:
        pre["size"] = args.size
    if args.mode is not None:
        pre["mode"] = args.mode
    if args.blocks is not None:
        back["blocks"] = tuple(args.blocks)
    if args.threads is not None:
        back["threads"] = args.threads
    if args.sampler is not None:
        top["sampler"] = args.sampler
    if args.coreset_ratio is not None:
        top["coreset_ratio"] = args.coreset_ratio
    if args.position_norm is not None:
        top["position_norm"] = args.position_norm
    return base.model_copy(
        update={"preprocess": PreprocessConfig(**pre), "backbone": BackboneConfig(**back), **top}
    )


def cmd_fit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from actors.prefilter import fit_bank_from_folder

    scorer = fit_bank_from_folder(
        args.data, args.category, args.out, config_from_args(args), args.target_routing_rate, args.folds,
        args.camera,
    )
    bank, cal = scorer.bank, scorer.bank.calibration
    Console().print(
        f"[bold]{bank.product}[/]: bank of {len(bank.memory)} patches from {bank.n_images} images, "
        f"canvas {bank.config.preprocess.resolved_canvas()}, threshold {cal.threshold:.3f} "
        f"({cal.method}, target routing {cal.target_routing_rate:.0%}) -> {args.out}"
    )
    report = bank.position_norm_report
    if report and "auroc_with" in report:
        Console().print(f"cell levels {'kept' if report['used'] else 'dropped'}: AUROC {report['auroc_with']:.3f} "
                        f"with, {report['auroc_without']:.3f} without, on {report['defect_examples']} labelled "
                        f"defect examples against {report['normal_frames']} held-out normal frames")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from actors.prefilter_eval import (
        METRICS,
        EvalMethod,
        baseline_methods,
        evaluate,
        markdown_table,
        results_table,
    )

    methods = [EvalMethod(name="patchcore", config=config_from_args(args))]
    if args.baselines:
        methods += baseline_methods()
    results = evaluate(
        args.data, args.category, methods, args.target_routing_rate, args.folds, args.speed_frames
    )
    console = Console()
    console.print(results_table(results, f"Prefilter evaluation: {args.data}"))
    metrics_only = {
        method: {cat: {k: m[k] for k in METRICS} for cat, m in per_cat.items()}
        for method, per_cat in results.items()
    }
    payload = metrics_only["patchcore"] if len(methods) == 1 else metrics_only
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown_table(results))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from actors.prefilter import PrefilterScorer
    from actors.references import REFERENCES_SUBDIR, ReferenceIndex
    from judo_model.imaging import load_image

    scorer = PrefilterScorer.load(args.bank)
    frames = [load_image(p) for p in args.images]
    verdicts = scorer.route(frames)
    refs_dir = Path(args.bank) / REFERENCES_SUBDIR
    refs = (
        ReferenceIndex.load(refs_dir, scorer.bank.embedder.extractor).query(frames, args.k)
        if refs_dir.is_dir() else [[] for _ in frames]
    )
    table = Table(title=f"prefilter {scorer.bank.product} (threshold {scorer.threshold:.3f})")
    for col in ("image", "score", "suspect", "references"):
        table.add_column(col)
    for path, v, r in zip(args.images, verdicts, refs):
        table.add_row(str(path), f"{v.score:.3f}", "yes" if v.suspect else "no",
                      ", ".join(f"{x.id} ({x.similarity:.3f})" for x in r))
    Console().print(table)
    return 0


def register(subparsers) -> None:
    """Add ``judo prefilter {fit,eval,score}``."""
    parser = subparsers.add_parser("prefilter", help="fast anomaly prefilter and normal-reference retrieval")
    sub = parser.add_subparsers(dest="prefilter_command", metavar="ACTION")
    sub.required = True

    fit = sub.add_parser("fit", help="fit a memory bank + reference index on train/good of one category")
    fit.add_argument("--data", type=Path, required=True, help="MVTec-style folder")
    fit.add_argument("--category", help="category name (optional when --data is a category folder)")
    fit.add_argument("--out", type=Path, required=True, help="bank directory to write")
    fit.add_argument("--camera", help="camera id, when banks are kept per camera")
    _add_config_args(fit)
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser("eval", help="fit on train/good, calibrate, and evaluate on test/ per category")
    ev.add_argument("--data", type=Path, required=True, help="MVTec-style folder")
    ev.add_argument("--category", nargs="+", help="categories (default: all found)")
    ev.add_argument("--json", type=Path, help="write metrics JSON here")
    ev.add_argument("--markdown", type=Path, help="write a markdown table here")
    ev.add_argument("--baselines", action="store_true", help="also run the anchor and PaDiM-style baselines")
    ev.add_argument("--speed-frames", type=int, default=32, help="frames timed for fps at batch 16")
    _add_config_args(ev)
    ev.set_defaults(func=cmd_eval)

    score = sub.add_parser("score", help="score images with a saved bank and list their references")
    score.add_argument("--bank", type=Path, required=True)
    score.add_argument("--k", type=int, default=3, help="references per image")
    score.add_argument("images", type=Path, nargs="+")
    score.set_defaults(func=cmd_score)
