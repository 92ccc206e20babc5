#!/usr/bin/env bash
# Throughput of the JUDO reasoner on one GPU: tokens/s and verdicts/s of the shipped tiny
# checkpoint and of a randomly initialised Qwen2.5-VL-7B-sized model (same architecture class).
# Needs only torch + transformers (+ numpy, pillow): no Ray, no vLLM, no network, no judo_model.
#
#   bash benchmarks/gpu_check.sh [CHECKPOINT=checkpoints/judo-tiny] [OUT=gpu_check.json]
#   DEVICE=cpu SKIP_7B=1 bash benchmarks/gpu_check.sh    # dry run without a GPU
#
# A verdict is one juxtaposed prompt (reference, query, evidence image + the output-contract
# instructions) answered with up to MAX_NEW_TOKENS tokens. The random 7B never emits the stop
# token, so every 7B verdict runs the full MAX_NEW_TOKENS: its numbers are an upper bound on
# work per verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
[ -x "$HOME/.cache/judo-inspect/venv/bin/python" ] && PY=${PY_OVERRIDE:-$HOME/.cache/judo-inspect/venv/bin/python}
CHECKPOINT=${1:-checkpoints/judo-tiny}
OUT=${2:-gpu_check.json}
"$PY" - "$CHECKPOINT" "$OUT" <<'PYEOF'
import json, os, sys, time

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

checkpoint, out_path = sys.argv[1], sys.argv[2]
device = os.environ.get("DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
max_new = int(os.environ.get("MAX_NEW_TOKENS", "64"))
batches = [int(b) for b in os.environ.get("BATCHES", "1,8,32").split(",")]
repeats = int(os.environ.get("REPEATS", "3"))
tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
tokenizer.padding_side = "left"
INSTRUCTIONS = ("Answer in exactly this format:\n<think>a short comparison of the query image with the normal "
                "reference</think>\n<defect>no</defect> if the query is normal, or <defect>yes: defect type</defect>\n"
                "<region>[[x1, y1, x2, y2], ...]</region> boxes around each defect in coordinates from 0 to 1000, "
                "or [] if there is no defect\n<answer>the text of the chosen option</answer> once per question")


def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompt_inputs(model, side, n):
    """n juxtaposed prompts (reference, query: side x side; evidence: 2*side x side) of random pixels."""
    processor = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=4 * side * side, patch_size=14,
                                         temporal_patch_size=2, merge_size=2)
    rng = np.random.default_rng(0)
    texts, images = [], []
    for _ in range(n):
        imgs = [Image.fromarray(rng.integers(0, 255, (side, w, 3), dtype=np.uint8)) for w in (side, side, 2 * side)]
        content = []
        for role, _ in zip(("normal reference", "query", "anomaly map evidence"), imgs):
            content += [{"type": "text", "text": f"The {role}:\n"}, {"type": "image"}]
        content.append({"type": "text", "text": "Inspect the query for defects.\n" + INSTRUCTIONS})
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        images += imgs
        grids = processor(images=imgs, return_tensors="pt")["image_grid_thw"]
        for grid in grids:  # expand each placeholder to the image's merged-token count
            text = text.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // 4), 1)
        texts.append(text.replace("<|placeholder|>", "<|image_pad|>"))
    vision = processor(images=images, return_tensors="pt")
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    batch["mm_token_type_ids"] = (batch["input_ids"] == model.config.image_token_id).long()
    batch.update(vision)
    return {k: v.to(device) for k, v in batch.items()}


def measure(name, model, side):
    model.eval()
    rows = []
    for n in batches:
        inputs = prompt_inputs(model, side, n)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        kwargs = dict(max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with torch.inference_mode():
            model.generate(**inputs, **kwargs)  # warm-up
            sync()
            times, tokens = [], 0
            for _ in range(repeats):
                start = time.perf_counter()
                out = model.generate(**inputs, **kwargs)
                sync()
                times.append(time.perf_counter() - start)
                tokens += int((out[:, inputs["input_ids"].shape[1]:] != tokenizer.pad_token_id).sum())
        seconds = float(np.median(times))
        row = {"model": name, "batch": n, "prompt_tokens": int(inputs["input_ids"].shape[1]),
               "seconds_per_batch": round(seconds, 4), "verdicts_per_s": round(n / seconds, 2),
               "tokens_per_s": round(tokens / repeats / seconds, 1), "latency_ms_p50": round(1000 * seconds, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


results = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "max_new_tokens": max_new, "rows": []}
dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
tiny = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype, local_files_only=True).to(device)
results["rows"] += measure("judo-tiny", tiny, 112)
del tiny
if not os.environ.get("SKIP_7B"):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                             "mrope_section": [16, 24, 24]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=3584),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        big = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    print(f"7B-sized model: {sum(p.numel() for p in big.parameters()) / 1e9:.2f} B parameters", flush=True)
    results["rows"] += measure("qwen2.5-vl-7b-sized (random init)", big, 224)
with open(out_path, "w") as handle:
    json.dump(results, handle, indent=1)
print(f"wrote {out_path}")
PYEOF
