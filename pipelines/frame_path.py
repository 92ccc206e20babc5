"""The frame path: decode → prefilter → route → JUDO → sink, for one micro-batch of Kafka records.

Plain Python over injected stages (the :class:`typing.Protocol` classes below), so the chain and
its retry policies are tested without Ray or Kafka (``tests/test_frame_path.py``); the Ray actor
in :mod:`pipelines.driver` wires it to the intake and to Ray handles. Every record ends as exactly
one durable verdict or dead letter, and only then is it reported done to the intake (which
commits its offset): at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Protocol

from actors.ingest import DecodedFrame, Rejected
from actors.intake import RawRecord, RecordPosition
from actors.routing import RouteDecision, Router, prefilter_verdict
from cluster.messages import DeadLetter, Verdict
from cluster.records import dead_letter_for
from cluster.telemetry import context_from_carrier, trace_id_hex
from pipelines.judo_request import JudoFrameRequest
from pipelines.metrics import FrameMetrics
from pipelines.prefilter_batcher import ProductBatcher

log = logging.getLogger(__name__)

#: ``model_version`` suffix of the prefilter verdict a suspect frame gets when JUDO never answered
JUDO_UNAVAILABLE = "+judo-unavailable"


class StageUnavailable(RuntimeError):
    """The stage's infrastructure failed (a dead or restarting actor), not the frames: retry them."""


class Decoder(Protocol):
    def decode(self, record: RawRecord) -> DecodedFrame | Rejected: ...


class PrefilterStage(Protocol):
    async def screen(self, product: str, frames: list[DecodedFrame], threshold: float) -> list[dict]:
        """Per frame, in order: ``score``, and for frames above ``threshold`` (the router's) ``anomaly_map``,
        ``references`` (``[{id, path, ...}]``, no pixels), ``defect_hint`` and ``defect_types``. Raises
        :class:`StageUnavailable` when the stage, not the frames, failed."""


class JudoStage(Protocol):
    async def judge(self, request: JudoFrameRequest, reference_paths: list[str]) -> Verdict:
        """The verdict for a suspect frame; the replica reads the references from ``reference_paths``."""


class Sink(Protocol):
    async def write(self, verdicts: list[tuple[Verdict, dict]], letters: list[tuple[DeadLetter, dict]]) -> None:
        """Return only once every record is durable; raise otherwise."""


class Completion(Protocol):
    """Where finished records are reported (the intake, which commits their offsets)."""

    def done(self, position: RecordPosition) -> None: ...

    def is_done(self, position: RecordPosition) -> bool: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How a stage call is retried: ``attempts`` tries in all (None: until it succeeds), a pause of
    ``backoff_s`` after the first failure that doubles (or grows linearly) up to ``backoff_max_s``,
    and an optional time limit per try that doubles with every retry (a timed-out request keeps its
    replica busy: longer waits on retries, not a retry storm)."""

    attempts: int | None = None
    attempts_when_stopping: int | None = None  # the cap once the driver drains (None: ``attempts``)
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    doubling: bool = True
    timeout_s: float | None = None

    def pause(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure (1-based)."""
        growth = 2 ** (failures - 1) if self.doubling else failures
        return min(self.backoff_s * growth, self.backoff_max_s)

    def timeout(self, attempt: int) -> float | None:
        """The time limit of try ``attempt`` (0-based)."""
        return None if self.timeout_s is None else self.timeout_s * 2 ** attempt

    def gives_up(self, failures: int, stopping: bool) -> bool:
        limit = self.attempts_when_stopping if stopping and self.attempts_when_stopping is not None else self.attempts
        return limit is not None and failures >= limit


@dataclass(frozen=True)
class RetryPolicies:
    """The pipeline's policies. Prefilter: an unavailable actor is infrastructure, not bad input, so
    the batch is retried (on the next actor of the pool) for as long as the driver runs, and dead-
    lettered only when it cannot finish while stopping. JUDO: ``judo_retries`` retries, then the
    fallback — the prefilter's verdict, anomalous, marked :data:`JUDO_UNAVAILABLE`, so the frame goes
    to a person instead of being lost. Sink: until it succeeds (nothing is dropped)."""

    prefilter: RetryPolicy = RetryPolicy(backoff_s=0.2, doubling=False)
    judo: RetryPolicy = RetryPolicy(attempts=4, backoff_s=0.5, timeout_s=60.0)
    sink: RetryPolicy = RetryPolicy(backoff_s=0.2)

    @classmethod
    def from_config(cls, config, prefilter_actors: int) -> "RetryPolicies":
        """From a :class:`pipelines.config.PipelineConfig` and the prefilter pool's size."""
        return cls(
            prefilter=RetryPolicy(attempts_when_stopping=3 * prefilter_actors + 1, backoff_s=0.2, doubling=False),
            judo=RetryPolicy(attempts=config.ingest.judo_retries + 1, backoff_s=0.5,
                             timeout_s=config.judo.request_timeout_s),
            sink=RetryPolicy(backoff_s=0.2))


