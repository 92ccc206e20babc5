"""``judo kafka up|down|status|fetch``: the embedded Kafka from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cluster.kafka import KafkaError
from cluster.kafka_broker import KAFKA_VERSION, ensure_kafka_jars
from cluster.local_kafka import kafka_attach, kafka_down, kafka_up
from cluster.telemetry import read_spans, summarize_spans


def register(subparsers: argparse._SubParsersAction) -> None:
    kafka = subparsers.add_parser("kafka", help="run a local Apache Kafka (KRaft) cluster")
    actions = kafka.add_subparsers(dest="kafka_command", metavar="ACTION")
    actions.required = True

    up = actions.add_parser("up", help="start a detached local cluster and print its bootstrap address")
    up.add_argument("--brokers", type=int, default=1, help="number of brokers (3 for replication tests)")
    up.set_defaults(func=_up)

    down = actions.add_parser("down", help="stop the local cluster and delete its data")
    down.set_defaults(func=_down)

    status = actions.add_parser("status", help="show the local cluster's brokers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    traces = subparsers.add_parser("traces", help="read trace files written by the pipeline")
    trace_actions = traces.add_subparsers(dest="traces_command", metavar="ACTION")
    trace_actions.required = True
    summarize = trace_actions.add_parser("summarize", help="per-stage latency percentiles of a JSON-lines trace file")
    summarize.add_argument("file", type=Path)
    summarize.add_argument("--json", action="store_true", help="machine-readable output")
    summarize.set_defaults(func=_summarize_traces)

    fetch = actions.add_parser("fetch", help="download the Kafka jars from Maven Central (once)")
    fetch.add_argument("--version", default=KAFKA_VERSION)
    fetch.set_defaults(func=_fetch)


def _quiet_clients() -> None:
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _up(args: argparse.Namespace) -> int:
    _quiet_clients()
    try:
        kafka = kafka_up(brokers=args.brokers)
    except KafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(kafka.bootstrap_servers)
    return 0


def _down(args: argparse.Namespace) -> int:
    _quiet_clients()
    stopped = kafka_down()
    print("stopped" if stopped else "no local Kafka was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    _quiet_clients()
    kafka = kafka_attach()
    if kafka is None:
        print("no local Kafka was started with `judo kafka up`")
        return 1
    running = kafka.running_brokers()
    state = {**kafka.describe(), "running": running}
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        print(f"bootstrap servers: {kafka.bootstrap_servers}")
        for node in state["nodes"]:
            alive = "running" if node["node_id"] in running else "stopped"
            print(f"  broker {node['node_id']}: 127.0.0.1:{node['port']} pid {node['pid']} {alive}")
    return 0 if running else 1


def _fetch(args: argparse.Namespace) -> int:
    print(ensure_kafka_jars(args.version, quiet=False))
    return 0


def _summarize_traces(args: argparse.Namespace) -> int:
    if not args.file.exists():
        print(f"error: {args.file} does not exist", file=sys.stderr)
        return 1
    spans = read_spans(args.file)
    summary = summarize_spans(spans)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    traces = len({s["trace_id"] for s in spans})
    table = Table(title=f"{args.file}: {len(spans)} spans in {traces} traces")
    for column in ("stage", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for name, row in summary.items():
        table.add_row(name, str(row["count"]), *(f"{row[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")))
    Console().print(table)
    return 0
