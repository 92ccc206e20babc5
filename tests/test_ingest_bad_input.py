"""Bad input at the ingest boundary: every record becomes a decoded frame or a dead letter with a reason.

Unit cases run the shared catalogue (:func:`tests.pipeline_support.bad_inputs`) through
:class:`actors.ingest.FrameDecoder`; property tests feed it arbitrary Kafka-shaped records.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from actors.ingest import DecodedFrame, FrameDecoder, Rejected
from cluster.messages import MAX_JSON_BYTES
from cluster.records import (
    FRAME_HEADER,
    SCHEMA_VERSION_HEADER,
    dead_letter_from_record,
    dead_letter_to_record,
    frame_to_record,
)
from judo_model.imaging import encode_jpeg, encode_png
from tests.pipeline_support import bad_inputs, frame, png_bomb, record_for

PRODUCTS = {"bottle", "hex_nut"}
#: Where the pickle payloads would create a directory if anything ever unpickled them.
MARKER = Path(tempfile.mkdtemp(prefix="judo-unpickled-")) / "executed"
CATALOGUE = {bad.name: bad for bad in bad_inputs(MARKER)}


def decoder() -> FrameDecoder:
    return FrameDecoder(known_products=PRODUCTS)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_each_bad_input_is_a_dead_letter_with_its_reason_and_original_bytes(name):
    bad = CATALOGUE[name]
    raw = record_for(bad.record, offset=41, partition=3)
    out = decoder().decode(raw)
    assert isinstance(out, Rejected), f"{name} was accepted"
    letter = out.letter
    assert bad.reason in letter.reason
    assert letter.stage == "ingest" and letter.error_type
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == ("frames", 3, 41)
    assert letter.original_key == raw.key and letter.original_headers == raw.headers
    if name == "oversized":
        assert letter.omitted == ["value"] and letter.original_value is None
        assert letter.original_value_bytes == len(raw.value)
        assert letter.original_value_sha256 == hashlib.sha256(raw.value).hexdigest()
    else:
        assert letter.original_value == raw.value and letter.omitted == []
    key, value, headers = dead_letter_to_record(letter)
    assert len(value) <= MAX_JSON_BYTES, "the dead letter itself must be writable"
    assert dead_letter_from_record(key, value, headers) == letter
    assert not MARKER.exists(), "a pickle payload was executed"


def test_a_disguised_bomb_is_refused_before_its_pixels_are_inflated():
    bad = CATALOGUE["disguised-bomb"]
    started = time.perf_counter()
    out = decoder().decode(record_for(bad.record))
    assert isinstance(out, Rejected) and "above the cap of 4096" in out.letter.reason
    assert time.perf_counter() - started < 0.5, "the bomb was decoded before being refused"


def test_the_test_bomb_is_a_real_png_that_inflates_a_thousandfold():
    data = png_bomb(300)
    out = FrameDecoder().decode(record_for(frame(image=data, width=300, height=300)))
    assert isinstance(out, DecodedFrame) and not out.image.any()
    assert out.image.nbytes > 500 * len(data)


def test_a_frame_under_the_cap_but_larger_than_declared_is_refused():
    larger = frame(image=encode_png(np.zeros((40, 30, 3), np.uint8)), width=30, height=20)
    out = decoder().decode(record_for(larger))
    assert isinstance(out, Rejected)
    assert "image is 30x40 = 1200 pixels, above the cap of 600 (frame declares png 30x20)" in out.letter.reason


def test_missing_key_and_key_that_differs_from_the_frame_id_are_dead_letters():
    key, value, headers = frame_to_record(frame(frame_id="f-7"))
    for record_key, reason in ((None, "record has no key"), (b"f-8", "record key 'f-8' differs from frame_id 'f-7'")):
        out = decoder().decode(record_for((record_key, value, headers)))
        assert isinstance(out, Rejected) and reason in out.letter.reason


def test_unexpected_errors_still_become_dead_letters(monkeypatch):
    """A decoder bug must not crash the driver: the record goes to the dead-letter topic like any other."""
    import actors.ingest

    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(actors.ingest, "decode_image", broken)
    raw = record_for(frame())
    out = decoder().decode(raw)
    assert isinstance(out, Rejected)
    assert out.letter.error_type == "KeyError" and "bug" in out.letter.reason
    assert out.letter.original_value == raw.value


def test_a_flood_from_one_camera_leaves_the_decoder_stateless():
    """Thousands of frames from one camera neither change how the next camera's frame decodes nor pile up."""
    dec = decoder()
    flood = [dec.decode(record_for(frame(frame_id=f"flood-{i}", camera_id="cam-flood"), offset=i))
             for i in range(2000)]
    assert all(isinstance(out, DecodedFrame) for out in flood)
    other = dec.decode(record_for(frame(frame_id="calm-1", camera_id="cam-calm"), offset=2000))
    assert isinstance(other, DecodedFrame) and other.frame.camera_id == "cam-calm"
    assert vars(dec).keys() == {"known_products", "max_pixels"}, "the decoder must keep no per-record state"


