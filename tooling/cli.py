"""Tooling sub-commands of ``judo``: ``demo``, ``simulate`` and ``dashboard``.

Registered through the ``judo.commands`` entry point (pyproject.toml), so :mod:`pipelines.cli`
never imports this package.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from rich.console import Console

from cluster.telemetry import setup_tracing, shutdown_tracing
from pipelines.commands import SHIPPED_CHECKPOINT, kafka_settings_for
from pipelines.config import load_config
from tooling.dashboard import DEFAULT_PORT
from tooling.dashboard.auth import OPERATOR_TOKEN_ENV, VIEWER_TOKEN_ENV, AuthConfigError, DashboardAuth
from tooling.simulator import CameraSimulator, CameraSpec


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
    demo.set_defaults(func=run_demo)

    simulate = subparsers.add_parser("simulate", help="play simulated camera frames into the config's frame topic")
    simulate.add_argument("--config", type=Path, required=True)
    simulate.add_argument("--frames", type=int, required=True)
    simulate.add_argument("--fps", type=float, default=None, help="overall frame rate (default: as fast as possible)")
    simulate.add_argument("--defect-rate", type=float, default=0.1)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--truth", type=Path, default=Path("runs/ground_truth.jsonl"),
                          help="JSON-lines ground truth of every frame sent")
    simulate.set_defaults(func=run_simulate)

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
    dashboard.add_argument("--operator-token-file", type=Path, default=None,
                           help="file holding the operators' access token (else $JUDO_DASHBOARD_OPERATOR_TOKEN)")
    dashboard.add_argument("--viewer-token-file", type=Path, default=None,
                           help="file holding the viewers' access token (else $JUDO_DASHBOARD_VIEWER_TOKEN)")
    dashboard.add_argument("--users-file", type=Path, default=None,
                           help="'name role password' lines (role viewer or operator), mode 0600")
    dashboard.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate (chain): serve HTTPS")
    dashboard.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    dashboard.set_defaults(func=run_dashboard)


def run_demo(args: argparse.Namespace) -> int:
    """``judo demo``: the whole system end to end (:func:`tooling.demo.run_full_demo`)."""
    # CLI start-up: the demo loads Ray, torch and transformers; `judo simulate` must not pay for them
    from tooling.demo import run_full_demo
    return run_full_demo(args)


def run_simulate(args: argparse.Namespace) -> int:
    """``judo simulate``: publish ``--frames`` simulated frames, ground truth to ``--truth``."""
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


def run_dashboard(args: argparse.Namespace) -> int:
    """``judo dashboard``: serve until Ctrl-C or SIGTERM."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # CLI start-up: the dashboard's server loads torch for its gallery; the other commands must not pay for it
    from tooling.dashboard.server import GENERATED_TOKEN_FILE, Dashboard
    config = load_config(args.config)
    try:
        auth = DashboardAuth.from_sources(
            operator_token_file=args.operator_token_file, viewer_token_file=args.viewer_token_file,
            users_file=args.users_file, generated_token_file=GENERATED_TOKEN_FILE,
            secure_cookies=args.tls_cert is not None)
    except AuthConfigError as exc:
        raise SystemExit(f"judo dashboard: {exc}") from None
    dashboard = Dashboard(config, kafka_settings_for(config), host=args.host, port=args.port,
                          ray_address=args.ray_address, window_s=args.window, backlog=args.backlog, auth=auth,
                          tls_cert=args.tls_cert, tls_key=args.tls_key)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    dashboard.start()
    print(f"JUDO Inspect dashboard on {dashboard.url} (verdicts from {config.topics.verdicts}, "
          f"feedback to {config.topics.feedback}); Ctrl-C stops", flush=True)
    if auth.generated_token_file is not None:
        print(f"log in at {dashboard.url}/login with the operator token in {auth.generated_token_file} "
              f"(set {OPERATOR_TOKEN_ENV}/{VIEWER_TOKEN_ENV} or --users-file to choose credentials)", flush=True)
    if args.tls_cert is None:
        print("WARNING: the dashboard serves plain HTTP: tokens, passwords and session cookies cross the network "
              "in clear. Give --tls-cert/--tls-key, or keep --host 127.0.0.1 behind a TLS-terminating proxy "
              "(docs/security.md)", flush=True)
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.stop()
    return 0
