"""The bodies of ``judo prefilter fit|eval|score`` (parsers in :mod:`judo_model.prefilter.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from judo_model.imaging import load_image
from judo_model.prefilter.evaluation import (
    METRICS,
    EvalMethod,
    baseline_methods,
    evaluate,
    markdown_table,
    results_table,
)
from judo_model.prefilter.features import BackboneConfig, PreprocessConfig
from judo_model.prefilter.fitting import fit_bank_from_folder
from judo_model.prefilter.patchcore import PatchCoreConfig
from judo_model.prefilter.references import REFERENCES_SUBDIR, ReferenceIndex
from judo_model.prefilter.scorer import PrefilterScorer


def config_from_args(args: argparse.Namespace) -> PatchCoreConfig:
    """PatchCoreConfig from ``--config`` plus flag overrides."""
    base = PatchCoreConfig.model_validate_json(args.config.read_text()) if args.config else PatchCoreConfig()
    pre = base.preprocess.model_dump()
    back = base.backbone.model_dump()
    top = {}
    if args.size is not None:
        pre["size"] = args.size
    if args.mode is not None:
        pre["mode"] = args.mode
    if args.backbone is not None and args.backbone != back["name"]:
        back["name"] = args.backbone
        back.pop("blocks")  # the new backbone's own default blocks
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
    scorer = fit_bank_from_folder(
        args.data, args.category, args.out, config_from_args(args), args.target_routing_rate, args.folds,
        args.camera, target_recall=args.target_recall or None, select=args.auto, min_fps=args.min_fps,
    )
    bank, cal = scorer.bank, scorer.bank.calibration
    if bank.selection_report:
        Console().print(selection_table(bank.selection_report))
    Console().print(
        f"[bold]{bank.product}[/]: bank of {len(bank.memory)} patches from {bank.n_images} images, "
        f"canvas {bank.config.preprocess.resolved_canvas()}, threshold {cal.threshold:.3f} "
        f"({cal.method}, target routing {cal.target_routing_rate:.0%}) -> {args.out}"
    )
    Console().print(operating_point_line(cal.operating_point))
    report = bank.position_norm_report
    if report and "auroc_with" in report:
        Console().print(f"cell levels {'kept' if report['used'] else 'dropped'}: AUROC {report['auroc_with']:.3f} "
                        f"with, {report['auroc_without']:.3f} without, on {report['defect_examples']} labelled "
                        f"defect examples against {report['normal_frames']} held-out normal frames")
    return 0


def selection_table(report: dict) -> Table:
    """The configurations ``--auto`` tried, best first, with the chosen one marked."""
    chosen = report["chosen"]
    table = Table(title=f"prefilter configurations on synthetic defects ({report['normal_frames']} train/good frames, "
                        f"{report['folds']}-fold)")
    for col in ("backbone", "size", "cell levels", "synthetic AUROC", "ms/frame", ""):
        table.add_column(col, justify="right" if col in ("size", "synthetic AUROC", "ms/frame") else "left")
    for row in sorted(report["candidates"], key=lambda r: -r["synthetic_auroc"]):
        picked = all(row[k] == chosen[k] for k in chosen)
        table.add_row(row["backbone"], str(row["size"]), row["position_norm"], f"{row['synthetic_auroc']:.3f}",
                      f"{row['ms_per_frame']:.0f}", "chosen" if picked else "")
    return table


def operating_point_line(point: dict | None) -> str:
    """The chosen operating point in words: mode, threshold, expected recall, routed share."""
    if not point:
        return "operating point: not recorded (bank saved before recall-first routing)"
    recall = point.get("expected_recall")
    recall_text = (f"expected recall {recall:.2f} on {point['defect_examples']} labelled defect examples"
                   + (f" ({point['folds']}-fold cross-validated)" if point.get("folds") else "")
                   if recall is not None else "expected recall unknown (no labelled defect examples)")
    mode = (f"recall target {point['target_recall']:.2f}" if point["mode"] == "recall"
            else f"routing budget {point['routing_budget']:.0%}")
    text = (f"operating point: {mode} -> threshold {point['threshold']:.3f}, {recall_text}, routed share of "
            f"normal frames {point['routed_share']:.1%}")
    return text + (f" ({point['note']})" if point.get("note") else "")


def cmd_eval(args: argparse.Namespace) -> int:
    methods = [EvalMethod(name="patchcore", config=config_from_args(args), select=args.auto, min_fps=args.min_fps)]
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


COMMANDS = {"fit": cmd_fit, "eval": cmd_eval, "score": cmd_score}
