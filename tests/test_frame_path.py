"""The frame path's stage chain and retry policies, with plain-Python stages (no Ray, no Kafka).

The stages here are small implementations of the :mod:`pipelines.frame_path` interfaces; the real
ones (Ray actors, Serve, Kafka) are exercised end to end in ``test_pipeline_e2e.py``.
"""

from __future__ import annotations

import asyncio

from actors.ingest import FrameDecoder
from actors.intake import OffsetTracker
from actors.routing import Router
from cluster.messages import Verdict
from pipelines.config import parse_config
from pipelines.frame_path import JUDO_UNAVAILABLE, FramePath, RetryPolicies, RetryPolicy, StageUnavailable
from tests.pipeline_support import frame, record_for

FAST = RetryPolicies(prefilter=RetryPolicy(attempts_when_stopping=3, backoff_s=0.001, doubling=False),
                     judo=RetryPolicy(attempts=3, backoff_s=0.001, timeout_s=0.05),
                     sink=RetryPolicy(backoff_s=0.001))


class Prefilter:
    """Scores a frame by its id's suffix (``…-hot`` is suspect); can be unavailable ``down`` times."""

    def __init__(self, down: int = 0, error: Exception | None = None):
        self.down = down
        self.error = error
        self.calls = 0
        self.thresholds: list[float] = []

    async def screen(self, product, frames, threshold):
        self.calls += 1
        self.thresholds.append(threshold)
        if self.down:
            self.down -= 1
            raise StageUnavailable("actor restarting")
        if self.error is not None:
            raise self.error
        out = []
        for f in frames:
            score = 5.0 if f.frame.frame_id.endswith("-hot") else 0.5
            out.append({"score": score, "anomaly_map": None,
                        **({"references": [{"id": "ref-1", "path": "/bank/references/ref-1.png"}],
                            "defect_hint": "stain", "defect_types": ["stain", "hole"]} if score > threshold else {})})
        return out


class Judo:
    """Answers after ``delay_s``; fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0, delay_s: float = 0.0):
        self.failures = failures
        self.delay_s = delay_s
        self.requests = []

    async def judge(self, request, reference_paths):
        self.requests.append((request, reference_paths))
        if self.failures:
            self.failures -= 1
            raise RuntimeError("replica died")
        await asyncio.sleep(self.delay_s)
        return Verdict(frame_id=request.frame_id, camera_id=request.camera_id, line_id=request.line_id,
                       product=request.product, stage="judo", anomaly_score=request.anomaly_score,
                       threshold=request.threshold, is_anomalous=True, model_version="fake@1",
                       latency_ms={**request.latency_ms, "judo": 1.0})


class Sink:
    """Keeps what it is given; fails the first ``failures`` writes."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.verdicts: list[Verdict] = []
        self.letters = []

    async def write(self, verdicts, letters):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        self.verdicts += [v for v, _ in verdicts]
        self.letters += [letter for letter, _ in letters]


def records(*ids: str, bad: int = 0):
    """Records for frames ``ids`` at offsets 0.., then ``bad`` corrupt ones."""
    out = [record_for(frame(frame_id=i), offset=n) for n, i in enumerate(ids)]
    out += [record_for(frame(frame_id=f"bad-{n}", image=b"\x89PNG\r\n\x1a\n" + bytes(30)), offset=len(ids) + n)
            for n in range(bad)]
    return out


def run(path: FramePath, batch) -> OffsetTracker:
    for record in batch:
        path.completion.add(record.position)
    asyncio.run(path.process(batch))
    return path.completion


def chain(prefilter=None, judo=None, sink=None, policies=FAST) -> FramePath:
    return FramePath(FrameDecoder(known_products={"bottle"}), prefilter or Prefilter(), Router({"bottle": 2.0}),
                     judo or Judo(), sink or Sink(), OffsetTracker(), policies, model_version="prefilter:bottle.r1")


def test_each_record_ends_as_one_durable_verdict_or_dead_letter_and_only_then_is_done():
    path = chain()
    tracker = run(path, records("a", "b-hot", "c", bad=1))
    verdicts = {v.frame_id: v for v in path.sink.verdicts}
    assert set(verdicts) == {"a", "b-hot", "c"}
    assert verdicts["a"].stage == "prefilter" and not verdicts["a"].is_anomalous
    assert verdicts["a"].model_version == "prefilter:bottle.r1" and "total" in verdicts["a"].latency_ms
    assert verdicts["b-hot"].stage == "judo" and verdicts["b-hot"].reference_ids == ["ref-1"]
    assert [letter.stage for letter in path.sink.letters] == ["ingest"]
    assert tracker.committable() == {("frames", 0): 4} and tracker.in_flight() == 0
    stats = path.stats.as_dict()
    assert (stats["frames_in"], stats["verdicts_prefilter"], stats["verdicts_judo"], stats["dead_letters"]) == (4, 2, 1, 1)
    assert len(stats["latencies_pass_ms"]) == 2 and len(stats["latencies_judo_ms"]) == 1