@dataclass
class PathStats:
    """Counters the live summary, the benchmarks and the tests read (with the intake's)."""

    frames_in: int = 0
    verdicts_prefilter: int = 0
    verdicts_judo: int = 0
    dead_letters: int = 0
    judo_retries: int = 0
    judo_fallbacks: int = 0
    prefilter_retries: int = 0
    latencies_pass_ms: deque = field(default_factory=lambda: deque(maxlen=5000))
    latencies_judo_ms: deque = field(default_factory=lambda: deque(maxlen=5000))
    metrics: FrameMetrics = field(default_factory=FrameMetrics)  # by line, for Prometheus (pipelines/metrics.py)

    def as_dict(self) -> dict:
        """Every field, latency windows as plain lists and the metrics as nested dicts (they cross Ray calls)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), deque)
                else v.as_dict() if isinstance(v, FrameMetrics) else v for f in fields(self)}


@dataclass(frozen=True)
class PrefilterBatching:
    """How frames are grouped into prefilter calls (:class:`pipelines.prefilter_batcher.ProductBatcher`):
    up to ``batch_size`` frames of one product, sent when full or after ``max_wait_s``, at most
    ``max_calls`` calls in flight. The defaults send each micro-batch's frames at once."""

    batch_size: int = 8
    max_wait_s: float = 0.0
    max_calls: int = 2

    @classmethod
    def from_config(cls, config, prefilter_actors: int) -> "PrefilterBatching":
        """From a :class:`pipelines.config.PipelineConfig` and the prefilter pool's size."""
        section = config.prefilter
        return cls(batch_size=section.batch_size, max_wait_s=section.max_wait_ms / 1000,
                   max_calls=section.calls_per_actor * prefilter_actors)


