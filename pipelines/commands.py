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

from cluster.kafka import KafkaError
from cluster.kafka_detached import kafka_attach, kafka_up
from cluster.telemetry import percentile
from pipelines.config import ConfigError, load_config
from pipelines.metrics_http import check_metrics_settings


log = logging.getLogger(__name__)

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "judo-tiny"


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the pipeline from a config against any Kafka")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    run.add_argument("--summary-interval", type=float, default=10.0,
                     help="seconds between summary lines when the output is not a terminal (default 10)")
    run.set_defaults(func=run_pipeline)

    calibrate = subparsers.add_parser(
        "calibrate-clearing", help="measure how often JUDO's 'no defect' is right on one product's labelled "
                                   "validation frames; JUDO may clear that product's flagged frames only if it meets "
                                   "judo.clearing (writes judo_clearing.json into the product's bank folder)")
    calibrate.add_argument("--config", type=Path, required=True, help="the pipeline config (checkpoint, engine, banks)")
    calibrate.add_argument("--product", required=True)
    calibrate.add_argument("--data", type=Path, required=True, help="MVTec-style folder with validation/good and "
                           "validation/<defect type>/ for the product")
    calibrate.add_argument("--category", help="category folder name (default: the product's name)")
    calibrate.set_defaults(func=calibrate_clearing)


def kafka_settings_for(config):
    """The configured external cluster; in embedded mode the local Kafka of `judo kafka up`, started
    here (detached, as `judo kafka up` does) when none runs, so a first `judo run` needs no other step."""
    if config.kafka.mode == "external":
        return config.kafka.settings
    local = kafka_attach()
    if local is None or not local.running_brokers():
        log.info("kafka.mode is embedded and no local Kafka runs: starting one (%d broker(s))", config.kafka.brokers)
        try:
            local = kafka_up(brokers=config.kafka.brokers)
        except (KafkaError, OSError) as exc:
            raise SystemExit(f"kafka.mode is embedded but the local Kafka could not start ({exc}); start it with "
                             "`judo kafka up` to see why, or set kafka.mode: external") from None
        log.info("local Kafka at %s; it keeps running after this command (`judo kafka down` stops it)",
                 local.bootstrap_servers)
    return local.settings()


def config_or_exit(path: Path):
    """The config with its input paths checked; a bad one ends the command with the error's words, no traceback."""
    try:
        return load_config(path, check_paths=True)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


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
    config = config_or_exit(args.config)
    try:
        check_metrics_settings(config.metrics)  # before Kafka, Ray and the models: /metrics never serves open
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
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
        if console.is_terminal:  # a live table in place
            with Live(console=console, refresh_per_second=1) as live:
                while not stop.is_set() and (args.duration is None or time.monotonic() - started < args.duration):
                    live.update(summary_table(pipeline.stats(), time.monotonic() - started))
                    stop.wait(1.0)
        else:  # output to a file or a pipe: Live would draw only at exit, so one line per interval
            while not stop.wait(next_summary_wait(args.summary_interval, args.duration, time.monotonic() - started)):
                log.info("%s", summary_line(pipeline.stats(), time.monotonic() - started))
                if args.duration is not None and time.monotonic() - started >= args.duration:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        if stop.is_set():
            console.print("SIGTERM: draining the frames in flight and committing before stopping")
        pipeline.stop()
    console.print("pipeline stopped")
    return 0


def next_summary_wait(interval_s: float, duration_s: float | None, elapsed_s: float) -> float:
    """How long to wait for the next summary line: the interval, or less where the run ends sooner."""
    return interval_s if duration_s is None else max(min(interval_s, duration_s - elapsed_s), 0.0)


def calibrate_clearing(args: argparse.Namespace) -> int:
    # CLI start-up: loads torch and the JUDO checkpoint
    from pipelines.clearing_calibration import measure_clearing, rule_of
    config = config_or_exit(args.config)
    if args.product not in config.products:
        raise SystemExit(f"product {args.product!r} is not under products in {args.config} "
                         f"(known: {sorted(config.products)})")
    record = measure_clearing(config, args.product, args.data, args.category or args.product)
    rule = rule_of(config)
    path = record.save(config.products[args.product].bank, rule)
    summary = record.summary(rule)
    rate = summary["missed_defect_rate"]
    Console().print(
        f"[bold]{args.product}[/]: JUDO cleared {record.good_cleared} of {record.good_frames} good and "
        f"{record.defects_cleared} of {record.defect_frames} defect frames (missed-defect rate "
        f"{'n/a' if rate is None else f'{rate:.3f}'}, upper bound {summary['missed_defect_rate_upper']:.3f} at "
        f"{rule.confidence:.0%}) -> clearing {'ALLOWED' if summary['allowed'] else 'not allowed'} "
        f"(limit {rule.max_missed_defect_rate}, at least {rule.min_defect_frames} defect frames); {path}")
    return 0


def summary_table(stats: dict, elapsed_s: float) -> Table:
    """The live summary: throughput, routing, verdicts, latency."""
    table = Table(title=f"JUDO Inspect — {elapsed_s:.0f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(stats, elapsed_s):
        table.add_row(name, str(value))
    return table


def summary_line(stats: dict, elapsed_s: float) -> str:
    """The live summary as one log line (``judo run`` writing to a file or a pipe)."""
    return f"{elapsed_s:.0f} s: " + "; ".join(f"{name} {value}" for name, value in summary_rows(stats, elapsed_s))


def summary_rows(stats: dict, elapsed_s: float) -> list[tuple[str, object]]:
    """(metric, value) of the summary: throughput, routing, verdicts, latency."""
    verdicts = stats.get("verdicts_prefilter", 0) + stats.get("verdicts_judo", 0)
    return [
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
