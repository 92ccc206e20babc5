"""Helpers of ``benchmarks/pipeline.py``: stage times inside the pipeline (trace spans, verdict latencies)
and the same stages in isolation in this process, and the bare prefilter's frames/s."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from actors.ingest import DecodedFrame, FrameDecoder
from actors.intake import RawRecord, RecordPosition
from actors.prefilter import PrefilterService
from cluster.records import frame_to_record
from cluster.telemetry import read_spans

STAGES = ("ingest", "prefilter", "references", "judo", "sink")


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def trace_size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.exists() else 0


def spans_since(path: Path | None, offset: int) -> list[dict]:
    """Spans appended to the trace file after ``offset`` bytes (runs are sequential, so: one run's spans)."""
    if path is None or not path.exists():
        return []
    with open(path, "rb") as handle:
        handle.seek(offset)
        tail = handle.read()
    scratch = path.with_suffix(".run.jsonl")
    scratch.write_bytes(tail)
    try:
        return read_spans(scratch)
    finally:
        scratch.unlink()


def pipeline_stage_ms(spans: list[dict], verdicts: dict) -> dict:
    """Median span duration per stage (ms per frame: a prefilter or judo span, its batch's time, is
    divided by its ``batch_size``), the prefilter's median batch time, span
    counts, and the driver-side view from the verdicts' ``latency_ms`` (the Ray call of the prefilter)."""
    by_name: dict[str, list[float]] = {}
    for span in spans:
        batched = span["name"] in ("prefilter", "judo")  # spans timed by their batch: per frame
        per_frame = span["attributes"].get("batch_size") or 1 if batched else 1
        by_name.setdefault(span["name"], []).append(float(span["duration_ms"]) / per_frame)
    batch_ms = [float(s["duration_ms"]) for s in spans if s["name"] == "prefilter"]
    batch_sizes = [s["attributes"].get("batch_size") for s in spans if s["name"] == "prefilter"]
    call_ms = [v.latency_ms["prefilter"] for v in verdicts.values() if "prefilter" in v.latency_ms]
    return {
        "median_ms": {name: _median(by_name.get(name, [])) for name in STAGES},
        "span_counts": {name: len(by_name.get(name, [])) for name in STAGES},
        "prefilter_batch_size_median": _median([b for b in batch_sizes if b]),
        "prefilter_batch_median_ms": _median(batch_ms),
        "judo_span_median_ms": _median([float(s["duration_ms"]) for s in spans if s["name"] == "judo"]),
        "judo_batch_size_median": _median([s["attributes"].get("batch_size") or 1
                                           for s in spans if s["name"] == "judo"]),
        "prefilter_call_from_driver_median_ms": _median(call_ms),
    }


def isolation(config, rendered: list, judo_ms: list[float]) -> dict:
    """Each stage alone in this process on the same frames: decode per record, the bare prefilter
    (``score_frames`` in batches of ``prefilter.batch_size`` with ``threads_per_actor`` threads, per
    product), references for the frames it flags, and JUDO (timed in the in-process run, ``judo_ms``)."""
    banks = {n: str(p.bank) for n, p in config.products.items()}
    decoder = FrameDecoder(known_products=banks)
    records = [RawRecord(RecordPosition("frames", 0, i), *frame_to_record(s.frame)) for i, s in enumerate(rendered)]
    decode_ms, decoded = [], []
    for record in records:
        started = time.perf_counter()
        item = decoder.decode(record)
        decode_ms.append((time.perf_counter() - started) * 1000)
        if isinstance(item, DecodedFrame):
            decoded.append(item)
    batch = config.prefilter.batch_size
    threads = config.prefilter.threads_per_actor
    service = PrefilterService(banks, threads=threads, with_references=True)
    by_product: dict[str, list[DecodedFrame]] = {}
    for item in decoded:
        by_product.setdefault(item.frame.product, []).append(item)
    for product, items in by_product.items():  # warm-up: load banks, first-call allocations
        service.score_frames(product, [i.image for i in items[:batch]])
    batch_ms, batch_raw_ms, references_ms = [], [], []
    scored = 0
    started_all = time.perf_counter()
    flagged = []
    for product, items in by_product.items():
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            started = time.perf_counter()
            results = service.score_frames(product, [i.image for i in chunk])
            batch_raw_ms.append((time.perf_counter() - started) * 1000)
            batch_ms.append(batch_raw_ms[-1] / len(chunk))
            scored += len(chunk)
            flagged += [(product, i, r) for i, r in zip(chunk, results) if r["suspect"]]
    bare_seconds = time.perf_counter() - started_all
    for product, item, result in flagged:
        started = time.perf_counter()
        service.references.query_descriptors(product, result["descriptor"], config.prefilter.references_k)
        service.references.defect_evidence(product, item.image, result["anomaly_map"])
        references_ms.append((time.perf_counter() - started) * 1000)
    return {
        "bare_prefilter": {"frames": scored, "seconds": bare_seconds, "frames_per_s": scored / bare_seconds,
                           "batch_size": batch, "threads": threads,
                           "image_size": list(decoded[0].image.shape) if decoded else None,
                           "batch_median_ms": _median(batch_raw_ms)},
        "median_ms": {"ingest": _median(decode_ms), "prefilter": _median(batch_ms),
                      "references": _median(references_ms), "judo": _median(judo_ms), "sink": None},
    }


def stage_table(inside: dict, alone: dict) -> dict:
    """Per stage: median ms inside the pipeline, in isolation, and their ratio (target <= 1.5)."""
    rows = {}
    for stage in STAGES:
        a, b = inside["median_ms"].get(stage), alone["median_ms"].get(stage)
        rows[stage] = {"pipeline_ms": a, "isolation_ms": b,
                       "ratio": a / b if a is not None and b else None}
    return rows