class FramePath:
    """Walks micro-batches of records through the stages; :meth:`process` never raises."""

    def __init__(self, decoder: Decoder, prefilter: PrefilterStage, router: Router, judo: JudoStage, sink: Sink,
                 completion: Completion, policies: RetryPolicies = RetryPolicies(),
                 model_version: str = "prefilter", batching: PrefilterBatching = PrefilterBatching()):
        self.decoder = decoder
        self.prefilter = prefilter
        self.router = router
        self.judo = judo
        self.sink = sink
        self.completion = completion
        self.policies = policies
        self.model_version = model_version
        self.stats = PathStats()
        self.stopping = False  # set when the driver drains: the prefilter's retries become bounded
        self.batcher = ProductBatcher(self.screen_batch, batching.batch_size, batching.max_wait_s, batching.max_calls)

    async def process(self, records: list[RawRecord]) -> None:
        """Any unexpected failure turns the batch's unfinished records into dead letters: no stuck partition."""
        self.stats.frames_in += len(records)
        try:
            await self._process(records)
        except Exception as exc:
            log.exception("batch failed; dead-lettering its unfinished records")
            unfinished = [r for r in records if not self.completion.is_done(r.position)]
            letters = [(dead_letter_for("prefilter", exc, topic=r.position.topic, partition=r.position.partition,
                                        offset=r.position.offset, key=r.key, value=r.value, headers=r.headers), {})
                       for r in unfinished]
            await self.write([], letters)
            self.stats.dead_letters += len(letters)
            for record in unfinished:
                self.completion.done(record.position)

    async def _process(self, records: list[RawRecord]) -> None:
        """Pass-path verdicts are written as soon as they are routed; suspect frames finish on their own."""
        decoded: list[DecodedFrame] = []
        rejected: list[Rejected] = []
        # image decoding releases the GIL: off the event loop, batches of other partitions keep moving
        for outcome in await asyncio.to_thread(lambda: [self.decoder.decode(r) for r in records]):
            (decoded if isinstance(outcome, DecodedFrame) else rejected).append(outcome)
        self.stats.metrics.arrived(item.frame for item in decoded)
        passed: list[DecodedFrame] = []
        verdicts: list[tuple[Verdict, dict]] = []
        judo_jobs = []
        by_product: dict[str, list[DecodedFrame]] = {}
        for item in decoded:
            by_product.setdefault(item.frame.product, []).append(item)
        screened = await asyncio.gather(*(self.screen(product, items) for product, items in by_product.items()))
        for (product, items), screenings in zip(by_product.items(), screened):
            for item, screening in zip(items, screenings):
                decision = self.router.decide(product, screening["score"])
                if decision.to_judo:
                    judo_jobs.append(self._judo_path(item, decision, screening))
                    continue
                item.latency_ms["total"] = (time.time() - item.received_at) * 1000
                verdicts.append((self._prefilter_verdict(item, decision, self._version(screening)), item.trace))
                passed.append(item)
        await self.write(verdicts, [(r.letter, r.trace) for r in rejected])
        self.stats.verdicts_prefilter += len(passed)
        self.stats.dead_letters += len(rejected)
        for item in passed:
            self.stats.latencies_pass_ms.append(item.latency_ms["total"])
        for item in [*passed, *rejected]:
            self.completion.done(item.position)
        await asyncio.gather(*judo_jobs)

    async def screen(self, product: str, items: list[DecodedFrame]) -> list[dict]:
        """The prefilter's results for one product's frames of a micro-batch, batched with other micro-batches'
        frames of that product (:attr:`batcher`); ``latency_ms["prefilter"]`` includes the wait for a batch."""
        started = time.perf_counter()
        results = await self.batcher.submit(product, items)
        elapsed = (time.perf_counter() - started) * 1000
        for item in items:
            item.latency_ms["prefilter"] = elapsed
        return results

    async def screen_batch(self, product: str, items: list[DecodedFrame]) -> list[dict]:
        """One prefilter call under its retry policy; an error the stage raised for these frames propagates
        (and dead-letters them)."""
        policy = self.policies.prefilter
        failures = 0
        while True:
            try:
                results = await self.prefilter.screen(product, items, self.router.threshold_of(product))
            except StageUnavailable as exc:
                failures += 1
                self.stats.prefilter_retries += 1
                if policy.gives_up(failures, self.stopping):
                    raise RuntimeError(f"prefilter pool unavailable while stopping: {exc}") from exc
                log.warning("prefilter attempt %d failed (%s); retrying on the next actor", failures, exc)
                await asyncio.sleep(policy.pause(failures))
                continue
            return results

    async def _judo_path(self, item: DecodedFrame, decision: RouteDecision, screening: dict) -> None:
        verdict = await self.ask_judo(item, decision, screening)
        await self.write([(verdict, item.trace)], [])
        if verdict.stage == "judo":
            self.stats.verdicts_judo += 1
        else:
            self.stats.verdicts_prefilter += 1
        self.completion.done(item.position)

    async def ask_judo(self, item: DecodedFrame, decision: RouteDecision, screening: dict) -> Verdict:
        """JUDO under its retry policy (a retry usually lands on another replica), else the fallback verdict."""
        policy = self.policies.judo
        references = screening.get("references") or []
        request = JudoFrameRequest(
            frame_id=item.frame.frame_id, camera_id=item.frame.camera_id, line_id=item.frame.line_id,
            product=item.frame.product, captured_at=item.frame.captured_at, query=item.image, references=[],
            anomaly_score=decision.score, threshold=decision.threshold, anomaly_map=screening.get("anomaly_map"),
            defect_hint=screening.get("defect_hint"), defect_types=screening.get("defect_types"),
            latency_ms=dict(item.latency_ms), trace=item.trace)
        paths = [r["path"] for r in references]
        last_error: Exception | None = None
        failures = 0
        while not policy.gives_up(failures, stopping=False):
            try:
                verdict = await asyncio.wait_for(self.judo.judge(request, paths), timeout=policy.timeout(failures))
                total = (time.time() - item.received_at) * 1000
                self.stats.latencies_judo_ms.append(total)
                return verdict.model_copy(update={"latency_ms": {**verdict.latency_ms, "total": total},
                                                  "reference_ids": [r["id"] for r in references]})
            except Exception as exc:  # backpressure, replica death or timeout: retry, then fall back
                last_error = exc
                failures += 1
                self.stats.judo_retries += 1
                log.warning("JUDO attempt %d/%s for %s failed: %s", failures, policy.attempts, item.frame.frame_id,
                            exc)
                await asyncio.sleep(policy.pause(failures))
        log.error("JUDO gave no verdict for %s after %d attempts (%s); the prefilter's verdict stands",
                  item.frame.frame_id, failures, last_error)
        self.stats.judo_fallbacks += 1
        item.latency_ms["total"] = (time.time() - item.received_at) * 1000
        return self._prefilter_verdict(item, decision, self._version(screening) + JUDO_UNAVAILABLE)

    def _version(self, screening: dict) -> str:
        """The banks the prefilter actor scored with (a live reload bumps them), else the driver's start-up ones."""
        return screening.get("model_version") or self.model_version

    @staticmethod
    def _prefilter_verdict(item: DecodedFrame, decision: RouteDecision, model_version: str) -> Verdict:
        return prefilter_verdict(item.frame, decision, model_version=model_version, latency_ms=item.latency_ms,
                                 trace_id=trace_id_hex(context_from_carrier(item.trace)))

    async def write(self, verdicts: list[tuple[Verdict, dict]], letters: list[tuple[DeadLetter, dict]]) -> None:
        """Write durably under the sink's policy (by default until it succeeds, so no result is dropped)."""
        if not verdicts and not letters:
            return
        policy = self.policies.sink
        failures = 0
        while True:
            try:
                started = time.perf_counter()
                await self.sink.write(verdicts, letters)
                self.stats.metrics.written((v for v, _ in verdicts), (d for d, _ in letters),
                                           time.perf_counter() - started)
                return
            except Exception as exc:
                failures += 1
                if policy.gives_up(failures, self.stopping):
                    raise
                log.warning("sink write failed (%s); retrying in %.1fs", exc, policy.pause(failures))
                await asyncio.sleep(policy.pause(failures))
