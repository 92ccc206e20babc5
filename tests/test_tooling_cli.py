"""``tooling`` joins the ``judo`` command through its entry point, and the runtime never imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from pipelines.cli import ENTRY_POINT_GROUP, build_parser
from tooling.cli import run_dashboard, run_demo, run_simulate

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("cluster", "judo_model", "actors", "pipelines")


def test_tooling_subcommands_come_through_the_entry_point_group():
    parser = build_parser()
    assert parser.parse_args(["demo", "--seconds", "5"]).func is run_demo
    assert parser.parse_args(["simulate", "--config", "p.yaml", "--frames", "3"]).func is run_simulate
    dashboard = parser.parse_args(["dashboard", "--config", "p.yaml"])
    assert dashboard.func is run_dashboard and dashboard.port == 8090
    assert parser.parse_args(["run", "--config", "p.yaml"]).func.__module__ == "pipelines.commands"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'[project.entry-points."{ENTRY_POINT_GROUP}"]' in pyproject and '"tooling*"' in pyproject


def test_the_runtime_never_imports_tooling():
    offenders = []
    for package in RUNTIME:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                              if name == "tooling" or name.startswith("tooling.")]
    assert offenders == []


def test_the_judo_command_starts_without_loading_torch_ray_or_faiss():
    """`judo kafka status` and `judo --help` stay quick: the heavy stacks load only in the command that needs them."""
    probe = ("import sys; from pipelines.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'ray', 'transformers', 'faiss', 'trl') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