def test_judo_gets_the_prefilter_evidence_and_reference_paths_not_pixels():
    path = chain()
    run(path, records("x-hot"))
    [(request, paths)] = path.judo.requests
    assert paths == ["/bank/references/ref-1.png"] and request.references == []
    assert request.defect_hint == "stain" and request.defect_types == ["stain", "hole"]
    assert request.anomaly_score == 5.0 and request.threshold == 2.0 and "prefilter" in request.latency_ms


def test_an_unavailable_prefilter_is_retried_not_dead_lettered():
    path = chain(prefilter=Prefilter(down=5))
    tracker = run(path, records("a", "b"))
    assert [v.frame_id for v in path.sink.verdicts] == ["a", "b"] and not path.sink.letters
    assert path.stats.prefilter_retries == 5 and tracker.in_flight() == 0


def test_while_stopping_an_unavailable_prefilter_gives_up_and_dead_letters_the_batch():
    path = chain(prefilter=Prefilter(down=100))
    path.stopping = True
    tracker = run(path, records("a", "b"))
    assert [letter.stage for letter in path.sink.letters] == ["prefilter", "prefilter"]
    assert "unavailable while stopping" in path.sink.letters[0].reason
    assert path.prefilter.calls == 3 and tracker.in_flight() == 0


def test_an_error_the_prefilter_raises_for_the_frames_dead_letters_them():
    path = chain(prefilter=Prefilter(error=ValueError("cannot embed")))
    tracker = run(path, records("a", "b"))
    assert not path.sink.verdicts and len(path.sink.letters) == 2
    assert all("cannot embed" in letter.reason and letter.original_value for letter in path.sink.letters)
    assert path.stats.dead_letters == 2 and tracker.in_flight() == 0


def test_judo_is_retried_then_answers():
    path = chain(judo=Judo(failures=2))
    run(path, records("a-hot"))
    assert [v.stage for v in path.sink.verdicts] == ["judo"]
    assert path.stats.judo_retries == 2 and path.stats.judo_fallbacks == 0


def test_a_frame_judo_never_answers_gets_the_prefilters_anomalous_verdict():
    path = chain(judo=Judo(delay_s=10.0))  # longer than every attempt's timeout
    tracker = run(path, records("a-hot"))
    [verdict] = path.sink.verdicts
    assert verdict.stage == "prefilter" and verdict.is_anomalous
    assert verdict.model_version == "prefilter:bottle.r1" + JUDO_UNAVAILABLE
    assert len(path.judo.requests) == 3 and path.stats.judo_retries == 3 and path.stats.judo_fallbacks == 1
    assert path.stats.verdicts_prefilter == 1 and tracker.in_flight() == 0


def test_sink_failures_are_retried_until_the_write_is_durable():
    path = chain(sink=Sink(failures=3))
    tracker = run(path, records("a", "b-hot"))
    assert {v.frame_id for v in path.sink.verdicts} == {"a", "b-hot"} and tracker.in_flight() == 0


def test_offsets_are_not_done_while_the_sink_has_not_acknowledged():
    release = asyncio.Event()

    class SlowSink(Sink):
        async def write(self, verdicts, letters):
            await release.wait()
            await super().write(verdicts, letters)

    path = chain(sink=SlowSink())
    batch = records("a", "b")
    for record in batch:
        path.completion.add(record.position)

    async def scenario():
        task = asyncio.create_task(path.process(batch))
        await asyncio.sleep(0.05)
        in_flight = path.completion.in_flight()
        release.set()
        await task
        return in_flight

    assert asyncio.run(scenario()) == 2
    assert path.completion.in_flight() == 0


def test_retry_policy_arithmetic():
    judo = RetryPolicy(attempts=4, backoff_s=0.5, timeout_s=60.0)
    assert [judo.timeout(a) for a in range(4)] == [60.0, 120.0, 240.0, 480.0]
    assert [judo.pause(f) for f in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert not judo.gives_up(3, stopping=False) and judo.gives_up(4, stopping=False)
    prefilter = RetryPolicy(attempts_when_stopping=7, backoff_s=0.2, doubling=False)
    assert [prefilter.pause(f) for f in (1, 2, 30)] == [0.2, 0.4, 5.0]
    assert not prefilter.gives_up(1000, stopping=False) and prefilter.gives_up(7, stopping=True)
    assert RetryPolicy().timeout(3) is None


def test_policies_from_the_pipeline_config():
    config = parse_config({
        "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
        "products": {"bottle": {"bank": "b"}},
        "judo": {"checkpoint": "c", "request_timeout_s": 30}, "ingest": {"judo_retries": 2}})
    policies = RetryPolicies.from_config(config, prefilter_actors=2)
    assert policies.judo.attempts == 3 and policies.judo.timeout(1) == 60.0
    assert policies.prefilter.attempts is None and policies.prefilter.attempts_when_stopping == 7
    assert policies.sink.attempts is None

