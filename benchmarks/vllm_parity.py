"""Parity of the vLLM engine with the transformers engine: the same requests, greedy, the same verdict?
And the same MMAD answers?

Run from the project venv (the vLLM side runs in the engine environment's Python, a subprocess)::

    judo data synth --out DATA --seed 0
    python benchmarks/vllm_parity.py --requests 40 --mmad DATA --json docs/vllm_parity.json

The requests are :func:`benchmarks.judo_requests.sample_requests` (synthetic suspect frames with their
reference, anomaly map, defect hint, the product's defect types and 0-2 questions). The transformers
engine answers each alone (no padding); the vLLM engine gets them all at once, as concurrent requests
(its scheduler batches them). A verdict agrees when defective-or-not, the canonical defect type and
the valid boxes are equal (``pipelines.serve_app.verdict_from_result`` reads the same fields).

MMAD: ``judo eval mmad`` on the folder's test questions (``mmad.json``, 1-shot) with ``--engine
transformers`` and ``--engine vllm`` (which runs in the engine environment), per answer mode; an
answer agrees when both pick the same letter.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.judo_requests import sample_requests  # noqa: E402
from cluster.messages import canonical_defect_type  # noqa: E402
from judo_model.mmad.scorer import score_answers  # noqa: E402
from judo_model.runtime.output import parse_output, valid_boxes  # noqa: E402
from judo_model.runtime.vllm_engine import platform_device  # noqa: E402
from judo_model.runtime.vllm_env import VLLM_PYTHON, vllm_unavailable  # noqa: E402
from pipelines.cli import main as judo_main  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.engines import TransformersEngine, VllmEngine  # noqa: E402
from pipelines.judo_request import JudoFrameRequest  # noqa: E402


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


def mmad_answers(data: Path, checkpoint: Path, out: Path, engine: str, mode: str = "generate",
                 limit: int | None = None, python: Path = VLLM_PYTHON) -> tuple[list[dict], float]:
    """``judo eval mmad`` on ``data``'s test questions (1-shot) with ``engine``: its answers and seconds."""
    argv = ["eval", "mmad", "--data", str(data), "--model", str(checkpoint), "--mode", mode, "--engine", engine,
            "--vllm-python", str(python), "--out", str(out)] + (["--limit", str(limit)] if limit else [])
    started = time.perf_counter()
    if judo_main(argv):
        raise RuntimeError(f"judo {' '.join(argv)} failed")
    return json.loads(out.read_text()), time.perf_counter() - started


def compare_mmad(reference: list[dict], candidate: list[dict]) -> dict:
    """Agreement of the vLLM engine's MMAD letters with the transformers engine's, question by question."""
    rows = [(ours, theirs) for ours, theirs in zip(reference, candidate, strict=True)]
    if any((a["image"], a["question"]) != (b["image"], b["question"]) for a, b in rows):
        raise ValueError("the two answer files ask different questions")
    by_type: dict[str, list[bool]] = {}
    for ours, theirs in rows:
        by_type.setdefault(ours["question_type"], []).append(ours["gpt_answer"] == theirs["gpt_answer"])
    same = [ours["gpt_answer"] == theirs["gpt_answer"] for ours, theirs in rows]
    return {"questions": len(rows), "images": len({ours["image"] for ours, _ in rows}),
            "answer_agreement": round(sum(same) / len(rows), 4),
            "agreement_by_type": {kind: round(sum(v) / len(v), 4) for kind, v in sorted(by_type.items())},
            "accuracy_transformers": round(score_answers(reference).cell("Average", "Average"), 2),
            "accuracy_vllm": round(score_answers(candidate).cell("Average", "Average"), 2),
            "differing": [{"image": ours["image"], "question_type": ours["question_type"],
                           "transformers": ours["gpt_answer"], "vllm": theirs["gpt_answer"]}
                          for ours, theirs in rows if ours["gpt_answer"] != theirs["gpt_answer"]]}


def mmad_parity(data: Path, checkpoint: Path, mode: str = "generate", limit: int | None = None,
                python: Path = VLLM_PYTHON) -> dict:
    """Both engines on ``data``'s MMAD test questions in answer ``mode``, compared."""
    with tempfile.TemporaryDirectory() as folder:
        reference, transformers_s = mmad_answers(data, checkpoint, Path(folder) / "transformers.json",
                                                 "transformers", mode, limit, python)
        candidate, vllm_s = mmad_answers(data, checkpoint, Path(folder) / "vllm.json", "vllm", mode, limit, python)
    return {"mode": mode, "transformers_s": round(transformers_s, 1), "vllm_s_with_start": round(vllm_s, 1),
            **compare_mmad(reference, candidate)}


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
    parser.add_argument("--mmad", type=Path, help="an MMAD-format folder (judo data synth): compare MMAD answers too")
    parser.add_argument("--mmad-modes", default="generate,guided", help="answer modes compared on --mmad")
    parser.add_argument("--mmad-limit", type=int, help="only the first N images of --mmad")
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
    if args.mmad:
        splits = args.mmad / "splits.json"  # written by judo data synth: how the folder was made
        synth = json.loads(splits.read_text()) if splits.is_file() else {}
        made = {k: v for k, v in synth.items() if k in ("seed", "size", "categories", "heldout")}
        result["mmad"] = {"data": args.mmad.name, "synth": made, "questions_file": "mmad.json", "shots": 1,
                          "modes": []}
        for mode in args.mmad_modes.split(","):
            parity = mmad_parity(args.mmad, args.checkpoint, mode, args.mmad_limit)
            result["mmad"]["modes"].append(parity)
            print(f"MMAD {mode}: {parity['questions']} questions on {parity['images']} images, same answer "
                  f"{parity['answer_agreement']:.1%} (accuracy transformers {parity['accuracy_transformers']}, "
                  f"vLLM {parity['accuracy_vllm']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
