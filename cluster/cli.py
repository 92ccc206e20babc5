"""``judo kafka up [--secure]|down|status|fetch``: the embedded Kafka from the command line;
``judo cluster up|down|status``: a Ray cluster of several nodes on this machine (:mod:`cluster.ray_nodes`,
driven through the ``ray`` CLI)."""

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
from cluster.kafka_detached import kafka_attach, kafka_down, kafka_up, secure_summary
from cluster.ray_nodes import RayClusterError, ray_attach, ray_down, ray_up
from cluster.telemetry import read_spans, summarize_spans


def register(subparsers: argparse._SubParsersAction) -> None:
    kafka = subparsers.add_parser("kafka", help="run a local Apache Kafka (KRaft) cluster")
    actions = kafka.add_subparsers(dest="kafka_command", metavar="ACTION")
    actions.required = True

    up = actions.add_parser("up", help="start a detached local cluster and print its bootstrap address")
    up.add_argument("--brokers", type=int, default=1, help="number of brokers (3 for replication tests)")
    up.add_argument("--secure", action="store_true",
                    help="the only listener SASL_SSL (SCRAM-SHA-512 over mutual TLS) with ACLs, a principal per role "
                         "with a generated password in a 0600 file; prints the files' paths and a config snippet, "
                         "never a password (docs/security.md)")
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

    _register_cluster(subparsers)


def _register_cluster(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser("cluster", help="run a Ray cluster of several nodes on this machine "
                                    "(docs/cluster.md)")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    actions.required = True
    up = actions.add_parser("up", help="start a head and worker nodes with `ray start`; print the address to join")
    up.add_argument("--workers", type=int, default=1, help="worker nodes beside the head")
    up.add_argument("--head-cpus", type=int, default=1)
    up.add_argument("--worker-cpus", type=int, default=1)
    up.add_argument("--head-resources", type=_resources, default={"judo_gpu": 1},
                    help='custom resources of the head, JSON (default: {"judo_gpu": 1})')
    up.add_argument("--worker-resources", type=_resources, default={"judo_gpu": 1},
                    help='custom resources of each worker, JSON (default: {"judo_gpu": 1})')
    up.add_argument("--object-store-mb", type=int, default=512, help="object store per node")
    up.set_defaults(func=_cluster_up)
    down = actions.add_parser("down", help="stop every process of the cluster started with `judo cluster up`")
    down.set_defaults(func=_cluster_down)
    status = actions.add_parser("status", help="the cluster's nodes: alive or dead, resources")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cluster_status)


def _resources(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in value.values()):
        raise argparse.ArgumentTypeError('a JSON object of resource name -> amount >= 0, e.g. {"judo_gpu": 1}')
    return value


def _cluster_up(args: argparse.Namespace) -> int:
    try:
        cluster = ray_up(args.workers, head_cpus=args.head_cpus, worker_cpus=args.worker_cpus,
                         head_resources=args.head_resources, worker_resources=args.worker_resources,
                         object_store_mb=args.object_store_mb)
    except (RayClusterError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(cluster.address)
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    print("stopped" if ray_down() else "no Ray cluster was started with `judo cluster up`")
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    cluster = ray_attach()
    if cluster is None:
        print("no Ray cluster was started with `judo cluster up`")
        return 1
    if not cluster.processes():
        print(f"the Ray cluster at {cluster.address} is not running (`judo cluster down` forgets it)")
        return 1
    try:
        nodes = cluster.describe_nodes()
    except RayClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"address": cluster.address, "nodes": nodes}, indent=2))
    else:
        print(f"address: {cluster.address}  (ray.address in the pipeline config)")
        for node in sorted(nodes, key=lambda n: n["role"]):
            shown = {k: v for k, v in node["resources"].items()
                     if not k.startswith(("node:", "memory", "object_store"))}
            print(f"  {node['role']:9} {node['node_id'][:12]} {'alive' if node['alive'] else 'dead '} {shown}")
    return 0 if all(n["alive"] for n in nodes) else 1


def _quiet_clients() -> None:
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _up(args: argparse.Namespace) -> int:
    _quiet_clients()
    try:
        kafka = kafka_up(brokers=args.brokers, secure=args.secure)
    except (KafkaError, ValueError, ImportError) as exc:  # ImportError: no cryptography for the certificates
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(secure_summary(kafka) if args.secure else kafka.bootstrap_servers)
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
        print(f"bootstrap servers: {kafka.bootstrap_servers}  ({kafka.listener}"
              f"{', ACLs enforced' if kafka.acls else ''})")
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
