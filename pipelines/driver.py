"""The frame driver: one Kafka consumer-group member that walks each frame through the stages.

For every polled record: decode and validate (:mod:`actors.ingest`) → score on the prefilter
pool (:mod:`actors.prefilter`) → route (:mod:`actors.routing`) → for suspect frames, retrieve
normal references (:mod:`actors.references`) and ask a JUDO replica on Ray Serve
(:mod:`pipelines.serve_app`) → write the verdict or dead letter durably (:mod:`actors.sink`)
→ only then mark the offset done; committed offsets never pass an unfinished frame.

Backpressure: with ``max_in_flight`` frames unfinished, the consumer pauses its partitions
(no dropping, no unbounded buffer) and resumes as frames finish. The consumer is touched
from one thread only (kafka-python clients are not thread-safe).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

from cluster.kafka import KafkaSettings
from cluster.messages import Verdict, dead_letter_for
from cluster.telemetry import context_from_carrier, setup_tracing, trace_id_hex, tracer
from actors.ingest import DecodedFrame, FrameDecoder, OffsetTracker, RawRecord, Rejected
from actors.routing import Router, prefilter_verdict
# at import time, not on the first suspect frame: it pulls in transformers, seconds that would block the event loop
from pipelines.engines import JudoFrameRequest

log = logging.getLogger(__name__)


@dataclass
class DriverStats:
    """Counters the live summary and the benchmarks read."""

    frames_in: int = 0
    verdicts_prefilter: int = 0
    verdicts_judo: int = 0
    dead_letters: int = 0
    judo_retries: int = 0
    judo_fallbacks: int = 0
    prefilter_retries: int = 0
    paused_polls: int = 0
    commits: int = 0
    commit_failures: int = 0
    revoked_in_flight: int = 0  # frames given up unfinished in a rebalance (processed again elsewhere)
    latencies_pass_ms: deque = field(default_factory=lambda: deque(maxlen=5000))
    latencies_judo_ms: deque = field(default_factory=lambda: deque(maxlen=5000))

    def as_dict(self) -> dict:
        """Every field, latency windows as plain lists (they cross Ray calls)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), deque) else v for f in fields(self)}


