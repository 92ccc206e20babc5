"""``benchmarks/gpu_check.sh`` and the project's other shell scripts: they parse, and without a GPU the check
runs nothing, exits 0 and names every part it skipped (the LoRA training step among them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("benchmarks/*.sh"), ROOT / ".ci" / "run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: gpu_check.sh would run the full check")
def test_gpu_check_without_a_gpu_skips_every_part_and_says_why(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)], capture_output=True,
                            text=True, timeout=120, env={"PY": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ran"] == []
    assert len(summary["skipped"]) == 5 and all("no GPU visible" in line for line in summary["skipped"])
    assert any(line.startswith("LoRA training steps") for line in summary["skipped"])
