"""Plain-Python cores of the streaming stages: decoding, offsets, routing, config."""

from __future__ import annotations

import numpy as np
import pytest

from actors.ingest import DecodedFrame, FrameDecoder, Rejected
from actors.intake import OffsetTracker, RecordPosition
from actors.routing import Router, UnknownProductError, prefilter_verdict
from judo_model.imaging import encode_jpeg, encode_png
from pipelines.config import ConfigError, parse_config
from tests.pipeline_support import frame, record_for


def test_decoder_accepts_png_and_jpeg_frames():
    decoder = FrameDecoder(known_products={"bottle"})
    for encoded, encoding in ((encode_png(np.zeros((20, 30, 3), np.uint8)), "png"),
                              (encode_jpeg(np.zeros((20, 30, 3), np.uint8)), "jpeg")):
        out = decoder.decode(record_for(frame(image=encoded, encoding=encoding)))
        assert isinstance(out, DecodedFrame)
        assert out.image.shape == (20, 30, 3)
        assert out.position.offset == 0


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (dict(product="teapot"), "unknown product 'teapot'"),
        (dict(width=31), "declared size 31x20"),
        (dict(image=b"\x89PNG\r\n\x1a\n" + b"\x00" * 30), "corrupt or truncated"),
        (dict(encoding="jpeg"), "declared encoding 'jpeg'"),
    ],
)
def test_decoder_turns_bad_frames_into_dead_letters_that_keep_the_bytes(overrides, reason):
    bad = frame(**overrides)
    raw = record_for(bad, offset=7)
    out = FrameDecoder(known_products={"bottle"}).decode(raw)
    assert isinstance(out, Rejected)
    assert reason in out.letter.reason
    assert out.letter.original_value == raw.value and out.letter.original_offset == 7
    assert out.letter.original_headers == raw.headers


def test_decoder_enforces_the_pixel_cap():
    big = frame(image=encode_png(np.zeros((200, 300, 3), np.uint8)), width=300, height=200)
    out = FrameDecoder(max_pixels=10_000).decode(record_for(big))
    assert isinstance(out, Rejected) and "above the cap" in out.letter.reason


def test_offsets_commit_only_a_finished_prefix():
    tracker = OffsetTracker()
    positions = [RecordPosition("frames", 0, o) for o in range(5)] + [RecordPosition("frames", 1, 10)]
    for p in positions:
        tracker.add(p)
    tracker.done(positions[1])
    tracker.done(positions[2])
    assert tracker.committable() == {}
    assert tracker.in_flight() == 4
    tracker.done(positions[0])
    assert tracker.committable() == {("frames", 0): 3}
    tracker.done(positions[5])
    tracker.done(positions[4])
    assert tracker.committable() == {("frames", 1): 11}
    tracker.done(positions[3])
    assert tracker.committable() == {("frames", 0): 5}
    assert tracker.committable() == {}
    assert tracker.is_done(positions[0]) and tracker.in_flight() == 0


def test_in_flight_counts_per_partition():
    """What a driver waits on before it gives partitions up in a rebalance."""
    tracker = OffsetTracker()
    for partition, offset in [(0, 0), (0, 1), (1, 5), (2, 7)]:
        tracker.add(RecordPosition("frames", partition, offset))
    tracker.done(RecordPosition("frames", 0, 1))
    assert tracker.in_flight([("frames", 0)]) == 1
    assert tracker.in_flight([("frames", 0), ("frames", 1), ("frames", 9)]) == 2
    assert tracker.in_flight([]) == 0 and tracker.in_flight() == 3


def test_offsets_of_revoked_partitions_are_forgotten():
    tracker = OffsetTracker()
    tracker.add(RecordPosition("frames", 0, 0))
    tracker.forget([("frames", 0)])
    assert tracker.in_flight() == 0 and tracker.committable() == {}


def test_router_sends_frames_above_threshold_to_judo():
    router = Router({"bottle": 2.0})
    assert router.decide("bottle", 2.01).to_judo
    assert not router.decide("bottle", 2.0).to_judo
    with pytest.raises(UnknownProductError):
        router.decide("nut", 5.0)
    verdict = prefilter_verdict(frame(), router.decide("bottle", 0.5), model_version="pf",
                                latency_ms={"prefilter": 3.0}, trace_id="")
    assert verdict.stage == "prefilter" and not verdict.is_anomalous and verdict.threshold == 2.0


MINIMAL = {
    "lines": [{"id": "line1", "product": "bottle", "cameras": ["cam1"]}],
    "products": {"bottle": {"bank": "banks/bottle"}},
    "judo": {"checkpoint": "checkpoints/judo-tiny"},
}


def test_config_validates_and_explains_errors():
    config = parse_config(MINIMAL)
    assert config.judo.engine == "transformers" and config.topics.frames == "frames"
    with pytest.raises(ConfigError, match=r"line 'line1' makes product 'bottle'"):
        parse_config({**MINIMAL, "products": {"nut": {"bank": "b"}}})
    with pytest.raises(ConfigError, match=r"judo.replicas: Value error, max must be >= min"):
        parse_config({**MINIMAL, "judo": {"checkpoint": "c", "replicas": {"min": 3, "max": 1}}})
    with pytest.raises(ConfigError, match=r"judo: Value error, engine vllm on device 'cuda' needs num_gpus > 0"):
        parse_config({**MINIMAL, "judo": {"checkpoint": "c", "engine": "vllm", "device": "cuda"}})
    assert parse_config({**MINIMAL, "judo": {"checkpoint": "c", "engine": "vllm"}}).judo.num_gpus == 0  # CPU build
    with pytest.raises(ConfigError, match=r"kafka.mode is external"):
        parse_config({**MINIMAL, "kafka": {"mode": "external"}})
    with pytest.raises(ConfigError, match=r"judo.typo: Extra inputs are not permitted"):
        parse_config({**MINIMAL, "judo": {"checkpoint": "c", "typo": 1}})
