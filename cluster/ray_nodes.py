"""A Ray cluster of several nodes on one machine: a head and N workers, each its own raylet on 127.0.0.1.

:class:`LocalRayCluster` runs ``ray start --head`` and ``ray start --address=...`` (the ``ray`` CLI of
this interpreter's environment) with free ports, their own CPU count and custom resources (e.g.
``judo_gpu``), so placement by resources and the loss of a node can be shown without a second
machine. Each ``ray start`` runs in its own process session, which its daemons and workers keep:
stopping kills exactly those sessions (``ray stop`` would stop every Ray of this user on the
machine, other pipelines and test runs included). Ray is driven through subprocesses only, so
importing this module (the ``judo`` CLI does) never loads Ray. :func:`ray_up` / :func:`ray_down`
keep one such cluster between commands (``judo cluster up|down|status``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.kafka_broker import CACHE_ROOT, free_port

#: The ``ray`` command of the environment this interpreter runs in (same Ray, same project code).
RAY_CLI = Path(sys.executable).with_name("ray")
#: Where ``judo cluster up`` remembers its cluster.
STATE_FILE = CACHE_ROOT / "ray-local" / "state.json"

#: Prints ``ray.nodes()`` as JSON once ``expected`` nodes are alive (or the time is up); run with
#: ``python -c`` so that the caller never imports Ray.
_NODES_SCRIPT = """
import json, sys, time
import ray
address, expected, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + timeout_s
nodes = ray.nodes()
while sum(n["Alive"] for n in nodes) < expected and time.monotonic() < deadline:
    time.sleep(0.5)
    nodes = ray.nodes()