class FrameDriver:
    """Plain-Python driver; :func:`driver_actor_class` runs it as an async Ray actor."""

    def __init__(self, config: dict, handles: dict, model_version: str = "prefilter"):
        from pipelines.config import PipelineConfig

        self.config = PipelineConfig.model_validate(config)
        cfg = self.config
        setup_tracing(f"{cfg.telemetry.service_name}.driver",
                      trace_file=str(cfg.telemetry.trace_file) if cfg.telemetry.trace_file else None)
        self.settings = KafkaSettings.model_validate(handles["kafka_settings"])
        self.prefilter_pool = list(handles["prefilter"])
        self.references = handles["references"]
        self.judo = handles["judo"]
        self.sink = handles["sink"]
        self.router = Router(handles["thresholds"])
        self.decoder = FrameDecoder(known_products=cfg.products.keys())
        self.offsets = OffsetTracker()
        self._to_commit: dict[tuple[str, int], int] = {}
        self.stats = DriverStats()
        self.prefilter_version = model_version
        self._consumer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._consumer = None
        self._running = True  # intake on until drain() or stop()
        self._drained = asyncio.Event()
        self._release = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._next_prefilter = 0
        self._phase = "created"
        self._polls = 0
        self._last_poll = 0.0

    # ------------------------------------------------------------------ consumer (one thread)
    def _open_consumer(self) -> None:
        from kafka import ConsumerRebalanceListener

        driver = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                gone = [(tp.topic, tp.partition) for tp in revoked]
                driver._finish_in_flight(gone, driver.config.ingest.revoke_drain_s)
                driver._commit_ready(blocking=False)
                driver.offsets.forget(gone)
                for tp in gone:
                    driver._to_commit.pop(tp, None)

            def on_partitions_assigned(self, assigned):
                pass

        ingest = self.config.ingest
        self._consumer = self.settings.consumer(group_id=ingest.group_id, max_poll_records=ingest.max_poll_records)
        self._consumer.subscribe([self.config.topics.frames], listener=Listener())

    def _finish_in_flight(self, partitions: list[tuple[str, int]], timeout_s: float) -> None:
        """Wait (bounded) until the frames in flight from ``partitions`` are durable, so that the
        commit before a rebalance covers them and the partitions' next owner does not process
        them again. The frames finish on the actor's event loop, not on this thread. Runs inside
        the rebalance listener, which holds this consumer's heartbeats: the bound stays well
        under the session timeout (45 s)."""
        deadline = time.monotonic() + timeout_s
        while self.offsets.in_flight(partitions) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = self.offsets.in_flight(partitions)
        if left:
            self.stats.revoked_in_flight += left
            log.warning("%d frames still in flight after %.0f s; their partitions' next owner processes them again",
                        left, timeout_s)

    def _poll(self) -> list[RawRecord]:
        consumer = self._consumer
        if self.offsets.in_flight() >= self.config.ingest.max_in_flight:
            consumer.pause(*consumer.assignment())
            self.stats.paused_polls += 1
        elif consumer.paused():
            consumer.resume(*consumer.paused())
        batches = consumer.poll(timeout_ms=self.config.ingest.poll_timeout_ms)
        self._polls += 1
        self._last_poll = time.monotonic()
        records = [RawRecord.from_consumer_record(r) for batch in batches.values() for r in batch]
        for record in records:
            self.offsets.add(record.position)
        self._commit_ready()
        return records

    def _commit_ready(self, blocking: bool = True) -> None:
        """Commit the finished prefixes. A failed commit (coordinator moved, group rebalancing) must not
        end the loop: its offsets are retried with the next commit, or the frames are redelivered.

        ``blocking=False`` inside a rebalance listener: kafka-python 3 runs listeners on its IO
        thread and refuses a blocking commit there (the driver's loop then died with "User
        rebalance callback throws an error" whenever a rebalance found finished frames to
        commit). The asynchronous commit is sent ahead of the JoinGroup on the same connection,
        and the broker accepts it from a member of the generation being rebalanced."""
        from kafka import OffsetAndMetadata, TopicPartition
        from kafka.errors import KafkaError

        self._to_commit.update(self.offsets.committable())
        owned = self._consumer.assignment()
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in self._to_commit.items()
                   if TopicPartition(t, p) in owned}
        if not offsets:
            return
        try:
            if blocking:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets, callback=self._async_commit_done)
        except KafkaError as exc:
            self.stats.commit_failures += 1
            log.warning("offset commit failed (%s); retrying with the next commit", exc)
            return
        self._to_commit.clear()
        self.stats.commits += 1

    def _async_commit_done(self, offsets, response) -> None:
        if isinstance(response, Exception):
            self.stats.commit_failures += 1
            log.warning("offset commit in a rebalance failed (%s); those frames are redelivered", response)

    # ------------------------------------------------------------------ main loop
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
        await loop.run_in_executor(self._consumer_thread, self._open_consumer)
        self._phase = "polling"
        while self._running:
            records = await loop.run_in_executor(self._consumer_thread, self._poll)
            if not records:
                continue
            self.stats.frames_in += len(records)
            batch_size = self.config.prefilter.batch_size
            for start in range(0, len(records), batch_size):
                task = asyncio.create_task(self._process_safely(records[start:start + batch_size]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._phase = "draining"
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await loop.run_in_executor(self._consumer_thread, self._commit_ready)
        self._phase = "drained"
        self._drained.set()
        await self._release.wait()
        await loop.run_in_executor(self._consumer_thread, self._close_consumer)
        self._phase = "stopped"
        return self.stats.as_dict()

    def _close_consumer(self) -> None:
        self._commit_ready()
        self._consumer.close()

    async def drain(self) -> None:
        """Stop intake; return once the frames in flight are finished and committed (still in the group)."""
        self._running = False
        await self._drained.wait()

    async def stop(self) -> None:
        """Stop intake and let :meth:`run` leave the group once drained."""
        self._running = False
        self._release.set()

    def get_stats(self) -> dict:
        return {**self.stats.as_dict(), "in_flight": self.offsets.in_flight()}

    def membership(self) -> dict:
        """Where this driver stands in its consumer group, for health checks and diagnostics.

        Read without the consumer thread (a stuck poll must not hide its own state); the group
        fields come from kafka-python's coordinator and are best-effort.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        generation = getattr(coordinator, "_generation", None)
        state = str(getattr(coordinator, "state", "")).strip("<>").upper() or None  # kafka-python: "<stable>"
        return {
            "in_group": self._phase == "polling" and state == "STABLE",
            "phase": self._phase, "polls": self._polls,
            "since_last_poll_s": round(time.monotonic() - self._last_poll, 1) if self._last_poll else None,
            "group_state": state,
            "generation": getattr(generation, "generation_id", None),
            "coordinator": getattr(coordinator, "coordinator_id", None),
            "assigned": len(self._consumer.assignment()) if self._consumer is not None else 0,
        }

    # ------------------------------------------------------------------ one micro-batch
    async def _process_safely(self, records: list[RawRecord]) -> None:
        """Any unexpected failure turns the batch's unfinished records into dead letters: no stuck partition."""
        try:
            await self._process(records)
        except Exception as exc:
            log.exception("batch failed; dead-lettering its unfinished records")
            unfinished = [r for r in records if not self.offsets.is_done(r.position)]
            letters = [(dead_letter_for("prefilter", exc, topic=r.position.topic, partition=r.position.partition,
                                        offset=r.position.offset, key=r.key, value=r.value, headers=r.headers), {})
                       for r in unfinished]
            await self._write([], letters)
            self.stats.dead_letters += len(letters)
            for record in unfinished:
                self.offsets.done(record.position)

    async def _process(self, records: list[RawRecord]) -> None:
        """Pass-path verdicts are written as soon as they are routed; suspect frames finish on their own."""
        decoded: list[DecodedFrame] = []
        rejected: list[Rejected] = []
        # image decoding releases the GIL: off the event loop, batches of other partitions keep moving
        for outcome in await asyncio.to_thread(lambda: [self.decoder.decode(r) for r in records]):
            (decoded if isinstance(outcome, DecodedFrame) else rejected).append(outcome)
        passed: list[tuple[Verdict, dict]] = []
        passed_items: list[DecodedFrame] = []
        judo_jobs = []
        by_product: dict[str, list[DecodedFrame]] = {}
        for item in decoded:
            by_product.setdefault(item.frame.product, []).append(item)
        for product, items in by_product.items():
            scored = await self._prefilter(product, items)
            for item, result in zip(items, scored):
                decision = self.router.decide(product, result["score"])
                if decision.to_judo:
                    judo_jobs.append(self._judo_path(item, decision, result))
                    continue
                item.latency_ms["total"] = (time.time() - item.received_at) * 1000
                passed.append((prefilter_verdict(
                    item.frame, decision, model_version=self.prefilter_version, latency_ms=item.latency_ms,
                    trace_id=trace_id_hex(context_from_carrier(item.trace))), item.trace))
                passed_items.append(item)
        await self._write(passed, [(r.letter, r.trace) for r in rejected])
        self.stats.verdicts_prefilter += len(passed)
        self.stats.dead_letters += len(rejected)
        for item in passed_items:
            self.stats.latencies_pass_ms.append(item.latency_ms["total"])
        for item in [*passed_items, *rejected]:
            self.offsets.done(item.position)
        await asyncio.gather(*judo_jobs)

    async def _judo_path(self, item: DecodedFrame, decision, prefilter_result: dict) -> None:
        verdict = await self._ask_judo(item, decision, prefilter_result)
        await self._write([(verdict, item.trace)], [])
        if verdict.stage == "judo":
            self.stats.verdicts_judo += 1
        else:
            self.stats.verdicts_prefilter += 1
        self.offsets.done(item.position)

    async def _prefilter(self, product: str, items: list[DecodedFrame]) -> list[dict]:
        """Score on the pool. An actor that is dead or restarting is infrastructure, not bad input:
        the batch goes to the next actor, with a capped backoff, for as long as the driver runs (Ray
        restarts the actor; backpressure holds the partitions meanwhile), so a valid frame never
        becomes a dead letter because a process died. An error the actor raised for these frames
        (``RayTaskError``) propagates and dead-letters them."""
        from ray.exceptions import RayError, RayTaskError

        images = [item.image for item in items]
        carriers = [item.trace for item in items]
        attempt = 0
        while True:
            handle = self.prefilter_pool[self._next_prefilter % len(self.prefilter_pool)]
            self._next_prefilter += 1
            started = time.perf_counter()
            try:
                results = await handle.score_frames.remote(product, images, carriers,
                                                           [item.frame.frame_id for item in items])
            except RayTaskError:
                raise
            except RayError as exc:
                attempt += 1
                self.stats.prefilter_retries += 1
                if not self._running and attempt > 3 * len(self.prefilter_pool):
                    raise RuntimeError(f"prefilter pool unavailable while stopping: {exc}") from exc
                log.warning("prefilter attempt %d failed (%s); retrying on the next actor", attempt,
                            type(exc).__name__)
                await asyncio.sleep(min(0.2 * attempt, 5.0))
                continue
            elapsed = (time.perf_counter() - started) * 1000
            for item in items:
                item.latency_ms["prefilter"] = elapsed
            return results

    async def _references(self, item: DecodedFrame, descriptor, anomaly_map):
        """The ids (they go on the verdict, for reviewers) and pixels (for JUDO) of the nearest normals,
        the labelled defect the frame's anomaly looks most like and the product's labelled defect types
        (both None without a defect library)."""
        from judo_model.imaging import decode_image

        started = time.perf_counter()
        k = self.config.prefilter.references_k
        with tracer().start_as_current_span("references", context=context_from_carrier(item.trace)) as span:
            # both calls are sent before either is awaited: one round trip, not two
            if descriptor is not None:
                refs_call = self.references.query_descriptors.remote(item.frame.product, descriptor, k, True)
            else:
                refs_call = self.references.query.remote(item.frame.product, [item.image], k, True)
            defects_call = None
            if anomaly_map is not None:
                defects_call = self.references.defect_evidence.remote(item.frame.product, item.image, anomaly_map)
            refs = await refs_call
            hint, types = await defects_call if defects_call is not None else (None, None)
            span.set_attribute("frame_id", item.frame.frame_id)
            span.set_attribute("reference_ids", [r["id"] for r in refs[0]])
            span.set_attribute("defect_hint", hint or "")
        item.latency_ms["references"] = (time.perf_counter() - started) * 1000
        return [r["id"] for r in refs[0]], [decode_image(r["image"]) for r in refs[0]], hint, types

    async def _ask_judo(self, item: DecodedFrame, decision, prefilter_result: dict) -> Verdict:
        """References then JUDO, retried with backoff (a retry usually lands on another replica); each
        attempt waits twice as long as the one before, starting at ``judo.request_timeout_s``.

        A frame JUDO never answers still gets a verdict: the prefilter's, anomalous (its score is above
        the threshold) and marked ``+judo-unavailable`` in ``model_version``, so it goes to a person
        instead of being lost.
        """
        attempts = self.config.ingest.judo_retries + 1
        last_error: Exception | None = None
        references = None
        reference_ids: list[str] = []
        hint = types = None
        for attempt in range(attempts):
            try:
                if references is None:
                    reference_ids, references, hint, types = await self._references(
                        item, prefilter_result.get("descriptor"), prefilter_result.get("anomaly_map"))
                request = JudoFrameRequest(
                    frame_id=item.frame.frame_id, camera_id=item.frame.camera_id, line_id=item.frame.line_id,
                    product=item.frame.product, captured_at=item.frame.captured_at, query=item.image,
                    references=references, anomaly_score=decision.score, threshold=decision.threshold,
                    anomaly_map=prefilter_result.get("anomaly_map"), defect_hint=hint, defect_types=types,
                    latency_ms=dict(item.latency_ms),
                    trace=item.trace)
                response = self.judo.infer.remote(request)
                # a timed-out request keeps its replica busy: longer waits on retries, not a retry storm
                timeout = self.config.judo.request_timeout_s * 2 ** attempt
                verdict = await asyncio.wait_for(response, timeout=timeout)
                total = (time.time() - item.received_at) * 1000
                verdict = verdict.model_copy(update={"latency_ms": {**verdict.latency_ms, "total": total},
                                                     "reference_ids": reference_ids})
                self.stats.latencies_judo_ms.append(total)
                return verdict
            except Exception as exc:  # backpressure, replica death or timeout: retry, then fall back
                last_error = exc
                self.stats.judo_retries += 1
                log.warning("JUDO attempt %d/%d for %s failed: %s", attempt + 1, attempts, item.frame.frame_id, exc)
                await asyncio.sleep(min(0.5 * 2 ** attempt, 5.0))
        log.error("JUDO gave no verdict for %s after %d attempts (%s); the prefilter's verdict stands",
                  item.frame.frame_id, attempts, last_error)
        self.stats.judo_fallbacks += 1
        item.latency_ms["total"] = (time.time() - item.received_at) * 1000
        return prefilter_verdict(item.frame, decision, model_version=f"{self.prefilter_version}+judo-unavailable",
                                 latency_ms=item.latency_ms, trace_id=trace_id_hex(context_from_carrier(item.trace)))

    async def _write(self, verdicts, letters) -> None:
        """Write durably; retry until the sink succeeds so no result is dropped."""
        if not verdicts and not letters:
            return
        delay = 0.2
        while True:
            try:
                await self.sink.write.remote(verdicts, letters)
                return
            except Exception as exc:
                log.warning("sink write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def driver_actor_class():
    """The async Ray actor around :class:`FrameDriver` (Ray imported only when asked for)."""
    import ray

    @ray.remote(num_cpus=0, max_concurrency=1000)
    class FrameDriverActor:
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

    return FrameDriverActor
