"""Prints JUDO's Ray Serve replica counts as JSON lines, one every ``--interval`` seconds.

Run by the dashboard as a child process (see :class:`tooling.dashboard.feeds.ReplicaFeed`):
it joins the Ray cluster as a driver, which the dashboard itself never does. Exits when its
parent is gone or Ray cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ray
from ray import serve


def serve_replicas() -> dict[str, dict]:
    """``{"app/deployment": {"running": n, "status": str, "replicas": {state: n}}}`` from ``serve.status()``."""
    status = serve.status()
    deployments = {}
    for app_name, app in status.applications.items():
        for name, deployment in app.deployments.items():
            states = {str(getattr(k, "value", k)): int(v) for k, v in deployment.replica_states.items()}
            deployments[f"{app_name}/{name}"] = {
                "running": states.get("RUNNING", 0),
                "status": str(getattr(deployment.status, "value", deployment.status)),
                "replicas": states,
            }
    return deployments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="auto")
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    parent = os.getppid()
    try:
        ray.init(address=args.address, logging_level="ERROR", log_to_driver=False, namespace="judo-dashboard")
    except Exception as exc:
        print(json.dumps({"at": time.time(), "deployments": None, "error": f"cannot join Ray: {exc}"[:500]}),
              flush=True)
        return 1
    while os.getppid() == parent:
        try:
            sample = {"at": time.time(), "deployments": serve_replicas(), "error": None}
        except Exception as exc:
            sample = {"at": time.time(), "deployments": None, "error": f"{type(exc).__name__}: {exc}"[:500]}
        try:
            print(json.dumps(sample), flush=True)
        except BrokenPipeError:
            break
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
