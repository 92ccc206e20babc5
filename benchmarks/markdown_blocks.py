"""Benchmark tables written into the docs between markers, so the docs show the committed JSON exactly.

A doc holds ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; :func:`write_block` replaces what is
between them, and ``tests/test_docs_tables.py`` checks that the committed doc equals the rendering
of the committed JSON.
"""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def read_block(path: Path, name: str) -> str:
    begin, end = markers(name)
    return path.read_text().split(begin, 1)[1].split(end, 1)[0].strip()


def write_block(path: Path, name: str, body: str) -> None:
    begin, end = markers(name)
    text = path.read_text()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}")


def pipeline_markdown(results: dict) -> str:
    """The tables of docs/pipeline.md's Benchmark section, from ``benchmarks/pipeline.py``'s JSON."""
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    lines = ["| run | frames/s | lost | dup | pass p50 / p99 ms | JUDO p50 / p99 ms | routed normal |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"max_rate": "full pipeline, max rate", "paced_80pct": "full pipeline, 80 % of max",
             "passpath_max_rate": "pass path (nothing routed), max rate",
             "passpath_paced_80pct": "pass path, 80 % of its max"}
    for key, label in names.items():
        r = results[key]
        judo = f"{r['judo_p50_ms']:.0f} / {r['judo_p99_ms']:.0f}" if r["judo_verdicts"] else "–"
        lines.append(f"| {label} | {r['frames_per_s']:.1f} | {r['lost']} | {r['duplicates']} "
                     f"| {r['pass_p50_ms']:.0f} / {r['pass_p99_ms']:.0f} | {judo} | {r['routed_normal_rate']:.1%} |")
    bare = results["bare_prefilter"]
    size = "×".join(str(v) for v in bare["image_size"])
    lines += [f"| same stages in one process | {results['in_process']['frames_per_s']:.1f} | | | | | |",
              f"| bare prefilter (batch {bare['batch_size']}, {bare['threads']} thread(s), image {size}) "
              f"| {bare['frames_per_s']:.1f} | | | | | |", "",
              "Stage time, median ms per frame, inside the pipeline (max-rate run, and the run at 80 % of it) vs the "
              "same stage alone in this process on the same frames:", "",
              "| stage | pipeline ms | isolation ms | ratio | pipeline ms at 80 % | ratio at 80 % |",
              "|---|---:|---:|---:|---:|---:|"]
    for stage, row in results["stage_times"].items():
        paced = results["stage_times_paced_80pct"][stage]
        lines.append(f"| {stage} | {fmt(row['pipeline_ms'], '.1f')} | {fmt(row['isolation_ms'], '.1f')} "
                     f"| {fmt(row['ratio'], '.2f')} | {fmt(paced['pipeline_ms'], '.1f')} | {fmt(paced['ratio'], '.2f')} |")
    paced = results["passpath_paced_80pct"]
    lines += ["", "Targets of issue #25 item 1, from this run:", "",
              f"- Pass path ≥ 0.8 × bare prefilter: {results['passpath_max_rate']['frames_per_s']:.1f} / "
              f"{bare['frames_per_s']:.1f} = {results['passpath_vs_bare_prefilter']:.2f}.",
              f"- Full pipeline overhead vs the same stages in one process ≤ 0.15: "
              f"{results['overhead_vs_in_process']:.2f} ({results['max_rate']['frames_per_s']:.1f} vs "
              f"{results['in_process']['frames_per_s']:.1f} frames/s).",
              f"- Pass-path p99 ≤ 250 ms at 80 % of the sustained rate: {paced['pass_p99_ms']:.0f} ms "
              f"(p50 {paced['pass_p50_ms']:.0f} ms).",
              "- Each stage ≤ 1.5 × isolation: see the ratios above."]
    return "\n".join(lines)
