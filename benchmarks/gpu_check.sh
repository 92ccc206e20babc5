#!/usr/bin/env bash
# JUDO's two engines on one GPU: the transformers engine and the vLLM engine, on the shipped checkpoint
# (benchmarks/engines.py: requests/s and p50/p99 per replica at concurrency 1, 16, 64) and on a randomly
# initialised Qwen2.5-VL-7B-sized model (benchmarks/gpu_check.py: verdicts/s and tokens/s at batch 1, 8, 32),
# and on that model the 7B preset's LoRA training steps and one generation (step seconds, peak GPU memory).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR=runs/gpu_check]
#
# Installs nothing and downloads nothing: it runs what the Python at hand has (PY, default the project
# venv; for vLLM on GPUs that venv needs the gpu extra, `pip install .[gpu]`) and says plainly what it
# skipped: everything without a GPU, the vLLM engine without a GPU build of vLLM. Exits 0 when it skipped,
# non-zero only when something it ran failed. OUT_DIR/summary.json lists what ran and what was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
PY=${PY:-$HOME/.cache/judo-inspect/venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
ran=() skipped=()

summary() {
  "$PY" - "$OUT/summary.json" "${#ran[@]}" "${ran[@]}" "${skipped[@]}" <<'PYEOF'
import json, sys
path, count, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
json.dump({"ran": rest[:count], "skipped": rest[count:]}, open(path, "w"), indent=1)
PYEOF
  echo "--- gpu_check: ran ${#ran[@]}, skipped ${#skipped[@]} (${OUT}/summary.json)"
  for line in "${ran[@]}"; do echo "ran:     $line"; done
  for line in "${skipped[@]}"; do echo "SKIPPED: $line"; done
}

gpu="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null || true)"
if [ -z "$gpu" ]; then
  why="no GPU visible to $PY (torch.cuda.is_available() is False)"
  skipped+=("transformers engine on the shipped checkpoint: $why")
  skipped+=("vLLM engine on the shipped checkpoint: $why")
  skipped+=("transformers engine on a random Qwen2.5-VL-7B-sized model: $why")
  skipped+=("vLLM engine on a random Qwen2.5-VL-7B-sized model: $why")
  skipped+=("LoRA training steps and a generation on a random Qwen2.5-VL-7B-sized model: $why")
  summary
  exit 0
fi
echo "GPU: $gpu"

vllm_device="$("$PY" -c 'from judo_model.runtime.vllm_engine import platform_device; print(platform_device())' 2>/dev/null || true)"
engines=transformers
if [ "$vllm_device" = cuda ]; then
  engines=transformers,vllm
else
  why="$PY has ${vllm_device:+only the $vllm_device build of vLLM}${vllm_device:-no vLLM} (a GPU build comes with pip install .[gpu])"
  skipped+=("vLLM engine on the shipped checkpoint: $why")
  skipped+=("vLLM engine on a random Qwen2.5-VL-7B-sized model: $why")
fi

"$PY" benchmarks/engines.py --device cuda --engines "$engines" --concurrency 1,16,64 --requests 128 \
  --max-batch-size 64 --json "$OUT/engines_shipped_checkpoint.json"
ran+=("engines ($engines) on the shipped checkpoint: $OUT/engines_shipped_checkpoint.json")
for engine in ${engines//,/ }; do
  "$PY" benchmarks/gpu_check.py --engine "$engine" --device cuda --out "$OUT/7b_sized_$engine.json" \
    --model-dir "$OUT/qwen2.5-vl-7b-sized"
  ran+=("$engine engine on a random Qwen2.5-VL-7B-sized model: $OUT/7b_sized_$engine.json")
done
"$PY" benchmarks/gpu_check.py --train --device cuda --out "$OUT/7b_sized_lora_training.json" \
  --model-dir "$OUT/qwen2.5-vl-7b-sized"
ran+=("LoRA training steps (qwen2.5-vl-7b preset) and a generation on a random 7B-sized model: $OUT/7b_sized_lora_training.json")
summary
