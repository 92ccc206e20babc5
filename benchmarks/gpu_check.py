"""JUDO on a randomly initialised Qwen2.5-VL-7B-sized model: the engines' verdicts/s and tokens/s per batch,
and the 7B preset's LoRA training step (step time, peak GPU memory) followed by one generation.

Run by ``benchmarks/gpu_check.sh`` (one engine or training run per process, so each has the GPU to itself)::

    python benchmarks/gpu_check.py --engine transformers|vllm --device cuda --out ROWS.json
    python benchmarks/gpu_check.py --train --device cuda --out TRAIN.json

The 7B-sized model is the shipped checkpoint's config with Qwen2.5-VL-7B's text and vision sizes
(written to ``--model-dir`` with the shipped tokenizer and processor); transformers initialises it at
random in memory, vLLM with ``load_format="dummy"``: no weights are read or downloaded. Prompts are the
project's own (:func:`benchmarks.judo_requests.sample_requests` through ``prompt_inputs`` and
``build_prompt``); a random model never writes its stop token, so every answer runs the full
``--max-new-tokens`` (the numbers bound the work per verdict from above). ``--train`` trains as
``judo train --preset qwen2.5-vl-7b`` does (:func:`judo_model.training.pipeline.load_for_training`'s
gradient checkpointing and LoRA, :func:`judo_model.training.sft.train_on_pairs` on TRL's SFTTrainer) on
those prompts with contract targets, at the preset's image size; ``--layers`` keeps fewer layers and
vision blocks (a smaller GPU, or a run on CPU to try the path).
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
from judo_model.modeling import apply_lora, judo_generation_config  # noqa: E402
from judo_model.presets import get_preset  # noqa: E402
from judo_model.processing import build_image_processor, load_processor  # noqa: E402
from judo_model.runtime.inputs import prompt_options_of  # noqa: E402
from judo_model.runtime.output import format_target, mask_to_boxes  # noqa: E402
from judo_model.runtime.prompting import build_prompt, encode_for_generation, prompt_text  # noqa: E402
from judo_model.runtime.vllm_engine import engine_arguments  # noqa: E402
from judo_model.training.recipe import SftStage  # noqa: E402
from judo_model.training.sft import train_on_pairs  # noqa: E402
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


TRAIN_PRESET = "qwen2.5-vl-7b"


def write_model_dir(folder: Path, dtype: str, layers: int | None = None) -> Path:
    """The shipped checkpoint's config at 7B sizes (``layers``: that many text layers and vision blocks, the
    last vision block full attention), with its tokenizer and processor (no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((SHIPPED_CHECKPOINT / "config.json").read_text())
    text, vision = dict(TEXT_7B), dict(VISION_7B)
    if layers is not None:
        text["num_hidden_layers"], vision["depth"] = layers, layers
        vision["fullatt_block_indexes"] = [i for i in VISION_7B["fullatt_block_indexes"] if i < layers] or [layers - 1]
    config["text_config"].update(text, dtype=dtype)
    config["text_config"]["layer_types"] = ["full_attention"] * text["num_hidden_layers"]
    config["vision_config"].update(vision, dtype=dtype)
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


def training_pairs(count: int):
    """(processor at the 7B preset's image size, ``count`` (prompt, contract target) pairs): a defective
    request's target boxes the region of its anomaly map, a normal one's none."""
    processor = load_processor(SHIPPED_CHECKPOINT)
    spec = get_preset(TRAIN_PRESET)
    processor.image_processor = build_image_processor(spec.min_pixels, spec.max_pixels)
    options = prompt_options_of(SHIPPED_CHECKPOINT)
    pairs = []
    for request in sample_requests(count, seed=0):
        boxes = mask_to_boxes(request.anomaly_map > 0.5 * request.anomaly_map.max()) if request.defect_hint else []
        target = format_target(reasoning="compared with the reference", defect=bool(boxes),
                               defect_type=request.defect_hint if boxes else None, boxes=boxes[:1])
        pairs.append((build_prompt(**prompt_inputs(request, options)), target))
    return processor, pairs


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


def run_lora_training(model_dir: Path, device: str, dtype: torch.dtype, batch: int, steps: int, max_new: int):
    """``steps`` LoRA steps of ``batch`` rows as the 7B preset trains (the first warms up), then one greedy
    generation; step seconds, peak GPU memory and the generation's tokens/s."""
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig.from_pretrained(str(model_dir))
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"7B-sized model: {parameters / 1e9:.2f} B parameters", flush=True)
    processor, pairs = training_pairs(batch * steps)
    model.generation_config = judo_generation_config(processor)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, get_preset(TRAIN_PRESET))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    marks = [time.perf_counter()]
    stage = SftStage(steps=steps, batch_size=batch, lr=1e-4)
    batches = iter([pairs[i:i + batch] for i in range(0, len(pairs), batch)])
    curve = train_on_pairs(model, processor, lambda size: next(batches), stage, "lora-step",
                           on_step=lambda step, loss: marks.append(time.perf_counter()))
    step_seconds = [round(b - a, 3) for a, b in zip(marks[1:], marks[2:])] or [round(marks[-1] - marks[0], 3)]
    peak_train = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    prompt = pairs[0][0]
    inputs = encode_for_generation(processor, prompt).to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.inference_mode():
        sync(device)
        started = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
        sync(device)
        generation_s = time.perf_counter() - started
    new_tokens = int(out.shape[1] - inputs["input_ids"].shape[1])
    result = {"preset": TRAIN_PRESET, "parameters_b": round(parameters / 1e9, 2), "lora_trainable": trainable,
              "batch": batch, "steps": steps, "losses": [round(v, 4) for v in curve.values.get("loss", [])],
              "step_seconds_after_first": step_seconds, "prompt_tokens_max": max(
                  int(encode_for_generation(processor, p).input_ids.shape[1]) for p, _ in pairs[:batch]),
              "peak_gpu_memory_gib_training": None if peak_train is None else round(peak_train, 2),
              "generation_seconds": round(generation_s, 3), "generation_tokens": new_tokens,
              "generation_tokens_per_s": round(new_tokens / generation_s, 1),
              "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--train", action="store_true", help="the 7B preset's LoRA training steps, then one generation")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=3, help="the first warms up")
    parser.add_argument("--layers", type=int, default=None, help="text layers and vision blocks kept (7B: 28 / 32)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=Path("runs/gpu_check/qwen2.5-vl-7b-sized"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model_dir = write_model_dir(args.model_dir, dtype, args.layers)
    batches = [int(b) for b in args.batches.split(",")]
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.train:
        result = run_lora_training(model_dir, args.device, getattr(torch, dtype), args.train_batch,
                                   args.train_steps, args.max_new_tokens)
        args.out.write_text(json.dumps({"model": "qwen2.5-vl-7b-sized (random init)", "layers": args.layers,
                                        "device": device_name, "dtype": dtype, **result}, indent=1))
        return
    if args.engine == "transformers":
        rows = run_transformers(model_dir, args.device, getattr(torch, dtype), batches, args.max_new_tokens,
                                args.repeats)
    else:
        rows = run_vllm(model_dir, args.device, dtype, batches, args.max_new_tokens, args.repeats)
    args.out.write_text(json.dumps({"model": "qwen2.5-vl-7b-sized (random init)", "device": device_name,
                                    "dtype": dtype, "max_new_tokens": args.max_new_tokens, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
