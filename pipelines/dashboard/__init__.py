"""``judo dashboard``: the operator's web view of a running pipeline.

A live gallery of JUDO verdicts (frame with box and mask overlay beside the normal reference it
was compared with, defect type, reasoning, scores, trace), line health (frames/s, routed %,
defect rate per line and camera, per-stage latency percentiles, JUDO replicas over time) and
operator feedback (confirm / reject / relabel) published to the config's feedback topic.
See docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

DEFAULT_PORT = 8090


def register(subparsers: argparse._SubParsersAction) -> None:
    dashboard = subparsers.add_parser(
        "dashboard", help="operator web dashboard: live verdict gallery, line health, traces, feedback")
    dashboard.add_argument("--config", type=Path, required=True, help="the pipeline config the plant runs")
    dashboard.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    dashboard.add_argument("--port", type=int, default=DEFAULT_PORT)
    dashboard.add_argument("--ray-address", default=None,
                           help="Ray cluster to ask for JUDO replica counts (default: ray.address of the config, "
                                "else the local cluster)")
    dashboard.add_argument("--window", type=float, default=60.0, help="seconds of verdicts behind line health")
    dashboard.add_argument("--backlog", type=int, default=200,
                           help="records per partition read back on start, so the page is not empty")
    dashboard.set_defaults(func=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    from pipelines.commands import kafka_settings_for
    from pipelines.config import load_config
    from pipelines.dashboard.server import Dashboard

    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = load_config(args.config)
    dashboard = Dashboard(config, kafka_settings_for(config), host=args.host, port=args.port,
                          ray_address=args.ray_address, window_s=args.window, backlog=args.backlog)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    dashboard.start()
    print(f"JUDO Inspect dashboard on {dashboard.url} (verdicts from {config.topics.verdicts}, "
          f"feedback to {config.topics.feedback}); Ctrl-C stops", flush=True)
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.stop()
    return 0
