"""The frame driver: a Ray actor that feeds records from the Kafka intake into the frame path.

:class:`actors.intake.KafkaIntake` (consumer thread, rebalances, commits, backpressure) hands out
records; :class:`pipelines.frame_path.FramePath` walks each micro-batch through the stages; the
adapters below are the stages' Ray side (the prefilter pool, the JUDO Serve handle, the sink actor).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import ray
from ray.exceptions import RayError, RayTaskError

from actors.ingest import DecodedFrame, FrameDecoder
from actors.intake import IntakeSettings, KafkaIntake
from actors.routing import Router
from cluster.kafka import KafkaSettings
from cluster.messages import Verdict
from cluster.telemetry import setup_tracing
from pipelines.config import PipelineConfig
from pipelines.frame_path import FramePath, PrefilterBatching, RetryPolicies, StageUnavailable
from pipelines.judo_request import JudoFrameRequest, SuspectFrame


class PrefilterPool:
    """The prefilter stage on a pool of prefilter actors: each call goes to the actor with the fewest calls
    in flight (round robin among equals). A dead or restarting actor is :class:`StageUnavailable` (the next
    try goes to another actor); an error the actor raised for these frames (``RayTaskError``) propagates."""

    def __init__(self, handles: list, references_k: int):
        self.handles = list(handles)
        self.references_k = references_k
        self._in_flight = [0] * len(self.handles)
        self._next = 0

    def _pick(self) -> int:
        count = len(self.handles)
        order = [(self._next + i) % count for i in range(count)]
        self._next += 1
        return min(order, key=lambda i: self._in_flight[i])

    async def screen(self, product: str, frames: list[DecodedFrame], threshold: float) -> list[dict]:
        index = self._pick()
        self._in_flight[index] += 1
        try:
            return await self.handles[index].screen_frames.remote(
                product, [f.image for f in frames], [f.trace for f in frames], [f.frame.frame_id for f in frames],
                self.references_k, threshold)
        except RayTaskError:
            raise
        except RayError as exc:
            raise StageUnavailable(type(exc).__name__) from exc
        finally:
            self._in_flight[index] -= 1


class ServeJudo:
    """The JUDO stage on the Serve deployment's handle."""

    def __init__(self, handle):
        self.handle = handle

    async def judge(self, request: JudoFrameRequest, reference_paths: list[str]) -> Verdict:
        return await self.handle.infer.remote(SuspectFrame(request, reference_paths))


class SinkActor:
    """The sink stage on the sink actor."""

    def __init__(self, handle):
        self.handle = handle

    async def write(self, verdicts, letters) -> None:
        await self.handle.write.remote(verdicts, letters)


class FrameDriver:
    """Intake plus frame path; :class:`FrameDriverActor` runs it as an async Ray actor."""

    def __init__(self, config: dict, handles: dict, model_version: str = "prefilter"):
        self.config = cfg = PipelineConfig.model_validate(config)
        setup_tracing(f"{cfg.telemetry.service_name}.driver",
                      trace_file=str(cfg.telemetry.trace_file) if cfg.telemetry.trace_file else None)
        self.intake = KafkaIntake(KafkaSettings.model_validate(handles["kafka_settings"]), IntakeSettings(
            topic=cfg.topics.frames, group_id=cfg.ingest.group_id, max_in_flight=cfg.ingest.max_in_flight,
            poll_timeout_ms=cfg.ingest.poll_timeout_ms, max_poll_records=cfg.ingest.max_poll_records,
            revoke_drain_s=cfg.ingest.revoke_drain_s))
        self.path = FramePath(
            FrameDecoder(known_products=cfg.products.keys()),
            PrefilterPool(handles["prefilter"], cfg.prefilter.references_k), Router(handles["thresholds"]),
            ServeJudo(handles["judo"]), SinkActor(handles["sink"]), self.intake,
            RetryPolicies.from_config(cfg, len(handles["prefilter"])), model_version,
            PrefilterBatching.from_config(cfg, len(handles["prefilter"])))
        self._consumer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._running = True  # intake on until drain() or stop()
        self._drained = asyncio.Event()
        self._release = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._phase = "created"

    async def run(self) -> dict:
        """Consume until :meth:`drain` or :meth:`stop`; returns the final stats.

        After intake stops, the frames in flight are finished and their offsets committed while
        the consumer is still a group member (:meth:`drain` returns then); the consumer leaves
        the group only on :meth:`stop`. A pipeline drains every driver before it stops any, so no
        driver's final commit meets the rebalance another driver's leaving starts (that commit
        would fail and its frames would be processed twice after a restart).
        """
        loop = asyncio.get_running_loop()
        self._phase = "opening consumer"
        await loop.run_in_executor(self._consumer_thread, self.intake.open)
        self._phase = "polling"
        batch_size = self.config.prefilter.batch_size
        while self._running:
            records = await loop.run_in_executor(self._consumer_thread, self.intake.poll)
            for start in range(0, len(records), batch_size):
                task = asyncio.create_task(self.path.process(records[start:start + batch_size]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._phase = "draining"
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await loop.run_in_executor(self._consumer_thread, self.intake.commit_ready)
        self._phase = "drained"
        self._drained.set()
        await self._release.wait()
        await loop.run_in_executor(self._consumer_thread, self.intake.close)
        self._phase = "stopped"
        return self.get_stats()

    async def drain(self) -> None:
        """Stop intake; return once the frames in flight are finished and committed (still in the group)."""
        self._running = False
        self.path.stopping = True
        await self._drained.wait()

    async def stop(self) -> None:
        """Stop intake and let :meth:`run` leave the group once drained."""
        self._running = False
        self.path.stopping = True
        self._release.set()

    def get_stats(self) -> dict:
        return {**self.path.stats.as_dict(), **self.intake.stats.as_dict(), "in_flight": self.intake.in_flight()}

    def membership(self) -> dict:
        """Where this driver stands in its consumer group, for health checks and diagnostics."""
        state = self.intake.membership()
        return {"in_group": self._phase == "polling" and state["group_state"] == "STABLE", "phase": self._phase,
                **state}


@ray.remote(num_cpus=0, max_concurrency=1000)
class FrameDriverActor:
    """The async Ray actor around :class:`FrameDriver`."""

    def __init__(self, config: dict, handles: dict, model_version: str):
        self.driver = FrameDriver(config, handles, model_version)

    async def run(self) -> dict:
        return await self.driver.run()

    async def drain(self) -> None:
        await self.driver.drain()

    async def stop(self) -> None:
        await self.driver.stop()

    async def stats(self) -> dict:
        return self.driver.get_stats()

    async def membership(self) -> dict:
        return self.driver.membership()
