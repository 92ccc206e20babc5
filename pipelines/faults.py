"""Fault injection during streaming runs: one fault per run, then count what came out.

Each run streams ``frames`` simulated frames (small, rendered once and reused) through the real
pipeline — real Kafka, real Ray, the shipped JUDO on Ray Serve — at a steady camera rate, injects
one fault once ``fault_after`` of them have verdicts, and reads the verdict topic until every
produced ``frame_id`` has a verdict (or the time is up). Used by ``tests/test_faults.py`` and
``benchmarks/faults.py``; the metrics are defined in ``docs/faults.md``:

* ``lost``: produced frame ids with no verdict; ``duplicates``: verdict records beyond the first
  per frame id (at-least-once redelivery).
* ``gap_s``: the longest time after the fault with no new frame getting its verdict.
* ``recovery_s``: time from the fault until the pipeline is back on schedule for good — from then
  on, the count of frames with verdicts stays within ``slack_s`` seconds' worth (at the pre-fault
  verdict rate) of where that rate would have put it without the fault.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cluster.kafka import LocalKafka
from cluster.messages import dead_letter_from_record, verdict_from_record
from pipelines.config import PipelineConfig
from pipelines.simulator import CameraSimulator, CameraSpec, SimulatedFrame, publish_frames

log = logging.getLogger(__name__)

PRODUCTS = ("bottle", "hex_nut")
CAMERAS = [CameraSpec("line1", "line1-cam1", "bottle"), CameraSpec("line1", "line1-cam2", "bottle"),
           CameraSpec("line2", "line2-cam1", "hex_nut"), CameraSpec("line2", "line2-cam2", "hex_nut")]


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


class VerdictWatcher:
    """Reads the verdict and dead-letter topics on its own thread, noting when each record was seen."""

    def __init__(self, settings, verdict_topic: str, dead_letter_topic: str):
        self.settings = settings
        self.topics = (verdict_topic, dead_letter_topic)
        self.first_seen: dict[str, float] = {}
        self.verdicts: dict[str, object] = {}
        self.duplicates = 0
        self.dead_letters: list = []
        self.last_record_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verdict-watcher", daemon=True)

    def start(self) -> "VerdictWatcher":
        self._thread.start()
        return self

    def _run(self) -> None:
        consumer = self.settings.consumer(*self.topics, group_id=None, fetch_max_wait_ms=100)
        try:
            while not self._stop.is_set():
                for batch in consumer.poll(timeout_ms=200).values():
                    now = time.time()
                    for record in batch:
                        self.last_record_at = now
                        if record.topic == self.topics[0]:
                            verdict = verdict_from_record(record.key, record.value, record.headers)
                            if verdict.frame_id in self.verdicts:
                                self.duplicates += 1
                            else:
                                self.first_seen[verdict.frame_id] = now
                            self.verdicts[verdict.frame_id] = verdict
                        else:
                            self.dead_letters.append(dead_letter_from_record(record.key, record.value, record.headers))
        finally:
            consumer.close()

    def wait_until(self, predicate: Callable[["VerdictWatcher"], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, quiet_s: float = 2.0) -> None:
        """Keep reading until ``quiet_s`` passes without a record (late duplicates), then stop."""
        while time.time() - self.last_record_at < quiet_s:
            time.sleep(0.2)
        self._stop.set()
        self._thread.join(timeout=30)


def recovery_metrics(first_seen: list[float], fault_at: float, frames: int, slack_s: float,
                     pre_window_s: float = 10.0, step_s: float = 0.05) -> tuple[float, float, float]:
    """``(pre_fault_fps, gap_s, recovery_s)`` from the times frames got their first verdict.

    The pre-fault rate is measured over the ``pre_window_s`` before the fault; the schedule after
    the fault is that rate continued from the count at the fault, capped at ``frames``. Recovery is
    the end of the last instant (on a ``step_s`` grid) the count was behind schedule by more than
    ``slack_s`` worth: from then on the pipeline stays on schedule.
    """
    times = np.sort(np.asarray(first_seen, dtype=float))
    done_at_fault = int(np.searchsorted(times, fault_at))
    window = min(pre_window_s, fault_at - times[0]) if done_at_fault else 0.0
    recent = done_at_fault - int(np.searchsorted(times, fault_at - pre_window_s))
    rate = recent / window if window > 0 else 0.0
    after = times[done_at_fault:]
    gap = float(np.max(np.diff(np.concatenate([[fault_at], after])))) if len(after) else 0.0
    grid = np.arange(fault_at, max(times[-1], fault_at) + step_s, step_s)
    count = np.searchsorted(times, grid, side="right")
    behind = count < np.minimum(frames, done_at_fault + rate * (grid - fault_at)) - rate * slack_s
    recovery = float(grid[np.nonzero(behind)[0][-1]] + step_s - fault_at) if behind.any() else 0.0
    return rate, gap, recovery


# --------------------------------------------------------------------------- the faults


@dataclass
class FaultContext:
    """What a fault may act on; ``restart_pipeline`` swaps ``pipeline`` for a new one."""

    kafka: LocalKafka
    pipeline: object
    config: PipelineConfig
    settings: FaultSettings

    def restart_pipeline(self) -> None:
        from pipelines.runner import Pipeline

        self.pipeline.stop()
        time.sleep(self.settings.outage_s)
        self.pipeline = Pipeline(self.config, self.kafka.settings()).start()


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
    import ray

    ray.kill(ctx.pipeline.handles.drivers[0])
    return {"killed": "frame driver 0 (owns the Kafka consumer)"}


def _prefilter_killed(ctx: FaultContext) -> dict:
    import ray

    ray.kill(ctx.pipeline.handles.prefilter[0], no_restart=False)
    return {"killed": "prefilter actor 0"}


def _prefilter_answers(ctx: FaultContext) -> dict:
    import ray

    return {"prefilter_alive_after": bool(ray.get(ctx.pipeline.handles.prefilter[0].products.remote(), timeout=60))}


def judo_replicas() -> list[dict]:
    """``{name, namespace}`` of each running JUDO replica actor."""
    import ray

    from pipelines.serve_app import APP_NAME, DEPLOYMENT_NAME

    prefix = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
    return sorted((a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)),
                  key=lambda a: a["name"])


def _judo_replica_killed(ctx: FaultContext) -> dict:
    import ray

    victim = judo_replicas()[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]))
    return {"killed": victim["name"]}


def _judo_replicas_after(ctx: FaultContext) -> dict:
    return {"replicas_after": [a["name"] for a in judo_replicas()]}


def _judo_replica_stalled(ctx: FaultContext) -> dict:
    stalled = ctx.pipeline.handles.judo.inject_stall.remote(ctx.settings.stall_s).result()
    return {"stalled": stalled, "stall_s": ctx.settings.stall_s, "request_timeout_s": ctx.settings.judo_timeout_s}


def _pipeline_restarted(ctx: FaultContext) -> dict:
    started = time.monotonic()
    ctx.restart_pipeline()
    return {"pipeline_down_s": round(time.monotonic() - started, 1)}


@dataclass(frozen=True)
class Fault:
    """``inject`` acts and returns what it did; ``observe`` reports the state after the run (evidence)."""

    name: str
    what: str
    inject: Callable[[FaultContext], dict]
    brokers: int = 1
    observe: Callable[[FaultContext], dict] | None = None


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
          observe=_judo_replicas_after),
    Fault("pipeline_restarted", "the whole pipeline stopped and started again, same consumer group",
          _pipeline_restarted),
]}


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


# --------------------------------------------------------------------------- the bench


class FaultBench:
    """Fits small prefilter banks and renders the frames once; :meth:`run` runs one fault.

    Use as a context manager: it starts Ray and a single-broker Kafka for the runs (a three-broker
    cluster is started only for the faults that need it) and stops them afterwards.
    """

    def __init__(self, work: Path, settings: FaultSettings | None = None, checkpoint: Path | None = None):
        from pipelines.commands import SHIPPED_CHECKPOINT

        self.work = Path(work)
        self.settings = settings or FaultSettings()
        self.checkpoint = Path(checkpoint or SHIPPED_CHECKPOINT)
        self.kafka: LocalKafka | None = None
        self._owns_ray = False

    def __enter__(self) -> "FaultBench":
        from actors.features import BackboneConfig, PreprocessConfig
        from actors.prefilter import PatchCoreConfig
        from cluster.ray_runtime import start_ray
        from pipelines.demo import prepare_banks

        s = self.settings
        # one torch thread per prefilter actor: two actors share two cores without oversubscription
        bank_config = PatchCoreConfig(preprocess=PreprocessConfig(size=s.size), backbone=BackboneConfig(threads=1),
                                      coreset_min=200)
        self.banks = prepare_banks(self.work / f"assets-{s.size}", PRODUCTS, images_per_category=40, size=s.size,
                                   bank_config=bank_config)
        self.frames = list(CameraSimulator(CAMERAS, defect_rate=s.defect_rate, seed=s.seed, size=s.size,
                                           run_id="faults").frames(s.frames))
        self.kafka = LocalKafka(brokers=1).start()
        self._owns_ray = start_ray(None, num_cpus=2)
        return self

    def __exit__(self, *exc: object) -> None:
        from cluster.ray_runtime import stop_ray

        if self._owns_ray:
            stop_ray()
        if self.kafka is not None:
            self.kafka.stop()

    def config(self, bootstrap: str, tag: str, brokers: int) -> PipelineConfig:
        """A throughput-oriented pipeline: 2 drivers, 2 prefilter actors, 2 JUDO replicas, no trace file."""
        s = self.settings
        replication = min(brokers, 3)
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
                     "replicas": {"min": 2, "max": 2}, "num_cpus": 0, "request_timeout_s": s.judo_timeout_s},
            "telemetry": {"trace_file": None},
        })

    def run(self, name: str) -> FaultReport:
        fault = FAULTS[name]
        if fault.brokers == 1:
            return self._run(fault, self.kafka)
        with LocalKafka(brokers=fault.brokers) as kafka:
            return self._run(fault, kafka)

    def _run(self, fault: Fault, kafka: LocalKafka) -> FaultReport:
        from pipelines.runner import Pipeline

        s = self.settings
        tag = f"faults-{fault.name}-{uuid.uuid4().hex[:6]}"
        config = self.config(kafka.bootstrap_servers, tag, fault.brokers)
        frames = [SimulatedFrame(f.frame.model_copy(update={"frame_id": f"{tag}-{i:05d}"}), f.is_defective,
                                 f.defect_type, f.bbox) for i, f in enumerate(self.frames)]
        expected = {f.frame.frame_id for f in frames}
        ctx = FaultContext(kafka, Pipeline(config, kafka.settings()).start(), config, s)
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
