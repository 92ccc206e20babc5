"""Prefilter benchmark: our PatchCore variant next to simpler baselines, real and synthetic data.

    ~/.cache/judo-inspect/venv/bin/python benchmarks/prefilter.py \
        --real /work/shared/data/real --synthetic /path/to/synth/Synthetic

Writes docs/prefilter_benchmark.json, docs/prefilter_benchmark.md and
docs/prefilter_benchmark.png (``--stem`` renames them: docs/prefilter_backbones.* is the
``--no-baselines`` run on the real folders: Lite0/1/2, 320 px and ``--auto``). Every method is fitted on train/good only and
calibrated on normal images outside test/ (validation/good, else k-fold train/good).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from judo_model.data.mvtec import discover_categories  # noqa: E402
from judo_model.prefilter.evaluation import (  # noqa: E402
    EvalMethod,
    baseline_methods,
    default_method,
    evaluate,
    fit_method,
    frames_per_second,
    markdown_table,
    results_table,
)
from judo_model.prefilter.features import BackboneConfig, PreprocessConfig  # noqa: E402
from judo_model.prefilter.patchcore import PatchCoreConfig  # noqa: E402


def plot(results: dict[str, dict[str, dict[str, dict]]], path: Path) -> None:
    """Image AUROC per category and method (one panel per data set), fps b16 in the legend."""
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (dataset, per_method) in zip(axes[0], results.items()):
        methods = list(per_method)
        cats = list(next(iter(per_method.values())))
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            vals = [per_method[method][c]["image_auroc"] or 0.0 for c in cats]
            fps = per_method[method]["mean"]["fps_batch16"]
            ax.bar([i + j * width for i in range(len(cats))], vals, width,
                   label=f"{method} ({fps:.0f} fps b16)")
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(cats))], cats, rotation=35, ha="right")
        ax.set_ylim(0.4, 1.02)
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{dataset}: image AUROC")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(args, datasets: dict, methods: list, results: dict, started: float) -> None:
    """Write JSON, markdown and plot for the data sets done so far (rewritten after each)."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 1),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_end": os.getloadavg(),
        "python": platform.python_version(),
        "target_routing_rate": args.target_routing_rate,
        "datasets": {k: str(v) for k, v in datasets.items()},
        "methods": [m.model_dump(mode="json") for m in methods],
    }
    (args.out_dir / f"{args.stem}.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    md = [f"# Prefilter benchmark ({meta['date_utc']})\n\n",
          f"{meta['cpu_count']} CPU cores, {meta['torch_threads']} torch threads, "
          f"load average at the end {meta['load_avg_end'][0]:.1f} (other jobs shared the machine). "
          f"Target routing rate {args.target_routing_rate:.0%}.\n"]
    for name, res in results.items():
        md.append(f"\n## {name} (`{datasets[name]}`)\n\n{markdown_table(res)}")
    (args.out_dir / f"{args.stem}.md").write_text("".join(md))
    plot(results, args.out_dir / f"{args.stem}.png")


def speed_check(root: Path, category: str, frames: int, out: Path, threads: Sequence[int],
                backbones: Sequence[str]) -> list[dict]:
    """Frames/s of the prefilter on one category's test frames per backbone and thread count, with the load."""
    (cat,) = discover_categories(root, [category])
    train = [s.load_image() for s in cat.split("train", "good")]
    test = [s.load_image() for s in cat.split("test")]
    rows = []
    for backbone in backbones:
        for n in threads:
            config = PatchCoreConfig(backbone=BackboneConfig(name=backbone, threads=n))
            fitted = fit_method(EvalMethod(name="patchcore", config=config), train, [], 0.05, folds=2)
            load_before = os.getloadavg()[0]
            rows.append({
                "category": category,
                "backbone": backbone,
                "threads": n,
                "canvas": list(fitted.bank.config.preprocess.resolved_canvas()),
                "fps_batch1": frames_per_second(fitted.score, test, 1, frames // 2),
                "fps_batch16": frames_per_second(fitted.score, test, 16, frames),
                "load_avg_1m_before": load_before,
                "load_avg_1m_after": os.getloadavg()[0],
                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
    out.write_text(json.dumps(rows, indent=2))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=Path("/work/shared/data/real"))
    parser.add_argument("--synthetic", type=Path, help="MVTec-style synthetic folder (…/Synthetic)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--stem", default="prefilter_benchmark",
                        help="output file names (docs/prefilter_backbones: --no-baselines, real folders only)")
    parser.add_argument("--target-routing-rate", type=float, default=0.05)
    parser.add_argument("--speed-frames", type=int, default=32)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--high-res", type=int, nargs="*", default=[320],
                        help="also run the default method with these canvas short sides (operator option)")
    parser.add_argument("--backbones", nargs="*", default=["efficientnet-lite1", "efficientnet-lite2"],
                        help="also run the default method on these backbones")
    parser.add_argument("--no-auto", action="store_true",
                        help="leave out patchcore_auto (judo prefilter fit --auto: per-category choice on "
                             "synthetic defects in held-out train/good)")
    parser.add_argument("--min-fps", type=float, help="patchcore_auto's --min-fps")
    parser.add_argument("--speed-only", metavar="CATEGORY",
                        help="only time the default prefilter on this real category (quiet machine)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts for --speed-only")
    args = parser.parse_args(argv)

    if args.speed_only:
        out = args.out_dir / "prefilter_speed.json"
        Console().print(speed_check(args.real, args.speed_only, max(args.speed_frames, 64), out, args.threads,
                                    ["efficientnet-lite0", *args.backbones]))
        return 0
    methods = [default_method()]
    for size in args.high_res:
        config = PatchCoreConfig(preprocess=PreprocessConfig(size=size))
        methods.append(EvalMethod(name=f"patchcore_{size}px", config=config))
    for backbone in args.backbones:
        config = PatchCoreConfig(backbone=BackboneConfig(name=backbone))
        methods.append(EvalMethod(name=f"patchcore_{backbone.removeprefix('efficientnet-')}", config=config))
    if not args.no_auto:
        methods.append(EvalMethod(name="patchcore_auto", select=True, min_fps=args.min_fps))
    methods += [] if args.no_baselines else baseline_methods()
    datasets = {"real": args.real}
    if args.synthetic is not None:
        datasets["synthetic"] = args.synthetic
    results: dict[str, dict] = {}
    console = Console()
    started = time.time()
    for name, root in datasets.items():
        results[name] = evaluate(
            root, None, methods, args.target_routing_rate, speed_frames=args.speed_frames, label=name
        )
        console.print(results_table(results[name], f"{name}: {root}"))
        write_outputs(args, datasets, methods, results, started)
    console.print(f"wrote {args.out_dir}/{args.stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