print(json.dumps(nodes, default=str))
"""


class RayClusterError(RuntimeError):
    """A ``ray start`` failed, the cluster did not come up, or a node to act on does not exist."""


@dataclass
class RayNode:
    """One node of the cluster: what it was started with, and the process session its processes share."""

    role: str  # "head" or "worker-N"
    num_cpus: int
    resources: dict[str, float]
    node_manager_port: int
    session_id: int = 0  # the pid of its ``ray start``, the session id of all its processes


@dataclass
class LocalRayCluster:
    """A head and ``len(workers)`` worker nodes on 127.0.0.1, started with ``ray start``.

    >>> with LocalRayCluster.with_workers(1, worker_resources={"judo_gpu": 1}) as cluster:  # doctest: +SKIP
    ...     ray.init(address=cluster.address)
    ...     cluster.kill_worker(1)   # SIGKILL the worker's raylet: the node is marked dead
    """

    head: RayNode
    workers: list[RayNode]
    temp_dir: Path | None = None
    object_store_mb: int = 256
    port: int = 0
    started: bool = False
    killed: list[str] = field(default_factory=list)
    owns_temp: bool = False  # the temp dir was made here, so stop() removes it

    @classmethod
    def with_workers(cls, workers: int = 1, *, head_cpus: int = 1, worker_cpus: int = 1,
                     head_resources: dict[str, float] | None = None, worker_resources: dict[str, float] | None = None,
                     object_store_mb: int = 256, temp_dir: Path | None = None) -> "LocalRayCluster":
        """A head with ``head_cpus`` and ``head_resources``, and ``workers`` nodes alike with the worker's."""
        if workers < 0 or head_cpus < 0 or worker_cpus < 0:
            raise ValueError(f"workers and CPU counts must be >= 0 (got {workers}, {head_cpus}, {worker_cpus})")
        if object_store_mb < 80:
            raise ValueError(f"object_store_mb must be >= 80 (Ray's minimum is 75 MiB), got {object_store_mb}")
        head = RayNode("head", head_cpus, dict(head_resources or {}), 0)
        nodes = [RayNode(f"worker-{i}", worker_cpus, dict(worker_resources or {}), 0) for i in range(1, workers + 1)]
        return cls(head, nodes, temp_dir=temp_dir, object_store_mb=object_store_mb)

    @property
    def address(self) -> str:
        """What ``ray.init(address=...)`` and the config's ``ray.address`` take."""
        return f"127.0.0.1:{self.port}"

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers]

    # ------------------------------------------------------------------ start and stop

    def start(self, timeout_s: float = 180.0) -> "LocalRayCluster":
        if self.started:
            return self
        if not RAY_CLI.exists():
            raise RayClusterError(f"no ray command beside {sys.executable} (pip install 'ray[serve]')")
        # short: Ray's unix sockets live under it, and their paths may not exceed 107 characters
        if self.temp_dir is None:
            self.temp_dir, self.owns_temp = Path(tempfile.mkdtemp(prefix="judo-ray-", dir="/tmp")), True
        self.port = free_port()
        self.started = True
        try:
            self._start_node(self.head, ["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
                                         "--include-dashboard=false", f"--dashboard-port={free_port()}",
                                         f"--ray-client-server-port={free_port()}"], timeout_s)
            for worker in self.workers:
                self._start_node(worker, [f"--address={self.address}"], timeout_s)
            self.wait_for_nodes(len(self.nodes), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, node: RayNode, role_args: list[str], timeout_s: float) -> None:
        node.node_manager_port = free_port()
        args = [str(RAY_CLI), "start", *role_args, "--node-ip-address=127.0.0.1", f"--num-cpus={node.num_cpus}",
                f"--resources={json.dumps(node.resources)}", f"--node-manager-port={node.node_manager_port}",
                f"--object-manager-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--object-store-memory={self.object_store_mb * 2**20}",
                "--disable-usage-stats"]
        # a session of its own: every daemon and worker of this node keeps it, so stop() finds them all
        process = subprocess.Popen(args, env=ray_cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        node.session_id = process.pid
        try:
            output, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            raise RayClusterError(f"`ray start` for the {node.role} node did not finish in {timeout_s:.0f} s") from None
        if process.returncode != 0:
            raise RayClusterError(f"`ray start` for the {node.role} node failed (exit {process.returncode}):\n"
                                  + output[-3000:])

    def stop(self, grace_s: float = 10.0, *, remove_temp: bool = True) -> None:
        """Stop every process of every node (SIGTERM, then SIGKILL after ``grace_s``), as ``ray stop`` would
        for this cluster only; wait until none is left."""
        pids = self.processes()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = self.processes()
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.processes():
            raise RayClusterError(f"Ray processes {self.processes()} survived SIGKILL")
        self.started = False
        if remove_temp and self.owns_temp and self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ processes and nodes

    def processes(self, node: RayNode | None = None) -> list[int]:
        """Live (not zombie) pids in the process sessions of ``node`` (default: every node)."""
        sessions = {n.session_id for n in ([node] if node else self.nodes) if n.session_id}
        return [pid for pid, sid, state, _ in _process_table() if sid in sessions and state != "Z"]

    def raylets(self) -> dict[str, int]:
        """``{role: pid}`` of each node's raylet that is still running."""
        found = {}
        for node in self.nodes:
            pids = set(self.processes(node))
            found.update({node.role: pid for pid, _, _, argv in _process_table()
                          if pid in pids and argv and argv[0].endswith("/raylet")})
        return found

    def describe_nodes(self, nodes: list[dict] | None = None, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Each node of ``ray.nodes()`` (asked in a subprocess unless given) with its role in this cluster:
        ``role``, ``node_id``, ``alive``, ``resources`` (total), ``raylet_socket``."""
        roles = {n.node_manager_port: n.role for n in self.nodes}
        nodes = nodes if nodes is not None else query_nodes(self.address, 0, 0.0, timeout_s)
        return [{"role": roles.get(n.get("NodeManagerPort"), "other"), "node_id": n["NodeID"],
                 "alive": bool(n["Alive"]), "resources": n.get("Resources", {}),
                 "raylet_socket": n.get("RayletSocketName")} for n in nodes]

    def wait_for_nodes(self, alive: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        nodes = self.describe_nodes(query_nodes(self.address, alive, timeout_s, timeout_s + 60))
        if sum(n["alive"] for n in nodes) < alive:
            raise RayClusterError(f"only {sum(n['alive'] for n in nodes)} of {alive} Ray nodes alive after "
                                  f"{timeout_s:.0f} s: {nodes}")
        return nodes

    def kill_worker(self, index: int = 1, nodes: list[dict] | None = None) -> dict[str, Any]:
        """SIGKILL worker ``index``'s raylet (found by its ``RayletSocketName`` in ``ray.nodes()``, or ``nodes``
        when the caller is connected and passes them): Ray marks the node dead once its health checks fail
        (about 15 s) and restarts the actors it held elsewhere. Returns the node id and the pid killed."""
        if not 1 <= index <= len(self.workers):
            raise RayClusterError(f"no worker {index}: this cluster has workers 1..{len(self.workers)}")
        role = self.workers[index - 1].role
        node = next((n for n in self.describe_nodes(nodes) if n["role"] == role and n["alive"]), None)
        if node is None:
            raise RayClusterError(f"{role} is not an alive node of the cluster at {self.address}")
        flag = f"--raylet_socket_name={node['raylet_socket']}"
        pids = [pid for pid, _, state, argv in _process_table() if state != "Z" and flag in argv]
        if len(pids) != 1:
            raise RayClusterError(f"expected one raylet with {flag}, found {pids}")
        _signal(pids[0], signal.SIGKILL)
        self.killed.append(role)
        return {"role": role, "node_id": node["node_id"], "raylet_pid": pids[0]}

    # ------------------------------------------------------------------ detached state

    def describe(self) -> dict[str, Any]:
        return {"port": self.port, "temp_dir": str(self.temp_dir), "owns_temp": self.owns_temp,
                "object_store_mb": self.object_store_mb,
                "head": asdict(self.head), "workers": [asdict(w) for w in self.workers], "killed": self.killed}

    @classmethod
    def from_description(cls, state: dict[str, Any]) -> "LocalRayCluster":
        return cls(RayNode(**state["head"]), [RayNode(**w) for w in state["workers"]], temp_dir=Path(state["temp_dir"]),
                   object_store_mb=state["object_store_mb"], port=state["port"], started=True,
                   killed=list(state.get("killed", [])), owns_temp=bool(state.get("owns_temp")))


def ray_cli_environment() -> dict[str, str]:
    """The environment of the ``ray`` subprocesses. Token auth as this process has it, else off:
    Ray 2.60's ``ray start --head`` turns token auth on by default while a joining node or a driver
    without ``RAY_AUTH_MODE`` expects it off, so the cluster follows the processes that will join it."""
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
            "RAY_USAGE_STATS_ENABLED": "0"}


def query_nodes(address: str, expected_alive: int = 0, wait_s: float = 0.0, timeout_s: float = 60.0) -> list[dict]:
    """``ray.nodes()`` of the cluster at ``address`` from a short-lived driver process."""
    try:
        done = subprocess.run([sys.executable, "-c", _NODES_SCRIPT, address, str(expected_alive), str(wait_s)],
                              env=ray_cli_environment(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RayClusterError(f"no answer from the Ray cluster at {address} in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise RayClusterError(f"cannot read the nodes of the Ray cluster at {address}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _process_table() -> list[tuple[int, int, str, list[str]]]:
    """``(pid, session id, state, argv)`` of every process visible in /proc (Linux)."""
    table = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        table.append((int(entry.name), int(fields[3]), fields[0], [a for a in argv if a]))
    return table


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- detached mode

def ray_up(workers: int = 1, *, head_cpus: int = 1, worker_cpus: int = 1, head_resources: dict | None = None,
           worker_resources: dict | None = None, object_store_mb: int = 512) -> LocalRayCluster:
    """Start a cluster that outlives this process and remember it; an already running one is returned as is."""
    existing = ray_attach()
    if existing is not None and existing.processes():
        return existing
    cluster = LocalRayCluster.with_workers(workers, head_cpus=head_cpus, worker_cpus=worker_cpus,
                                           head_resources=head_resources, worker_resources=worker_resources,
                                           object_store_mb=object_store_mb).start()
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(cluster.describe(), indent=2))
    return cluster


def ray_attach() -> LocalRayCluster | None:
    if not STATE_FILE.exists():
        return None
    return LocalRayCluster.from_description(json.loads(STATE_FILE.read_text()))


def ray_down() -> bool:
    """Stop the cluster started by :func:`ray_up`; True if there was one."""
    cluster = ray_attach()
    if cluster is None:
        return False
    cluster.stop()
    STATE_FILE.unlink(missing_ok=True)
    return True
