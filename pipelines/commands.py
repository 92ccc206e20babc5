"""Pipeline subcommand of ``judo``: ``run`` (the demo, simulator and dashboard live in :mod:`tooling`)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cluster.local_kafka import kafka_attach
from cluster.telemetry import percentile
from pipelines.config import load_config


SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "judo-tiny"


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the pipeline from a config against any Kafka")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    run.set_defaults(func=run_pipeline)


def kafka_settings_for(config):
    """The configured external cluster, or the one started by `judo kafka up` in embedded mode."""
    if config.kafka.mode == "external":
        return config.kafka.settings
    local = kafka_attach()
    if local is None or not local.running_brokers():
        raise SystemExit("kafka.mode is embedded but no local Kafka runs: start one with `judo kafka up`")
    return local.settings()


def stop_on_sigterm(stop: threading.Event) -> None:
    """Make SIGTERM (systemd, Kubernetes, ``ray job stop``) set ``stop``: the same orderly stop as Ctrl-C.

    Installed once the pipeline has started: ``ray.init`` replaces any earlier SIGTERM handler with one
    that exits at once (and, for a Ray it started, kills its processes), which would skip the drain.
    """
    def handler(signum, _frame):
        if stop.is_set():
            logging.getLogger(__name__).warning("SIGTERM again: still draining (SIGKILL stops at once; "
                                                "frames in flight are then redelivered)")
        stop.set()

    signal.signal(signal.SIGTERM, handler)


def run_pipeline(args: argparse.Namespace) -> int:
    # CLI start-up: the runner loads Ray, torch and transformers; the other commands must not pay for them
    from pipelines.runner import Pipeline
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = load_config(args.config)
    console = Console()
    pipeline = Pipeline(config, kafka_settings_for(config))
    with console.status("starting Ray, the prefilter pool and JUDO on Ray Serve..."):
        pipeline.start()
    stop = threading.Event()
    stop_on_sigterm(stop)
    console.print(f"pipeline running: {config.topics.frames} -> {config.topics.verdicts} (Ctrl-C or SIGTERM stops)")
    if pipeline.metrics is not None:
        console.print(f"metrics: {pipeline.metrics.url}")
    started = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while not stop.is_set() and (args.duration is None or time.monotonic() - started < args.duration):
                live.update(summary_table(pipeline.stats(), time.monotonic() - started))
                stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if stop.is_set():
            console.print("SIGTERM: draining the frames in flight and committing before stopping")
        pipeline.stop()
    console.print("pipeline stopped")
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
