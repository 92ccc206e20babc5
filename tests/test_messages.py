"""Schema round trips and strict validation, without a broker."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cluster.messages import MAX_FRAME_BYTES, Defect, Frame, RLEMask, Verdict
from cluster.records import (
    FRAME_HEADER,
    SCHEMA_VERSION_HEADER,
    MessageValidationError,
    dead_letter_for,
    dead_letter_from_record,
    dead_letter_to_record,
    frame_from_record,
    frame_to_record,
    verdict_from_record,
    verdict_to_record,
)
from judo_model.imaging import encode_png


def make_frame(**overrides) -> Frame:
    image = np.zeros((8, 12, 3), np.uint8)
    values = dict(
        frame_id="line1-cam1-000001", camera_id="cam1", line_id="line1", product="bottle",
        captured_at=datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc), encoding="png",
        width=12, height=8, image=encode_png(image),
    )
    values.update(overrides)
    return Frame(**values)


def test_frame_round_trip_keeps_every_field_and_header():
    frame = make_frame()
    trace = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    record = frame_to_record(frame, trace)
    assert record.key == b"line1-cam1-000001"
    assert record.value == frame.image
    assert ("traceparent", trace[0][1]) in record.headers
    assert frame_from_record(*record) == frame


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: (r.key, r.value, [h for h in r.headers if h[0] != FRAME_HEADER]), "missing header 'judo-frame'"),
        (lambda r: (r.key, r.value, [(SCHEMA_VERSION_HEADER, b"7"), *r.headers[1:]]), "schema version 7 is not supported"),
        (lambda r: (r.key, r.value, [(SCHEMA_VERSION_HEADER, b"x"), *r.headers[1:]]), "is not an integer"),
        (lambda r: (r.key, r.value, [r.headers[0], (FRAME_HEADER, b"{not json")]), "not UTF-8 JSON"),
        (lambda r: (b"\xff\xfe", r.value, r.headers), "record key is not UTF-8"),
        (lambda r: (b"other-id", r.value, r.headers), "differs from frame_id"),
        (lambda r: (r.key, b"", r.headers), "image is empty"),
        (lambda r: (r.key, None, r.headers), "no value"),
        (lambda r: (r.key, b"\0" * (MAX_FRAME_BYTES + 1), r.headers), "above the limit"),
        (lambda r: (None, r.value, r.headers), "no key"),
    ],
)
def test_malformed_frame_records_are_rejected_with_a_clear_reason(mutate, message):
    record = frame_to_record(make_frame())
    with pytest.raises(MessageValidationError, match=message):
        frame_from_record(*mutate(record))


def test_frame_metadata_is_validated_field_by_field():
    with pytest.raises(ValueError, match="frame_id"):
        make_frame(frame_id="has space")
    with pytest.raises(ValueError, match="width"):
        make_frame(width=0)
    with pytest.raises(ValueError, match="timezone"):
        make_frame(captured_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="encoding"):
        make_frame(encoding="gif")


def test_verdict_round_trip_with_boxes_and_mask():
    mask = np.zeros((6, 9), bool)
    mask[2:4, 3:7] = True
    verdict = Verdict(
        frame_id="f-1", camera_id="cam1", line_id="line1", product="bottle", stage="judo",
        anomaly_score=3.5, threshold=2.0, is_anomalous=True,
        defect=Defect(type="crack", boxes=[[0.3, 0.3, 0.8, 0.7]], mask=RLEMask.encode(mask),
                      description="a crack", reasoning="differs from the reference"),
        model_version="judo-tiny@1", latency_ms={"prefilter": 20.0, "judo": 250.0},
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    record = verdict_to_record(verdict)
    assert record.key == b"f-1"
    back = verdict_from_record(*record)
    assert back == verdict
    assert np.array_equal(back.defect.mask.decode(), mask)
    assert back.defect.boxes[0].as_list() == [0.3, 0.3, 0.8, 0.7]


def test_verdict_rejects_bad_boxes_and_trace_ids():
    base = dict(frame_id="f", camera_id="c", line_id="l", product="p", stage="prefilter",
                anomaly_score=0.1, threshold=1.0, is_anomalous=False, model_version="m")
    with pytest.raises(ValueError, match="out of order"):
        Verdict(**base, defect=Defect(boxes=[[0.5, 0.5, 0.1, 0.9]]))
    with pytest.raises(ValueError, match="less than or equal to 1"):
        Verdict(**base, defect=Defect(boxes=[[0.5, 0.5, 1.5, 0.9]]))
    with pytest.raises(ValueError, match="trace_id"):
        Verdict(**base, trace_id="xyz")
    with pytest.raises(ValueError, match="stage"):
        Verdict(**{**base, "stage": "other"})


def test_dead_letter_keeps_every_original_byte():
    letter = dead_letter_for(
        "ingest", MessageValidationError("corrupt"), topic="frames", partition=2, offset=41,
        key=b"\xff\x00", value=b"\x89PNG broken", headers=[("x", b"\xfe"), ("judo-frame", b"{")],
    )
    back = dead_letter_from_record(*dead_letter_to_record(letter))
    assert back == letter
    assert back.original_value == b"\x89PNG broken"
    assert back.original_headers == [("x", b"\xfe"), ("judo-frame", b"{")]
    assert back.reason == "corrupt" and back.error_type == "MessageValidationError"


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_rle_mask_round_trip(mask):
    rle = RLEMask.encode(mask)
    assert np.array_equal(rle.decode(), mask)
    assert rle.area == int(mask.sum())


def test_rle_rejects_inconsistent_counts():
    with pytest.raises(ValueError, match="sum to"):
        RLEMask(height=2, width=2, counts=[1, 1])
