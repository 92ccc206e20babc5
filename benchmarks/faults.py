"""Fault benchmark: one streaming run per fault; frames in, verdicts out, lost, duplicates, recovery.

Run: ``python benchmarks/faults.py --json docs/faults.json`` (writes ``docs/faults.md`` beside it).
Each run uses real Kafka, real Ray and the shipped JUDO; see :mod:`tooling.faults`. ``node_killed`` runs on
a two-node Ray cluster started with ``ray start`` on this machine (``--ray-nodes N``: every fault does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tooling.faults.bench import FaultBench  # noqa: E402
from tooling.faults.catalogue import FAULTS, FaultSettings  # noqa: E402

COLUMNS = ("fault", "frames in", "verdicts out", "lost", "duplicates", "recovery s", "gap s", "pre-fault frames/s",
           "JUDO verdicts", "fallback verdicts")


def cells(row: dict) -> list[str]:
    return [row["fault"], str(row["frames_in"]), str(row["verdicts_out"]), str(row["lost"]), str(row["duplicates"]),
            f"{row['recovery_s']:.1f}", f"{row['gap_s']:.1f}", f"{row['pre_fault_fps']:.1f}", str(row["judo_verdicts"]),
            str(row["fallback_verdicts"])]


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Fault benchmark",
        "",
        f"One streaming run per fault: {s['frames']} simulated frames ({s['size']} px, {s['defect_rate']:.0%} "
        f"defective, 2 lines x 2 cameras) published at {s['fps']:g} frames/s into real Kafka; the pipeline "
        "(2 frame drivers, 2 prefilter actors, 2 JUDO replicas of the shipped tiny checkpoint on Ray Serve, "
        f"JUDO request timeout {s['judo_timeout_s']:g} s, 3 retries) runs on real Ray: "
        + (f"a {results['ray_nodes']}-node cluster for every fault" if results.get("ray_nodes", 1) > 1 else
           "one local Ray node, and for `node_killed` a cluster of two nodes on this machine (`ray start`: a head "
           "with `judo_gpu: 2`, a worker with `judo_gpu: 1`, one CPU each; JUDO replicas need `judo_gpu: 1`)")
        + f". The fault is injected once "
        f"{s['fault_after']:.0%} of the frames have verdicts. Produced by `benchmarks/faults.py` "
        f"({results['machine']}, {results['date']}); the same harness (`tooling/faults/`) runs in "
        "`tests/test_faults.py`, part of `make test`.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in results["faults"]]
    not_run = [name for name in FAULTS if name not in {row["fault"] for row in results["faults"]}]
    if not_run:
        lines += ["", "Not run in this benchmark: " + ", ".join(f"`{name}`" for name in not_run) + "."]
    lines += [
        "",
        "## The faults",
        "",
        *[f"* `{f.name}`: {f.what}." for f in FAULTS.values()],
        "",
        f"Broker outage and pipeline down time: {s['outage_s']:g} s (plus the time to stop and start); "
        f"the stalled replica wedges on the next request that reaches it and holds that request, and every "
        f"one arriving meanwhile, for {s['stall_s']:g} s. That run deploys the fault harness's "
        "`tooling.faults.stall.StallingJudoReplica` (the production replica plus the stall) in place of the "
        "production deployment.",
        "",
        "## Columns",
        "",
        "* **frames in**: frames published; **verdicts out**: distinct `frame_id`s on the verdict topic.",
        "* **lost**: produced `frame_id`s without a verdict. Must be 0.",
        "* **duplicates**: verdict records beyond the first per `frame_id` (at-least-once: frames in flight "
        "when a consumer dies or a group rebalances are processed again).",
        "* **recovery s**: seconds from the fault until the pipeline is back on schedule for good: from then "
        "on the number of frames with verdicts stays within "
        f"{s['slack_s']:g} s worth of the pre-fault verdict rate of where that rate would have put it had "
        "there been no fault (capped at the frames produced). 0 means the fault never put it behind.",
        "* **gap s**: the longest time after the fault in which no new frame got its verdict (output stopped).",
        "* **pre-fault frames/s**: the verdict rate over the 10 s before the fault (the camera rate when the "
        "pipeline keeps up).",
        "* **JUDO verdicts**: verdicts from JUDO; **fallback verdicts**: suspect frames JUDO did not answer within "
        "its retries, which got the prefilter's anomalous verdict marked `+judo-unavailable` instead of being "
        "lost.",
        "",
        "Times are measured when the benchmark's own consumer sees the verdict, on a shared 2-core machine; "
        "they vary from run to run.",
        "",
        "## Evidence per fault",
        "",
    ]
    lines += [f"* `{row['fault']}`: `{json.dumps(row['details'])}`" for row in results["faults"]]
    return "\n".join(lines) + "\n"


def write(results: dict, args: argparse.Namespace) -> None:
    args.json.write_text(json.dumps(results, indent=2))
    (args.markdown or args.json.with_suffix(".md")).write_text(markdown(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("docs/faults.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="default: faults.md beside the JSON")
    parser.add_argument("--frames", type=int, default=FaultSettings.frames)
    parser.add_argument("--fps", type=float, default=FaultSettings.fps)
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-faults"))
    parser.add_argument("--ray-nodes", type=int, default=1,
                        help="run every fault on a fresh Ray cluster of this many nodes on this machine "
                             "(node_killed always uses at least 2)")
    args = parser.parse_args()
    logging.getLogger("kafka").setLevel(logging.ERROR)
    console = Console()
    settings = FaultSettings(frames=args.frames, fps=args.fps)
    results = {"settings": asdict(settings), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "date": time.strftime("%Y-%m-%d"), "ray_nodes": args.ray_nodes, "faults": []}
    rows = results["faults"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with FaultBench(args.work, settings, ray_nodes=args.ray_nodes) as bench:
        for name in args.faults:
            console.print(f"[cyan]{name}[/]: {FAULTS[name].what}")
            report = bench.run(name)
            rows.append(report.row())
            console.print(f"  lost {report.lost}, duplicates {report.duplicates}, recovery {report.recovery_s} s")
            write(results, args)  # after every fault: an interrupted run still leaves its rows
    table = Table(title=f"faults: {settings.frames} frames per run at {settings.fps:g} frames/s")
    for column in COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*cells(row))
    console.print(table)
    return 0 if all(row["lost"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
