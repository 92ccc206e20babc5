"""Pipeline subcommands of ``judo``: ``demo``, ``run``, ``simulate`` and ``dashboard``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cluster.telemetry import percentile, setup_tracing, shutdown_tracing
from pipelines.dashboard import register as register_dashboard
from pipelines.simulator import CameraSimulator, CameraSpec


SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "judo-tiny"


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole system on this machine: local Kafka and Ray, prefilter, JUDO, live summary, gallery")
    demo.add_argument("--seconds", type=float, default=60.0, help="how long the cameras run")
    demo.add_argument("--fps", type=float, default=4.0, help="overall camera frame rate")
    demo.add_argument("--defect-rate", type=float, default=0.1)
    demo.add_argument("--lines", type=int, default=3)
    demo.add_argument("--cameras-per-line", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="gallery, traces, ground truth, summary")
    demo.set_defaults(func=_demo)
    register_pipeline_commands(subparsers)
    register_dashboard(subparsers)


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_full_demo

    return run_full_demo(args)


def register_pipeline_commands(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the pipeline from a config against any Kafka")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    run.set_defaults(func=run_pipeline)

    simulate = subparsers.add_parser("simulate", help="play simulated camera frames into the config's frame topic")
    simulate.add_argument("--config", type=Path, required=True)
    simulate.add_argument("--frames", type=int, required=True)
    simulate.add_argument("--fps", type=float, default=None, help="overall frame rate (default: as fast as possible)")
    simulate.add_argument("--defect-rate", type=float, default=0.1)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--truth", type=Path, default=Path("runs/ground_truth.jsonl"),
                          help="JSON-lines ground truth of every frame sent")
    simulate.set_defaults(func=run_simulate)


def kafka_settings_for(config):
    """The configured external cluster, or the one started by `judo kafka up` in embedded mode."""
    from cluster.kafka import kafka_attach

    if config.kafka.mode == "external":
        return config.kafka.settings
    local = kafka_attach()
    if local is None or not local.running_brokers():
        raise SystemExit("kafka.mode is embedded but no local Kafka runs: start one with `judo kafka up`")
    return local.settings()


def run_pipeline(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from pipelines.runner import Pipeline

    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = load_config(args.config)
    console = Console()
    pipeline = Pipeline(config, kafka_settings_for(config))
    with console.status("starting Ray, the prefilter pool and JUDO on Ray Serve..."):
        pipeline.start()
    console.print(f"pipeline running: {config.topics.frames} -> {config.topics.verdicts} (Ctrl-C stops)")
    started = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while args.duration is None or time.monotonic() - started < args.duration:
                live.update(summary_table(pipeline.stats(), time.monotonic() - started))
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        pipeline.stop()
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from pipelines.config import load_config

    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = load_config(args.config)
    cameras = [CameraSpec(line.id, camera, line.product) for line in config.lines for camera in line.cameras]
    args.truth.parent.mkdir(parents=True, exist_ok=True)
    setup_tracing(f"{config.telemetry.service_name}.cameras",
                  trace_file=config.telemetry.trace_file)
    simulator = CameraSimulator(cameras, defect_rate=args.defect_rate, seed=args.seed)
    sent = simulator.publish(kafka_settings_for(config), config.topics.frames, args.frames, fps=args.fps,
                             truth_path=args.truth)
    shutdown_tracing()
    defective = sum(item.is_defective for item in sent)
    Console().print(f"sent {len(sent)} frames ({defective} defective) to {config.topics.frames}; "
                    f"ground truth in {args.truth}")
    return 0


def summary_table(stats: dict, elapsed_s: float) -> Table:
    """The live summary: throughput, routing, verdicts, latency."""
    verdicts = stats.get("verdicts_prefilter", 0) + stats.get("verdicts_judo", 0)
    table = Table(title=f"JUDO Inspect — {elapsed_s:.0f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("frames in", stats.get("frames_in", 0)),
        ("frames/s", f"{stats.get('frames_in', 0) / max(elapsed_s, 1e-6):.1f}"),
        ("verdicts (prefilter / JUDO)", f"{stats.get('verdicts_prefilter', 0)} / {stats.get('verdicts_judo', 0)}"),
        ("routed to JUDO", f"{100 * stats.get('verdicts_judo', 0) / max(verdicts, 1):.1f} %"),
        ("dead letters", stats.get("dead_letters", 0)),
        ("in flight", stats.get("in_flight", 0)),
        ("pass latency p50 / p99 ms", f"{percentile(stats.get('latencies_pass_ms', []), 50):.0f} / "
                                      f"{percentile(stats.get('latencies_pass_ms', []), 99):.0f}"),
        ("JUDO latency p50 / p99 ms", f"{percentile(stats.get('latencies_judo_ms', []), 50):.0f} / "
                                      f"{percentile(stats.get('latencies_judo_ms', []), 99):.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table
