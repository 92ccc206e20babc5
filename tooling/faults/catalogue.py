"""The faults a run can inject, what each one acts on, and the settings and report of a run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import ray

from cluster.local_kafka import LocalKafka
from cluster.ray_nodes import LocalRayCluster
from pipelines.config import PipelineConfig
from pipelines.runner import Pipeline
from pipelines.serve_app import APP_NAME, DEPLOYMENT_NAME
from tooling.faults.stall import StallingJudoReplica


@dataclass
class FaultSettings:
    """How each fault run streams; defaults keep one run near a minute on two CPU cores."""

    frames: int = 1000
    fps: float = 30.0
    size: int = 64
    defect_rate: float = 0.05
    fault_after: float = 0.3
    outage_s: float = 5.0
    stall_s: float = 15.0
    judo_timeout_s: float = 5.0
    slack_s: float = 2.0
    timeout_s: float = 300.0
    seed: int = 5


@dataclass
class FaultReport:
    """What one run produced; ``details`` holds the fault's own evidence (what was killed, retries).

    ``missing`` and ``unexpected`` name (up to 20) produced frame ids without a verdict and verdicts
    for frame ids never produced; ``dead_letter_reasons`` the reasons of (up to 20) dead letters."""

    fault: str
    frames_in: int
    verdicts_out: int
    lost: int
    duplicates: int
    dead_letters: int
    judo_verdicts: int
    fallback_verdicts: int
    pre_fault_fps: float
    gap_s: float
    recovery_s: float
    seconds: float
    details: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dead_letter_reasons: list[str] = field(default_factory=list)

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("missing", "unexpected", "dead_letter_reasons")}


@dataclass
class FaultContext:
    """What a fault may act on; ``restart_pipeline`` swaps ``pipeline`` for a new one (same JUDO deployment).
    ``ray_cluster``: the Ray cluster of several nodes the run is on (None: a local Ray); ``marks``: what
    ``inject`` leaves for ``observe`` (e.g. when it acted)."""

    kafka: LocalKafka
    pipeline: Pipeline
    config: PipelineConfig
    settings: FaultSettings
    judo_deployment: object | None = None
    ray_cluster: LocalRayCluster | None = None
    marks: dict = field(default_factory=dict)

    def restart_pipeline(self) -> None:
        self.pipeline.stop()
        time.sleep(self.settings.outage_s)
        self.pipeline = Pipeline(self.config, self.kafka.settings(), judo_deployment=self.judo_deployment).start()


def _broker_restart(ctx: FaultContext) -> dict:
    started = time.monotonic()
    ctx.kafka.stop_broker(1)
    time.sleep(ctx.settings.outage_s)
    ctx.kafka.start_broker(1)
    return {"broker_down_s": round(time.monotonic() - started, 1)}


def _broker_killed(ctx: FaultContext) -> dict:
    victim = ctx.kafka.nodes[1].node_id
    ctx.kafka.stop_broker(victim, kill=True)
    return {"killed_broker": victim, "running_brokers": ctx.kafka.running_brokers()}


def _driver_killed(ctx: FaultContext) -> dict:
    ray.kill(ctx.pipeline.handles.drivers[0])
    return {"killed": "frame driver 0 (owns the Kafka consumer)"}


def _prefilter_killed(ctx: FaultContext) -> dict:
    ray.kill(ctx.pipeline.handles.prefilter[0], no_restart=False)
    return {"killed": "prefilter actor 0"}


def _prefilter_answers(ctx: FaultContext) -> dict:
    return {"prefilter_alive_after": bool(ray.get(ctx.pipeline.handles.prefilter[0].products.remote(), timeout=60))}


def judo_replicas() -> list[dict]:
    """``{name, namespace}`` of each running JUDO replica actor."""
    prefix = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
    return sorted((a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)),
                  key=lambda a: a["name"])


def _judo_replica_killed(ctx: FaultContext) -> dict:
    victim = judo_replicas()[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]))
    return {"killed": victim["name"]}


def _judo_replicas_after(ctx: FaultContext) -> dict:
    return {"replicas_after": [a["name"] for a in judo_replicas()]}


def actor_placement(ctx: FaultContext) -> dict[str, list[str]]:
    """The node role (``head``, ``worker-1``, ...) of each live pipeline actor and JUDO replica, by kind."""
    roles = {n["node_id"]: n["role"] for n in ctx.ray_cluster.describe_nodes(ray.nodes())}
    alive = {a["ActorID"]: a for a in ray._private.state.actors().values() if a["State"] == "ALIVE"}
    handles = ctx.pipeline.handles
    placement = {kind: sorted(roles.get(alive[h._actor_id.hex()]["Address"]["NodeID"], "?") for h in group
                              if h._actor_id.hex() in alive)
                 for kind, group in (("prefilter", handles.prefilter), ("sink", [handles.sink]),
                                     ("driver", handles.drivers))}
    replicas = {a["name"] for a in judo_replicas()}
    placement["judo"] = sorted(roles.get(a["Address"]["NodeID"], "?") for a in alive.values() if a["Name"] in replicas)
    return placement


def _node_killed(ctx: FaultContext) -> dict:
    before = actor_placement(ctx)
    killed = ctx.ray_cluster.kill_worker(1, ray.nodes())
    ctx.marks["killed_at"] = time.monotonic()
    return {"placement_before": before, "killed_node": killed["role"], "killed_raylet_pid": killed["raylet_pid"],
            "ray_address": ray.get_runtime_context().gcs_address}


def _node_killed_after(ctx: FaultContext, timeout_s: float = 120.0) -> dict:
    """Wait until the killed node is dead and every actor and replica runs again (on the nodes left); report
    where, and how long after the kill that was."""
    killed = ctx.ray_cluster.killed[-1]
    expected = {"prefilter": ctx.config.prefilter.actors, "sink": 1, "driver": ctx.config.ingest.actors,
                "judo": ctx.config.judo.replicas.min}
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = ctx.ray_cluster.describe_nodes(ray.nodes())
        placement = actor_placement(ctx)
        back = (not any(n["alive"] for n in nodes if n["role"] == killed)
                and all(len(placement[k]) == n and killed not in placement[k] for k, n in expected.items()))
        if back or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return {"placement_after": placement, "all_back": back,
            "alive_nodes": sorted(n["role"] for n in nodes if n["alive"]),
            "recreated_after_s": round(time.monotonic() - ctx.marks["killed_at"], 1) if back else None}


def _judo_replica_stalled(ctx: FaultContext) -> dict:
    stalled = ctx.pipeline.handles.judo.inject_stall.remote(ctx.settings.stall_s).result()
    return {"stalled": stalled, "stall_s": ctx.settings.stall_s, "request_timeout_s": ctx.settings.judo_timeout_s}


def _pipeline_restarted(ctx: FaultContext) -> dict:
    started = time.monotonic()
    ctx.restart_pipeline()
    return {"pipeline_down_s": round(time.monotonic() - started, 1)}


@dataclass(frozen=True)
class Fault:
    """``inject`` acts and returns what it did; ``observe`` reports the state after the run (evidence).

    ``judo_deployment`` replaces the production JUDO Serve deployment for the run (None: the production one)."""

    name: str
    what: str
    inject: Callable[[FaultContext], dict]
    brokers: int = 1
    observe: Callable[[FaultContext], dict] | None = None
    judo_deployment: object | None = None
    ray_nodes: int = 1


FAULTS = {f.name: f for f in [
    Fault("none", "no fault: the baseline the others are compared with", lambda ctx: {}),
    Fault("broker_restart", "the single Kafka broker stopped, restarted after the outage", _broker_restart),
    Fault("broker_killed", "one of three brokers killed (replication 3, min.insync.replicas 2)", _broker_killed, 3),
    Fault("driver_killed", "a frame driver actor (Kafka consumer + ingest) killed with ray.kill", _driver_killed),
    Fault("prefilter_killed", "a prefilter actor killed (Ray restarts it)", _prefilter_killed,
          observe=_prefilter_answers),
    Fault("judo_replica_killed", "a JUDO Serve replica killed (Serve replaces it)", _judo_replica_killed,
          observe=_judo_replicas_after),
    Fault("judo_replica_stalled", "a JUDO replica wedged by its next request, past the request timeout", _judo_replica_stalled,
          observe=_judo_replicas_after, judo_deployment=StallingJudoReplica),
    Fault("pipeline_restarted", "the whole pipeline stopped and started again, same consumer group",
          _pipeline_restarted),
    Fault("node_killed", "a two-node Ray cluster (`ray start`, one machine): the worker node's raylet killed "
          "(SIGKILL), its actors and JUDO replica recreated on the head", _node_killed, observe=_node_killed_after,
          ray_nodes=2),
]}
