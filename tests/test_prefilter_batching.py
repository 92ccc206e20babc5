"""Prefilter calls in the frame path: dynamic batching per product, and evidence attached by the router's threshold.

The batcher is plain asyncio (no Ray); the threshold test runs the real prefilter service in this
process on banks fitted from rendered images (``pipeline_banks``), as the in-process benchmark does.
"""

from __future__ import annotations

import asyncio

import pytest

from actors.ingest import FrameDecoder
from actors.intake import OffsetTracker
from actors.prefilter import PrefilterService
from actors.routing import Router
from judo_model.data.stream import FrameStream
from judo_model.imaging import encode_png
from pipelines.config import parse_config
from pipelines.frame_path import FramePath, PrefilterBatching
from pipelines.prefilter_batcher import ProductBatcher
from tests.pipeline_support import frame, record_for
from tests.test_frame_path import FAST, Judo, Sink


class SlowStage:
    """Answers each call after ``delay_s`` with the item itself; records call sizes and the most calls at once."""

    def __init__(self, delay_s: float = 0.01, fail_on: str | None = None):
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls: list[tuple[str, list]] = []
        self.running = 0
        self.most_running = 0

    async def __call__(self, product: str, items: list) -> list:
        self.calls.append((product, list(items)))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_on in items:
                raise ValueError(f"cannot score {self.fail_on}")
            return [f"scored {item}" for item in items]
        finally:
            self.running -= 1


def test_frames_of_concurrent_micro_batches_share_calls_per_product_and_calls_in_flight_are_bounded():
    stage = SlowStage(delay_s=0.02)
    batcher = ProductBatcher(stage, batch_size=8, max_wait_s=0.0, max_calls=2)

    async def drive():
        micro_batches = [("bottle", [f"b{m}-{i}" for i in range(3)]) for m in range(10)]
        micro_batches += [("hex_nut", [f"h{m}-{i}" for i in range(3)]) for m in range(10)]
        return await asyncio.gather(*(batcher.submit(product, items) for product, items in micro_batches)), \
            micro_batches

    results, micro_batches = asyncio.run(drive())
    for (product, items), answer in zip(micro_batches, results):
        assert answer == [f"scored {item}" for item in items], "each caller gets its own items' results, in order"
    assert stage.most_running <= 2, "never more calls in flight than max_calls"
    assert all(len(items) <= 8 for _, items in stage.calls)
    assert all({item[0] for item in items} == {product[0]} for product, items in stage.calls), "one product per call"
    sizes = [len(items) for _, items in stage.calls]
    assert sum(sizes) == 60 and max(sizes) == 8, f"frames waiting for a slot join fuller calls: {sizes}"
    assert len(stage.calls) < 20, "fewer calls than the 20 micro-batches"


def test_a_partial_batch_is_sent_after_max_wait_and_a_failed_call_fails_only_its_frames():
    stage = SlowStage(delay_s=0.0, fail_on="bad")
    batcher = ProductBatcher(stage, batch_size=8, max_wait_s=0.05, max_calls=1)

    async def drive():
        good = await batcher.submit("bottle", ["a", "b"])  # never fills a batch: sent when its wait is up
        with pytest.raises(ValueError, match="cannot score bad"):
            await batcher.submit("tire", ["bad", "c"])
        return good, await batcher.submit("bottle", ["d"])

    good, later = asyncio.run(drive())
    assert good == ["scored a", "scored b"] and later == ["scored d"]
    assert [items for _, items in stage.calls] == [["a", "b"], ["bad", "c"], ["d"]]


def test_batching_settings_come_from_the_config():
    config = parse_config({
        "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}], "products": {"bottle": {"bank": "b"}},
        "judo": {"checkpoint": "c"}, "prefilter": {"actors": 3, "batch_size": 16, "max_wait_ms": 5,
                                                  "calls_per_actor": 2}})
    assert PrefilterBatching.from_config(config, prefilter_actors=3) == PrefilterBatching(16, 0.005, 6)


class InProcessPrefilter:
    """The real prefilter service called in this process (the Ray actor's code, without Ray)."""

    def __init__(self, service: PrefilterService):
        self.service = service
        self.thresholds: list[float] = []

    async def screen(self, product, frames, threshold):
        self.thresholds.append(threshold)
        return self.service.screen_frames(product, [f.image for f in frames], [f.trace for f in frames],
                                          [f.frame.frame_id for f in frames], 2, threshold)


def test_a_config_threshold_below_the_banks_routes_frames_with_their_references_and_anomaly_map(pipeline_banks):
    """A ``products.<name>.threshold`` override below the bank's calibrated one routes normal-looking frames to
    JUDO; they must arrive with the same evidence (references, anomaly map) as frames above the bank's."""
    service = PrefilterService({"bottle": str(pipeline_banks["bottle"])}, threads=1, with_references=True)
    bank_threshold = service.get("bottle").threshold
    override = -1e9  # every frame is routed
    prefilter = InProcessPrefilter(service)
    path = FramePath(FrameDecoder(known_products={"bottle"}), prefilter, Router({"bottle": override}), Judo(), Sink(),
                     OffsetTracker(), FAST)
    stream = FrameStream("l1", "c1", "bottle", defect_rate=0.0, seed=3)
    images = [stream.frame(i).image for i in range(4)]
    records = [record_for(frame(frame_id=f"f{i}", product="bottle", image=encode_png(img), width=256, height=256),
                          offset=i) for i, img in enumerate(images)]
    for record in records:
        path.completion.add(record.position)
    asyncio.run(path.process(records))
    assert set(prefilter.thresholds) == {override}, "the router's threshold reaches the prefilter"
    scores = [request.anomaly_score for request, _ in path.judo.requests]
    assert len(scores) == 4 and min(scores) < bank_threshold, "normal frames below the bank's threshold were routed"
    for request, reference_paths in path.judo.requests:
        assert len(reference_paths) == 2 and all(p.endswith(".png") for p in reference_paths), request.frame_id
        assert request.anomaly_map is not None and request.anomaly_map.shape == request.query.shape[:2]
        assert request.threshold == override
