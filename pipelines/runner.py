"""Bring the whole pipeline up from one config, watch it, and take it down.

Order: Ray → topics → prefilter pool (scoring and reference retrieval) and sink actors → the JUDO
Serve application → frame drivers (one Kafka consumer-group member each). While it runs, a supervisor
thread replaces any driver whose loop ended (its actor died or the loop failed); the new driver
rejoins the consumer group and resumes from the committed offsets. Stopping reverses the order:
every driver first finishes its in-flight frames and commits, and only then do they leave the group.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.prefilter import prefilter_actor_class
from actors.sink import sink_actor_class
from cluster.kafka import KafkaSettings, TopicSpec, create_topics
from cluster.ray_runtime import start_ray, stop_ray
from judo_model.prefilter.bank_format import BANK_META
from pipelines.config import PipelineConfig
from pipelines.driver import FrameDriverActor
from pipelines.metrics import ConsumerLag, PipelineCollector, merge_stats, serve_metrics
from pipelines.metrics_http import check_metrics_settings
from pipelines.serve_app import APP_NAME, JudoReplica, build_judo_deployment

log = logging.getLogger(__name__)

#: How often the supervisor looks for drivers whose loop ended.
SUPERVISE_INTERVAL_S = 1.0
#: How often it asks the drivers whether their consumer is in its group.
MEMBERSHIP_CHECK_INTERVAL_S = 5.0


@dataclass
class RestartBackoff:
    """How long to wait before replacing a driver slot's actor again.

    The first failure after a healthy run is replaced at once (a killed actor should cost one
    rebalance, not a wait); each further failure within ``healthy_s`` of its start doubles the
    wait, up to ``max_s``, so a driver that dies on start (a broken config, an unreachable
    broker) does not spin the cluster creating actors.
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    healthy_s: float = 60.0
    failures: int = 0

    def delay_after(self, ran_for_s: float) -> float:
        self.failures = 1 if ran_for_s >= self.healthy_s else self.failures + 1
        return 0.0 if self.failures == 1 else min(self.initial_s * 2 ** (self.failures - 2), self.max_s)


def bank_threshold(bank_dir: Path) -> float:
    """The calibrated routing threshold stored with a prefilter bank."""
    meta = json.loads((Path(bank_dir) / BANK_META).read_text())
    calibration = meta.get("calibration")
    if not calibration:
        raise ValueError(f"prefilter bank {bank_dir} has no calibrated threshold; refit it with `judo prefilter fit`")
    return float(calibration["threshold"])


def routing_thresholds(config: PipelineConfig) -> dict[str, float]:
    return {
        name: product.threshold if product.threshold is not None else bank_threshold(product.bank)
        for name, product in config.products.items()
    }


def pool_placement(count: int, scheduling: str) -> tuple[object | None, list]:
    """``(placement group or None, scheduling strategy of each actor)`` for a pool. SPREAD on several nodes: a
    SPREAD placement group of one bundle per actor (Ray's SPREAD strategy alone does not promise one actor
    per node); a bundle lost with its node is placed again on another node, and its actor restarts there.
    A bundle is 1 MiB of Ray's ``memory`` resource: it never limits a node."""
    if scheduling != "SPREAD" or sum(n["Alive"] for n in ray.nodes()) < 2:
        return None, [scheduling] * count
    group = placement_group([{"memory": float(1 << 20)}] * count, strategy="SPREAD")
    ray.get(group.ready(), timeout=120)
    return group, [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(count)]


def bank_version(config: PipelineConfig) -> str:
    """Names the prefilter banks that produced a pass verdict (product revisions)."""
    parts = []
    for name, product in sorted(config.products.items()):
        meta = json.loads((Path(product.bank) / BANK_META).read_text())
        parts.append(f"{name}.r{meta.get('revision', 0)}")
    return "prefilter:" + ",".join(parts)


def judo_replicas() -> dict[str, int]:
    """JUDO's Serve replicas by state (``RUNNING``, ``STARTING``, ...), for /metrics."""
    counts: dict[str, int] = {}
    for deployment in serve.status().applications[APP_NAME].deployments.values():
        for state, count in deployment.replica_states.items():
            name = str(getattr(state, "value", state))  # a ReplicaState enum member or its string
            counts[name] = counts.get(name, 0) + count
    return counts


@dataclass
class PipelineHandles:
    prefilter: list
    sink: object
    judo: object
    drivers: list
    runs: list