# --------------------------------------------------------------------------- properties

_HEADER_NAMES = st.sampled_from([SCHEMA_VERSION_HEADER, FRAME_HEADER, "traceparent", "tracestate", "content-type"])
_HEADERS = st.lists(st.tuples(st.one_of(_HEADER_NAMES, st.text(max_size=20)), st.one_of(st.none(), st.binary(max_size=300))),
                    max_size=6)


def _assert_total(raw) -> DecodedFrame | Rejected:
    out = decoder().decode(raw)
    assert isinstance(out, (DecodedFrame, Rejected))
    if isinstance(out, Rejected):
        assert out.letter.reason.strip()
        assert out.letter.error_type in ("MessageValidationError", "ImageDecodeError"), out.letter.reason
        assert out.letter.original_key == (None if raw.key is None else bytes(raw.key))
        assert out.letter.original_value == (None if raw.value is None else bytes(raw.value))
        assert out.letter.original_headers == [(k, v or b"") for k, v in raw.headers]
    else:
        assert out.image.shape == (out.frame.height, out.frame.width, 3)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.one_of(st.none(), st.binary(max_size=40)), value=st.one_of(st.none(), st.binary(max_size=2000)),
       headers=_HEADERS)
def test_arbitrary_records_decode_or_are_rejected_never_raise(key, value, headers):
    _assert_total(record_for((key, value, headers)))


_JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
#: Each metadata field: a valid value, and what a confused camera might send instead.
_META_FIELDS = {
    "frame_id": (st.just("f-1"), _JSON_SCALARS),
    "camera_id": (st.just("c1"), _JSON_SCALARS),
    "line_id": (st.just("l1"), _JSON_SCALARS),
    "product": (st.sampled_from(sorted(PRODUCTS)), st.one_of(st.just("teapot"), _JSON_SCALARS)),
    "captured_at": (st.just("2026-01-01T00:00:00Z"), st.one_of(st.just("2026-01-01T00:00:00"), _JSON_SCALARS)),
    "encoding": (st.sampled_from(["png", "jpeg", "bmp", "raw_rgb8"]), st.one_of(st.just("tiff"), _JSON_SCALARS)),
    "width": (st.sampled_from([30, 30, 29, 31]), st.one_of(st.integers(), _JSON_SCALARS)),
    "height": (st.sampled_from([20, 20, 19, 21]), st.one_of(st.integers(), _JSON_SCALARS)),
    "schema_version": (st.just(1), st.one_of(st.integers(), _JSON_SCALARS)),
}


@st.composite
def _near_valid_records(draw):
    """Frames that are almost right: a field wrong or missing now and then, the image often cut or flipped."""
    encoding = draw(st.sampled_from(["png", "jpeg", "raw_rgb8"]))
    meta = {"encoding": encoding}
    for name, (valid, junk) in _META_FIELDS.items():
        roll = draw(st.integers(0, 19))  # hypothesis favours 0: valid fields are the common case
        if roll == 19:
            meta.pop(name, None)
        elif roll == 18:
            meta[name] = draw(junk)
        elif name not in meta or roll == 17:
            meta[name] = draw(valid)
    pixels = np.full((20, 30, 3), draw(st.integers(0, 255)), np.uint8)
    image = {"png": encode_png, "jpeg": encode_jpeg, "raw_rgb8": lambda a: a.tobytes()}[encoding](pixels)
    if draw(st.integers(0, 2)) == 2:
        image = image[: draw(st.integers(0, len(image)))]
    image = bytearray(image)
    if image and draw(st.integers(0, 2)) == 2:
        image[draw(st.integers(0, len(image) - 1))] ^= 1 << draw(st.integers(0, 7))
    frame_id = str(meta.get("frame_id", "f-1")).encode()
    key = frame_id if draw(st.integers(0, 9)) < 9 else draw(st.binary(max_size=8))
    version = draw(st.sampled_from([b"1", b"2", b"", b"x"])) if draw(st.integers(0, 9)) == 9 else b"1"
    headers = [(SCHEMA_VERSION_HEADER, version), (FRAME_HEADER, json.dumps(meta).encode())]
    return record_for((key, bytes(image), headers))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_near_valid_records())
def test_near_valid_frames_decode_or_are_rejected_never_raise(raw):
    _assert_total(raw)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 48), height=st.integers(1, 48), encoding=st.sampled_from(["png", "bmp", "raw_rgb8"]),
       seed=st.integers(0, 2**16))
def test_valid_lossless_frames_decode_to_their_exact_pixels(width, height, encoding, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if encoding == "raw_rgb8":
        data = pixels.tobytes()
    else:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=encoding.upper())
        data = buf.getvalue()
    out = decoder().decode(record_for(frame(image=data, encoding=encoding, width=width, height=height)))
    assert isinstance(out, DecodedFrame), getattr(out, "letter", None)
    assert np.array_equal(out.image, pixels)
