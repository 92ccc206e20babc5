"""JUDO's engines on a randomly initialised Qwen2.5-VL-7B-sized model: verdicts/s and tokens/s per batch.

Run by ``benchmarks/gpu_check.sh`` (one engine per process, so each has the GPU to itself)::

    python benchmarks/gpu_check.py --engine transformers|vllm --device cuda --out ROWS.json

The 7B-sized model is the shipped checkpoint's config with Qwen2.5-VL-7B's text and vision sizes
(written to ``--model-dir`` with the shipped tokenizer and processor); transformers initialises it at
random in memory, vLLM with ``load_format="dummy"``: no weights are read or downloaded. Prompts are the
project's own (:func:`benchmarks.judo_requests.sample_requests` through ``prompt_inputs`` and
``build_prompt``); a random model never writes its stop token, so every answer runs the full
``--max-new-tokens`` (the numbers bound the work per verdict from above).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.judo_requests import sample_requests  # noqa: E402
from judo_model.processing import load_processor  # noqa: E402
from judo_model.runtime.inputs import prompt_options_of  # noqa: E402
from judo_model.runtime.prompting import build_prompt, prompt_text  # noqa: E402
from judo_model.runtime.vllm_engine import engine_arguments  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.engines import prompt_inputs  # noqa: E402

#: Qwen2.5-VL-7B-Instruct's sizes (its config.json); token ids stay the shipped tokenizer's.
TEXT_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
VISION_7B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                 fullatt_block_indexes=[7, 15, 23, 31], window_size=112)
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
                   "generation_config.json")


def write_model_dir(folder: Path, dtype: str) -> Path:
    """The shipped checkpoint's config at 7B sizes, with its tokenizer and processor (no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((SHIPPED_CHECKPOINT / "config.json").read_text())
    config["text_config"].update(TEXT_7B, dtype=dtype)
    config["text_config"]["layer_types"] = ["full_attention"] * TEXT_7B["num_hidden_layers"]
    config["vision_config"].update(VISION_7B, dtype=dtype)
    config["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for name in PROCESSOR_FILES:
        if (SHIPPED_CHECKPOINT / name).is_file():
            shutil.copy(SHIPPED_CHECKPOINT / name, folder / name)
    return folder


def prompts(count: int):
    """``count`` JUDO prompts (text, images) as the engines build them for the shipped checkpoint."""
    processor = load_processor(SHIPPED_CHECKPOINT)
    options = prompt_options_of(SHIPPED_CHECKPOINT)
    built = [build_prompt(**prompt_inputs(request, options)) for request in sample_requests(count, seed=0)]
    return processor, [(prompt_text(processor, prompt), list(prompt.images)) for prompt in built]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def row(name: str, batch: int, seconds: list[float], tokens: int, prompt_tokens: int) -> dict:
    median = float(np.median(seconds))
    return {"engine": name, "batch": batch, "prompt_tokens_max": prompt_tokens,
            "seconds_per_batch": round(median, 4), "verdicts_per_s": round(batch / median, 2),
            "tokens_per_s": round(tokens / median, 1)}


def run_transformers(model_dir: Path, device: str, dtype: torch.dtype, batches, max_new: int, repeats: int):
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig.from_pretrained(str(model_dir))
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    print(f"7B-sized model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters", flush=True)
    processor, texts = prompts(max(batches))
    rows = []
    for batch in batches:
        chosen = texts[:batch]
        inputs = processor(text=[t for t, _ in chosen], images=[i for _, images in chosen for i in images],
                           padding=True, padding_side="left", return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        kwargs = dict(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
                      pad_token_id=processor.tokenizer.pad_token_id)
        with torch.inference_mode():
            model.generate(**inputs, **kwargs)  # warm-up
            seconds = []
            for _ in range(repeats):
                sync(device)
                started = time.perf_counter()
                model.generate(**inputs, **kwargs)
                sync(device)
                seconds.append(time.perf_counter() - started)
        rows.append(row("transformers", batch, seconds, batch * max_new, int(inputs["input_ids"].shape[1])))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_vllm(model_dir: Path, device: str, dtype: str, batches, max_new: int, repeats: int):
    from vllm import LLM, SamplingParams  # the engine's own Python only (gpu extra or engine environment)
    llm = LLM(**engine_arguments(model_dir, device=device, dtype=dtype, max_num_seqs=max(batches),
                                 load_format="dummy", seed=0))  # the project's engine arguments, random weights
    sampling = SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)
    _, texts = prompts(max(batches))
    rows = []
    for batch in batches:
        chosen = [{"prompt": text, "multi_modal_data": {"image": images}} for text, images in texts[:batch]]
        llm.generate(chosen, sampling, use_tqdm=False)  # warm-up
        seconds, tokens = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            outputs = llm.generate(chosen, sampling, use_tqdm=False)
            seconds.append(time.perf_counter() - started)
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        prompt_tokens = max(len(o.prompt_token_ids) for o in outputs)
        rows.append(row("vllm", batch, seconds, tokens, prompt_tokens))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["transformers", "vllm"], required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=Path("runs/gpu_check/qwen2.5-vl-7b-sized"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model_dir = write_model_dir(args.model_dir, dtype)
    batches = [int(b) for b in args.batches.split(",")]
    if args.engine == "transformers":
        rows = run_transformers(model_dir, args.device, getattr(torch, dtype), batches, args.max_new_tokens,
                                args.repeats)
    else:
        rows = run_vllm(model_dir, args.device, dtype, batches, args.max_new_tokens, args.repeats)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "qwen2.5-vl-7b-sized (random init)", "device": device_name,
                                    "dtype": dtype, "max_new_tokens": args.max_new_tokens, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
