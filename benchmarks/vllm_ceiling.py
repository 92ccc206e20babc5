"""vLLM's offline ceiling on the engine benchmark's requests: where does the vLLM engine's time go?

Run with the engine environment's Python (docs/vllm.md)::

    ~/.cache/judo-inspect/vllm-venv/bin/python benchmarks/vllm_ceiling.py --json docs/vllm_ceiling.json

Measures, on :func:`benchmarks.judo_requests.sample_requests` (the requests ``benchmarks/engines.py``
sends): building the prompts in Python (``prompt_inputs``, ``build_prompt``, the chat template) per
request, and ``LLM.generate`` with every request at once (vLLM's scheduler holding ``max_num_seqs``
of them in flight, no client, no asyncio): the most requests/s this engine reaches here, against
which the served path (``AsyncLLM`` at concurrency 16 in ``benchmarks/engines.py``) is read.
``--vllm-args`` passes further engine arguments (one variant per run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm import LLM, SamplingParams  # noqa: E402  (the engine environment only)

from benchmarks.judo_requests import sample_requests  # noqa: E402
from judo_model.processing import load_processor  # noqa: E402
from judo_model.runtime.inputs import prompt_options_of  # noqa: E402
from judo_model.runtime.prompting import build_prompt, prompt_text  # noqa: E402
from judo_model.runtime.vllm_engine import engine_arguments, platform_device, slot_arguments  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.engines import prompt_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--vllm-args", type=json.loads, default={}, help="JSON of further vLLM engine arguments")
    parser.add_argument("--free", action="store_true", help="decode every slot freely (no ChoiceSlots): its cost")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    requests = sample_requests(args.requests, seed=0)
    processor, options = load_processor(SHIPPED_CHECKPOINT), prompt_options_of(SHIPPED_CHECKPOINT)
    started = time.perf_counter()
    built = [build_prompt(**prompt_inputs(request, options)) for request in requests]
    prompts = [{"prompt": prompt_text(processor, p), "multi_modal_data": {"image": list(p.images)}} for p in built]
    prompt_ms = (time.perf_counter() - started) * 1000 / len(requests)
    sampling = [SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens,
                               extra_args=None if args.free else slot_arguments(request.defect_types))
                for request in requests]
    llm = LLM(**engine_arguments(SHIPPED_CHECKPOINT, device=platform_device(), max_num_seqs=args.max_num_seqs,
                                 **args.vllm_args))
    llm.generate(prompts[:2], sampling[:2], use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(prompts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = {"requests": len(requests), "max_num_seqs": args.max_num_seqs, "vllm_args": args.vllm_args,
              "slots": not args.free, "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
              "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
              "prompt_build_ms_per_request": round(prompt_ms, 1), "generate_s": round(seconds, 2),
              "requests_per_s": round(len(requests) / seconds, 2), "output_tokens": tokens,
              "output_tokens_per_s": round(tokens / seconds, 1),
              "mean_output_tokens": round(tokens / len(requests), 1),
              "mean_prompt_tokens": round(sum(len(o.prompt_token_ids) for o in outputs) / len(requests), 1)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