class Pipeline:
    """The running pipeline for a config and a Kafka cluster.

    ``judo_deployment``: the Serve deployment JUDO runs as (default :class:`JudoReplica`; the fault
    harness passes a subclass that can stall); the config's options are applied to it.
    """

    def __init__(self, config: PipelineConfig, kafka: KafkaSettings, *, judo_deployment=None):
        self.config = config
        self.kafka = kafka
        self.judo_deployment = judo_deployment or JudoReplica
        self.handles: PipelineHandles | None = None
        self.driver_restarts = 0
        self._owns_ray = False
        self._driver_cls = None
        self._driver_args: tuple = ()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._prefilter_group = None  # the placement group spreading the prefilter pool over nodes, if any
        self.metrics = None  # the /metrics endpoint (pipelines.metrics.MetricsServer) while running

    def start(self) -> "Pipeline":
        cfg = self.config
        check_metrics_settings(cfg.metrics)  # a /metrics without its token fails here, before anything starts
        topics = cfg.topics
        topic_configs = ({"min.insync.replicas": str(topics.min_insync_replicas)}
                         if topics.min_insync_replicas is not None else {})
        create_topics(self.kafka, [
            TopicSpec(topics.frames, topics.partitions, topics.replication_factor, topic_configs),
            TopicSpec(topics.verdicts, topics.partitions, topics.replication_factor, topic_configs),
            TopicSpec(topics.dead_letters, 1, topics.replication_factor, topic_configs),
            TopicSpec(topics.feedback, 1, topics.replication_factor, topic_configs),
        ])
        self._owns_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus)
        trace_file = str(cfg.telemetry.trace_file) if cfg.telemetry.trace_file else None
        banks = {name: str(p.bank) for name, p in cfg.products.items()}
        prefilter_cls = prefilter_actor_class(num_cpus=0)
        self._prefilter_group, placements = pool_placement(cfg.prefilter.actors, cfg.ray.scheduling)
        prefilter = [
            prefilter_cls.options(max_restarts=-1, max_task_retries=0, scheduling_strategy=placement).remote(
                banks, cfg.prefilter.threads_per_actor, cfg.telemetry.service_name, trace_file, with_references=True)
            for placement in placements
        ]
        sink = sink_actor_class().options(scheduling_strategy=cfg.ray.scheduling).remote(
            self.kafka.model_dump(), topics.verdicts, topics.dead_letters, cfg.telemetry.service_name, trace_file)
        ray.get([h.products.remote() for h in prefilter] + [sink.ready.remote()])
        serve.start(proxy_location=cfg.judo.http.proxy_location,
                    http_options=cfg.judo.http.serve_http_options(),
                    logging_config={"enable_access_log": False, "log_level": "WARNING"})
        judo = serve.run(build_judo_deployment(cfg, self.judo_deployment), name=APP_NAME,
                         route_prefix="/judo" if cfg.judo.http.enabled else None,
                         logging_config={"enable_access_log": False, "log_level": "WARNING"})
        thresholds = routing_thresholds(cfg)
        handle_bundle = {
            "kafka_settings": self.kafka.model_dump(), "prefilter": prefilter, "judo": judo, "sink": sink, "thresholds": thresholds,
        }
        self._driver_cls = FrameDriverActor.options(scheduling_strategy=cfg.ray.scheduling)
        self._driver_args = (cfg.model_dump(mode="json"), handle_bundle, bank_version(cfg))
        drivers = [self._driver_cls.remote(*self._driver_args) for _ in range(cfg.ingest.actors)]
        runs = [d.run.remote() for d in drivers]
        self.handles = PipelineHandles(prefilter, sink, judo, drivers, runs)
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="driver-supervisor", daemon=True)
        self._supervisor.start()
        self.metrics = serve_metrics(cfg.metrics, PipelineCollector(
            self.driver_stats, lambda: self.driver_restarts, judo_replicas,
            ConsumerLag(self.kafka, cfg.ingest.group_id, topics.frames)))
        return self

    def _supervise(self) -> None:
        """Replace every driver whose ``run`` ended, or that stays outside its consumer group.

        Without this a killed driver, or one whose loop raised, would leave its partitions
        unconsumed for good. The replacement joins the same consumer group, so it resumes
        from the committed offsets; frames that were in flight are redelivered (at-least-once).
        A driver whose consumer has not been a stable group member for ``join_timeout_s`` (a
        start that hung, or kafka-python 3.0.12 left "rebalancing" for good after a broker
        restart, polling but never rejoining) is replaced the same way.
        """
        handles = self.handles
        started = [time.monotonic()] * len(handles.runs)
        in_group_at = [0.0] * len(handles.runs)
        backoff = [RestartBackoff() for _ in handles.runs]
        due: dict[int, float] = {}  # slot -> when its replacement starts
        next_check = time.monotonic()
        join_timeout_s = self.config.ingest.join_timeout_s

        def retire(i: int, reason: str) -> None:
            delay = backoff[i].delay_after(time.monotonic() - started[i])
            log.warning("frame driver %d %s; replacing it in %.0f s", i, reason, delay)
            ray.kill(handles.drivers[i], no_restart=True)
            due[i] = time.monotonic() + delay

        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            live = [run for i, run in enumerate(handles.runs) if i not in due]
            ready, _ = ray.wait(live, num_returns=len(live), timeout=0) if live else ([], [])
            for i, run in enumerate(list(handles.runs)):
                if i in due or run not in ready or self._stopping.is_set():
                    continue
                try:
                    ray.get(run)
                    reason = "its loop returned"
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                retire(i, f"ended ({reason})")
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + MEMBERSHIP_CHECK_INTERVAL_S
                for i, state in self._memberships(due).items():
                    now = time.monotonic()
                    if state.get("in_group"):
                        in_group_at[i] = now
                    elif now - max(started[i], in_group_at[i]) > join_timeout_s and not self._stopping.is_set():
                        retire(i, f"has been outside its consumer group for {join_timeout_s:.0f} s ({state})")
            for i, when in list(due.items()):
                if time.monotonic() >= when and not self._stopping.is_set():
                    driver = self._driver_cls.remote(*self._driver_args)
                    handles.drivers[i], handles.runs[i] = driver, driver.run.remote()
                    started[i], in_group_at[i] = time.monotonic(), 0.0
                    del due[i]
                    self.driver_restarts += 1

    def _memberships(self, skip=(), timeout_s: float = MEMBERSHIP_CHECK_INTERVAL_S) -> dict[int, dict]:
        """Each driver's :meth:`pipelines.driver.FrameDriver.membership` by slot, asked all at once (with an ``error``
        for one that did not answer within ``timeout_s``); slots in ``skip`` are not asked."""
        asks = {i: driver.membership.remote() for i, driver in enumerate(self.handles.drivers) if i not in skip}
        ready, _ = ray.wait(list(asks.values()), num_returns=len(asks), timeout=timeout_s) if asks else ([], [])
        states = {}
        for i, ref in asks.items():
            try:
                states[i] = ray.get(ref) if ref in ready else {"error": f"no answer in {timeout_s:.0f} s"}
            except Exception as exc:
                states[i] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return states

    def stats(self) -> dict:
        """Counters summed over the live drivers, with latency samples concatenated.

        A driver that just died is skipped (the supervisor replaces it); ``driver_restarts``
        counts the replacements.
        """
        return {"driver_restarts": self.driver_restarts, **merge_stats(self.driver_stats().values())}

    def driver_stats(self) -> dict[str, dict]:
        """Each live driver's stats by actor id (what /metrics adds up); a driver that just died is skipped."""
        reports = {}
        for driver in list(self.handles.drivers) if self.handles else []:
            try:
                reports[driver._actor_id.hex()] = ray.get(driver.stats.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                continue
        return reports

    def membership(self, timeout_s: float = 10.0) -> list[dict]:
        """Each driver's :meth:`FrameDriver.membership`, or why it could not say."""
        return list(self._memberships(timeout_s=timeout_s).values())

    def wait_for(self, predicate, timeout_s: float, poll_s: float = 1.0) -> dict:
        """Poll stats until ``predicate(stats)`` holds or the time is up; return the last stats."""
        deadline = time.monotonic() + timeout_s
        stats = self.stats()
        while not predicate(stats) and time.monotonic() < deadline:
            time.sleep(poll_s)
            stats = self.stats()
        return stats

    def stop(self) -> None:
        if self.handles is None:
            return
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=60)
        # every driver finishes and commits before any leaves the group (see FrameDriver.run);
        # a dead driver's drain fails at once without cutting the others' short
        drains = [d.drain.remote() for d in self.handles.drivers]
        _, undrained = ray.wait(drains, num_returns=len(drains), timeout=120)
        if undrained:
            log.warning("%d frame drivers did not drain within 120 s", len(undrained))
        try:
            ray.get([d.stop.remote() for d in self.handles.drivers], timeout=30)
            ray.get(self.handles.runs, timeout=120)
        except Exception as exc:
            log.warning("drivers did not stop cleanly: %s", exc)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        # the drivers hold Serve handles: gone before Serve, so no call of theirs to its controller is left
        # failing and retrying; on a Ray of our own, deleting the app and stopping Ray skips the controller's
        # graceful_shutdown, which kills itself under its own call ("ServeController ... killed by ray.kill")
        for actor in [*self.handles.drivers, *self.handles.prefilter, self.handles.sink]:
            ray.kill(actor, no_restart=True)
        if self._owns_ray:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        if self._prefilter_group is not None:
            remove_placement_group(self._prefilter_group)
            self._prefilter_group = None
        self.handles = None
        if self._owns_ray:
            stop_ray()
