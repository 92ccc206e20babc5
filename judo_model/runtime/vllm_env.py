"""Where the vLLM engine runs: this Python if it has vLLM, else the engine environment ``make vllm-env``
made (``scripts/vllm_env.sh``, docs/vllm.md). Light on purpose (no torch): the ``judo`` command reads it
at start-up to hand ``judo eval mmad --engine vllm`` over to that environment."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

#: The engine environment's interpreter; JUDO_VLLM_PYTHON overrides the default.
VLLM_PYTHON = Path(os.environ.get("JUDO_VLLM_PYTHON", "~/.cache/judo-inspect/vllm-venv/bin/python")).expanduser()


def vllm_here() -> bool:
    """Whether this Python has vLLM (the engine environment, or a GPU image with the ``gpu`` extra)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_unavailable(python: Path = VLLM_PYTHON) -> str | None:
    """Why ``python`` cannot run the vLLM engine (None: it can)."""
    if not python.is_file():
        return f"no vLLM engine environment at {python} (make vllm-env; docs/vllm.md)"
    probe = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode:
        return f"{python} cannot import vllm: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def judo_command(python: Path = VLLM_PYTHON) -> Path:
    """The ``judo`` command of the environment ``python`` belongs to (the project is installed there)."""
    return python.parent / "judo"
