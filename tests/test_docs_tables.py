"""Tables in the docs that are rendered from committed benchmark JSON match that JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.markdown_blocks import pipeline_markdown, read_block
from benchmarks.scaling import BLOCK as SCALING_BLOCK, markdown as scaling_markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc, block, data, render, command", [
    ("scaling.md", SCALING_BLOCK, "scaling.json", scaling_markdown,
     "python benchmarks/scaling.py --json docs/scaling.json --markdown docs/scaling.md --from-json"),
    ("pipeline.md", "pipeline_benchmark.json", "pipeline_benchmark.json", pipeline_markdown,
     "python benchmarks/pipeline.py --json docs/pipeline_benchmark.json --markdown docs/pipeline.md --from-json"),
])
def test_docs_show_the_committed_benchmark_json(doc, block, data, render, command):
    results = json.loads((ROOT / "docs" / data).read_text())
    assert read_block(ROOT / "docs" / doc, block) == render(results).strip(), f"docs/{doc} is out of date: {command}"


def test_the_committed_scaling_runs_lost_nothing():
    assert all(run["lost"] == 0 and run["duplicates"] == 0
               for run in json.loads((ROOT / "docs" / "scaling.json").read_text())["runs"])
