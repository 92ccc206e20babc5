"""The fault bench: small prefilter banks and frames prepared once, then one streaming run per fault."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from cluster.local_kafka import LocalKafka
from cluster.ray_nodes import LocalRayCluster
from cluster.ray_runtime import start_ray, stop_ray
from judo_model.prefilter.features import BackboneConfig, PreprocessConfig
from judo_model.prefilter.patchcore import PatchCoreConfig
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.config import PipelineConfig
from pipelines.metrics_http import local_token_file
from pipelines.runner import Pipeline
from tooling.demo import prepare_banks
from tooling.faults.catalogue import FAULTS, Fault, FaultContext, FaultReport, FaultSettings
from tooling.faults.watch import VerdictWatcher, recovery_metrics
from tooling.simulator import CameraSimulator, CameraSpec, SimulatedFrame, publish_frames

log = logging.getLogger(__name__)

PRODUCTS = ("bottle", "hex_nut")
CAMERAS = [CameraSpec("line1", "line1-cam1", "bottle"), CameraSpec("line1", "line1-cam2", "bottle"),
           CameraSpec("line2", "line2-cam1", "hex_nut"), CameraSpec("line2", "line2-cam2", "hex_nut")]


def wait_for_group(settings, group: str, members: int, timeout_s: float = 120.0) -> None:
    """Wait until the consumer group is stable with ``members`` members, so that the start-up
    rebalance (which redelivers frames already in flight) is not counted against a fault."""
    admin = settings.admin()
    deadline = time.monotonic() + timeout_s
    seen = "nothing"
    try:
        while time.monotonic() < deadline:
            try:
                info = admin.describe_groups([group]).get(group, {})
            except Exception as exc:  # the coordinator may not be known yet
                seen = f"describe_groups failed: {type(exc).__name__}: {exc}"
                info = None
            if info is not None:
                state = info.get("group_state", info.get("state"))
                seen = f"state {state} with {len(info.get('members', []))} members"
                if state == "Stable" and len(info.get("members", [])) == members:
                    return
            time.sleep(0.5)
    finally:
        admin.close()
    raise TimeoutError(f"consumer group {group} not stable with {members} members after {timeout_s:.0f} s "
                       f"(last seen: {seen})")


#: The two-node cluster of the node faults: JUDO replicas need ``judo_gpu`` (one per node at first, as
#: Serve spreads them); the head has room for both once the worker is gone.
HEAD_RESOURCES = {"judo_gpu": 2.0}
WORKER_RESOURCES = {"judo_gpu": 1.0}


class FaultBench:
    """Fits small prefilter banks and renders the frames once; :meth:`run` runs one fault.

    Use as a context manager: it starts a single-broker Kafka for the runs (a three-broker cluster is
    started only for the faults that need it) and a local Ray; a fault that needs several Ray nodes,
    or every run when ``ray_nodes`` > 1, gets a fresh :class:`cluster.ray_nodes.LocalRayCluster` of
    that many nodes (``ray start``), joined by address. Everything is stopped afterwards.
    """

    def __init__(self, work: Path, settings: FaultSettings | None = None, checkpoint: Path | None = None,
                 ray_nodes: int = 1):
        if ray_nodes < 1:
            raise ValueError(f"ray_nodes must be >= 1, got {ray_nodes}")
        self.work = Path(work)
        self.settings = settings or FaultSettings()
        self.checkpoint = Path(checkpoint or SHIPPED_CHECKPOINT)
        self.ray_nodes = ray_nodes
        self.clusters: list[LocalRayCluster] = []  # the multi-node clusters of the runs (stopped after each)
        self.kafka: LocalKafka | None = None
        self._owns_ray = False

    def __enter__(self) -> "FaultBench":
        s = self.settings
        # one torch thread per prefilter actor: two actors share two cores without oversubscription
        bank_config = PatchCoreConfig(preprocess=PreprocessConfig(size=s.size), backbone=BackboneConfig(threads=1),
                                      coreset_min=200)
        self.banks = prepare_banks(self.work / f"assets-{s.size}", PRODUCTS, images_per_category=40, size=s.size,
                                   bank_config=bank_config)
        self.frames = list(CameraSimulator(CAMERAS, defect_rate=s.defect_rate, seed=s.seed, size=s.size,
                                           run_id="faults").frames(s.frames))
        self.kafka = LocalKafka(brokers=1).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owns_ray:
            stop_ray()
            self._owns_ray = False
        if self.kafka is not None:
            self.kafka.stop()

    @contextmanager
    def _ray_for(self, fault: Fault):
        """Ray for one run: the local instance (started once), or a fresh cluster of several nodes."""
        nodes = max(self.ray_nodes, fault.ray_nodes)
        if nodes == 1:
            if not self._owns_ray:
                self._owns_ray = start_ray(None, num_cpus=2)
            yield None
            return
        if self._owns_ray:  # one process joins one Ray at a time
            stop_ray()
            self._owns_ray = False
        cluster = LocalRayCluster.with_workers(nodes - 1, head_resources=HEAD_RESOURCES,
                                               worker_resources=WORKER_RESOURCES)
        self.clusters.append(cluster)
        with cluster:
            try:
                yield cluster
            finally:
                stop_ray()

    def config(self, bootstrap: str, tag: str, brokers: int, ray_address: str | None = None) -> PipelineConfig:
        """A throughput-oriented pipeline: 2 drivers, 2 prefilter actors, 2 JUDO replicas, no trace file.
        On a cluster (``ray_address``) the JUDO replicas need a ``judo_gpu`` each, as GPU nodes would."""
        s = self.settings
        replication = min(brokers, 3)
        on_cluster = {"ray": {"address": ray_address}} if ray_address else {}
        judo_resources = {"resources": {"judo_gpu": 1}} if ray_address else {}
        return PipelineConfig.model_validate({
            "kafka": {"mode": "external", "settings": {"bootstrap_servers": bootstrap}},
            "topics": {"frames": f"{tag}.frames", "verdicts": f"{tag}.verdicts", "dead_letters": f"{tag}.dlq",
                       "feedback": f"{tag}.feedback", "partitions": 4, "replication_factor": replication,
                       "min_insync_replicas": 2 if replication >= 3 else None},
            "lines": [{"id": line, "product": product, "cameras": [c.camera_id for c in CAMERAS if c.line_id == line]}
                      for line, product in (("line1", "bottle"), ("line2", "hex_nut"))],
            "products": {name: {"bank": str(path)} for name, path in self.banks.items()},
            "prefilter": {"actors": 2, "batch_size": 16, "threads_per_actor": 1},
            "ingest": {"actors": 2, "group_id": tag, "max_in_flight": 128, "max_poll_records": 64,
                       "poll_timeout_ms": 100, "judo_retries": 3},
            "judo": {"checkpoint": str(self.checkpoint), "max_batch_size": 4, "max_new_tokens": 96,
                     "replicas": {"min": 2, "max": 2}, "num_cpus": 0, "request_timeout_s": s.judo_timeout_s,
                     **judo_resources},
            "telemetry": {"trace_file": None},
            "metrics": {"bearer_token_file": str(local_token_file())},
            **on_cluster,
        })

    def run(self, name: str) -> FaultReport:
        fault = FAULTS[name]
        with self._ray_for(fault) as ray_cluster:
            if fault.brokers == 1:
                return self._run(fault, self.kafka, ray_cluster)
            with LocalKafka(brokers=fault.brokers) as kafka:
                return self._run(fault, kafka, ray_cluster)

    def _run(self, fault: Fault, kafka: LocalKafka, ray_cluster: LocalRayCluster | None) -> FaultReport:
        s = self.settings
        tag = f"faults-{fault.name}-{uuid.uuid4().hex[:6]}"
        config = self.config(kafka.bootstrap_servers, tag, fault.brokers,
                             ray_cluster.address if ray_cluster else None)
        frames = [SimulatedFrame(f.frame.model_copy(update={"frame_id": f"{tag}-{i:05d}"}), f.is_defective,
                                 f.defect_type, f.bbox) for i, f in enumerate(self.frames)]
        expected = {f.frame.frame_id for f in frames}
        pipeline = Pipeline(config, kafka.settings(), judo_deployment=fault.judo_deployment).start()
        ctx = FaultContext(kafka, pipeline, config, s, fault.judo_deployment, ray_cluster)
        try:
            wait_for_group(kafka.settings(), config.ingest.group_id, config.ingest.actors, s.timeout_s)
        except TimeoutError as exc:
            stats, members = ctx.pipeline.stats(), ctx.pipeline.membership()
            ctx.pipeline.stop()
            raise TimeoutError(f"{exc}; driver restarts {stats.get('driver_restarts')}, frames in "
                               f"{stats.get('frames_in')}, commit failures {stats.get('commit_failures')}, "
                               f"drivers {members}") from exc
        watcher = VerdictWatcher(kafka.settings(), config.topics.verdicts, config.topics.dead_letters).start()
        published: list[SimulatedFrame] = []
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                published.extend(publish_frames(kafka.settings(), config.topics.frames, frames, fps=s.fps))
            except BaseException as exc:  # surfaced after the run
                errors.append(exc)

        publisher = threading.Thread(target=publish, name="cameras", daemon=True)
        started = time.time()
        try:
            publisher.start()
            if not watcher.wait_until(lambda w: len(w.first_seen) >= s.fault_after * s.frames, s.timeout_s):
                raise RuntimeError(f"{fault.name}: the pipeline gave only {len(watcher.first_seen)} verdicts "
                                   f"before the fault in {s.timeout_s:.0f} s")
            fault_at = time.time()
            log.info("injecting %s at %d verdicts", fault.name, len(watcher.first_seen))
            details = fault.inject(ctx)
            watcher.wait_until(lambda w: expected <= w.first_seen.keys(), s.timeout_s)
            publisher.join(timeout=s.timeout_s)
            stats = ctx.pipeline.stats()
            details.update({k: stats.get(k, 0) for k in ("judo_retries", "judo_fallbacks", "prefilter_retries",
                                                          "driver_restarts", "commit_failures")})
            if fault.observe is not None:
                details.update(fault.observe(ctx))
        finally:
            ctx.pipeline.stop()
            watcher.stop()
        if errors:
            raise RuntimeError(f"{fault.name}: publishing failed") from errors[0]
        produced = {f.frame.frame_id for f in published}
        seen = watcher.first_seen
        ours = [seen[i] for i in produced if i in seen]
        rate, gap, recovery = recovery_metrics(ours, fault_at, len(produced), s.slack_s)
        verdicts = [watcher.verdicts[i] for i in produced if i in watcher.verdicts]
        return FaultReport(
            fault=fault.name, frames_in=len(produced), verdicts_out=len(ours), lost=len(produced - seen.keys()),
            duplicates=watcher.duplicates, dead_letters=len(watcher.dead_letters),
            judo_verdicts=sum(v.stage == "judo" for v in verdicts),
            fallback_verdicts=sum(v.model_version.endswith("+judo-unavailable") for v in verdicts),
            pre_fault_fps=round(rate, 1), gap_s=round(gap, 2),
            recovery_s=round(recovery, 2),
            seconds=round(max(ours, default=started) - started, 1), details=details,
            missing=sorted(produced - seen.keys())[:20], unexpected=sorted(seen.keys() - produced)[:20],
            dead_letter_reasons=[f"{letter.stage}: {letter.reason}" for letter in watcher.dead_letters[:20]])
