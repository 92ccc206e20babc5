"""Parity of the vLLM engine with the transformers engine: the same requests, greedy, the same verdict?

Run from the project venv (the vLLM side runs in the engine environment's Python, a subprocess)::

    python benchmarks/vllm_parity.py --requests 40 --json docs/vllm_parity.json

The requests are :func:`benchmarks.judo_requests.sample_requests` (synthetic suspect frames with their
reference, anomaly map, defect hint, the product's defect types and 0-2 questions). The transformers
engine answers each alone (no padding); the vLLM engine gets them all at once, as concurrent requests
(its scheduler batches them). A verdict agrees when defective-or-not, the canonical defect type and
the valid boxes are equal (``pipelines.serve_app.verdict_from_result`` reads the same fields).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.judo_requests import sample_requests  # noqa: E402
from cluster.messages import canonical_defect_type  # noqa: E402
from judo_model.runtime.output import parse_output, valid_boxes  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.engines import JudoFrameRequest, TransformersEngine, VllmEngine  # noqa: E402
from pipelines.vllm_engine import platform_device  # noqa: E402

#: The engine environment scripts/vllm_env.sh makes (JUDO_VLLM_PYTHON overrides).
VLLM_PYTHON = Path(os.environ.get("JUDO_VLLM_PYTHON", "~/.cache/judo-inspect/vllm-venv/bin/python")).expanduser()


def vllm_unavailable(python: Path = VLLM_PYTHON) -> str | None:
    """Why the vLLM side cannot run here (None: it can)."""
    if not python.is_file():
        return f"no vLLM engine environment at {python} (make vllm-env; docs/vllm.md)"
    probe = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode:
        return f"{python} cannot import vllm: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def verdict_key(raw: str) -> tuple:
    """What a verdict says: defective or not, the canonical type, the valid boxes."""
    parsed = parse_output(raw)
    defect = bool(parsed.defect)
    return (defect, canonical_defect_type(parsed.defect_type) if defect else None,
            tuple(valid_boxes(parsed.boxes)) if defect else ())


def transformers_texts(requests: list[JudoFrameRequest], checkpoint: Path, max_new_tokens: int) -> list[str]:
    engine = TransformersEngine(checkpoint, max_new_tokens=max_new_tokens)
    return [engine.infer([request])[0].raw_text for request in requests]


def vllm_texts(requests: list[JudoFrameRequest], checkpoint: Path, max_new_tokens: int,
               python: Path = VLLM_PYTHON, timeout_s: float = 1800) -> list[str]:
    """The vLLM engine's texts, computed by ``python`` (the engine environment) in a subprocess."""
    with tempfile.TemporaryDirectory() as folder:
        inputs, outputs = Path(folder) / "requests.pkl", Path(folder) / "texts.json"
        inputs.write_bytes(pickle.dumps(requests))
        subprocess.run([str(python), __file__, "--side", "vllm", "--checkpoint", str(checkpoint),
                        "--max-new-tokens", str(max_new_tokens), "--requests-file", str(inputs), "--out", str(outputs)],
                       check=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[1])
        return json.loads(outputs.read_text())


def compare(requests: list[JudoFrameRequest], reference: list[str], candidate: list[str]) -> dict:
    """Agreement of ``candidate`` (vLLM) with ``reference`` (transformers), request by request."""
    rows = []
    for request, ours, theirs in zip(requests, reference, candidate, strict=True):
        rows.append({"frame_id": request.frame_id, "verdict_same": verdict_key(ours) == verdict_key(theirs),
                     "text_same": ours == theirs, "transformers": ours, "vllm": theirs})
    count = len(rows)
    return {"requests": count,
            "verdict_agreement": round(sum(r["verdict_same"] for r in rows) / count, 4),
            "text_agreement": round(sum(r["text_same"] for r in rows) / count, 4),
            "defect_agreement": round(sum(verdict_key(r["transformers"])[0] == verdict_key(r["vllm"])[0]
                                          for r in rows) / count, 4),
            "differing": [r for r in rows if not r["verdict_same"]], "rows": rows}


def run_vllm_side(args) -> None:
    """Inside the engine environment: answer the pickled requests, write the texts."""
    requests = pickle.loads(Path(args.requests_file).read_bytes())
    device = platform_device()
    engine = VllmEngine(args.checkpoint, device=device, max_new_tokens=args.max_new_tokens,
                        dtype="float32", max_num_seqs=16)  # as the transformers engine
    try:
        texts = [result.raw_text for result in engine.infer(requests)]
    finally:
        engine.close()
    Path(args.out).write_text(json.dumps(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--json", type=Path, help="write the comparison here")
    parser.add_argument("--side", choices=["vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--requests-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "vllm":
        run_vllm_side(args)
        return
    reason = vllm_unavailable()
    if reason:
        sys.exit(reason)
    requests = sample_requests(args.requests, seed=args.seed)
    started = time.perf_counter()
    reference = transformers_texts(requests, args.checkpoint, args.max_new_tokens)
    transformers_s = time.perf_counter() - started
    started = time.perf_counter()
    candidate = vllm_texts(requests, args.checkpoint, args.max_new_tokens)
    checkpoint = args.checkpoint.resolve()
    root = Path(__file__).resolve().parents[1]
    result = {"seed": args.seed, "checkpoint": str(checkpoint.relative_to(root) if checkpoint.is_relative_to(root)
                                                   else checkpoint), "transformers_s": round(transformers_s, 1),
              "vllm_s_with_start": round(time.perf_counter() - started, 1),
              **compare(requests, reference, candidate)}
    print(f"{result['requests']} requests: verdict agreement {result['verdict_agreement']:.1%}, "
          f"identical text {result['text_agreement']:.1%}, defective-or-not {result['defect_agreement']:.1%}")
    for row in result["differing"]:
        print(f"- {row['frame_id']}\n  transformers: {row['transformers']!r}\n  vllm:         {row['vllm']!r}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
