"""Real images through the whole system, as a camera would send them (issue #28 item 4).

For every product folder under ``--data`` (MVTec layout: ``<dataset>/<category>/{train/good,test/*,
ground_truth/*}``; default: the folder ``JUDO_REAL_DATA`` names), fit the prefilter bank on
``train/good`` only (``judo prefilter fit``: no test image is used for any choice), start a real
Kafka and the pipeline (Ray, Serve, the shipped JUDO), publish every test image with its own bytes
(PNG, JPEG or BMP as on disk) and read the verdicts back. Per product and mean: defect recall,
false-alarm rate on good frames, routed share, the prefilter alone at the same threshold, JUDO's
confirms / clears / flags kept, box IoU against the masks, p50/p99 frame latency (capture to verdict).

    python benchmarks/real_stream.py --json docs/real_stream.json [--data DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.local_kafka import LocalKafka  # noqa: E402
from cluster.messages import Frame  # noqa: E402
from cluster.records import frame_to_record  # noqa: E402
from cluster.telemetry import percentile  # noqa: E402
from judo_model.data.mvtec import GOOD, discover_categories  # noqa: E402
from judo_model.prefilter.fitting import fit_bank_from_folder  # noqa: E402
from judo_model.prefilter.scorer import PrefilterScorer  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.runner import Pipeline  # noqa: E402
from tooling.demo import demo_config  # noqa: E402
from tooling.gallery import collect_verdicts  # noqa: E402

ENCODINGS = {"PNG": "png", "JPEG": "jpeg", "BMP": "bmp"}


def product_folders(data: Path) -> list:
    """Every category folder under ``data`` (one level of dataset folders, or categories directly)."""
    found = []
    for dataset in sorted(p for p in data.iterdir() if p.is_dir()):
        try:
            found += discover_categories(dataset)
        except ValueError:
            continue
    return [c for c in found if c.split("test")]


def camera_frame(path: Path, product: str, frame_id: str) -> Frame:
    """The image file's own bytes as a camera frame (size and encoding from its header)."""
    with Image.open(path) as image:
        width, height, encoding = image.width, image.height, ENCODINGS[image.format]
    return Frame(frame_id=frame_id, camera_id=f"{product}-cam1", line_id=f"{product}-line", product=product,
                 captured_at=datetime.now(timezone.utc), encoding=encoding, width=width, height=height,
                 image=path.read_bytes())


def box_iou(boxes: list[list[float]], mask: np.ndarray) -> float:
    """IoU of the union of normalised boxes with a ground-truth mask (``mask > 0``)."""
    height, width = mask.shape
    drawn = np.zeros_like(mask, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        drawn[int(y1 * height):max(int(np.ceil(y2 * height)), int(y1 * height) + 1),
              int(x1 * width):max(int(np.ceil(x2 * width)), int(x1 * width) + 1)] = True
    truth = mask > 0
    union = np.logical_or(drawn, truth).sum()
    return float(np.logical_and(drawn, truth).sum() / union) if union else 0.0


def product_metrics(samples: list, verdicts: dict, sent_at: dict) -> dict:
    defect = [s for s in samples if s.is_anomalous]
    good = [s for s in samples if not s.is_anomalous]
    v = {s: verdicts[s.frame_id] for s in samples if s.frame_id in verdicts}
    routed = [x for x in v.values() if x.stage == "judo"]
    latency = [(x.produced_at.timestamp() - sent_at[s.frame_id]) * 1000 for s, x in v.items()]
    ious = []
    for s in defect:
        x = v.get(s)
        mask = s.load_mask() if s.mask_path is not None else None
        if x is not None and x.is_anomalous and x.defect is not None and x.defect.boxes and mask is not None:
            ious.append(box_iou([b.as_list() for b in x.defect.boxes], mask))

    def share(items, test) -> float | None:
        return float(np.mean([test(v[s]) for s in items if s in v])) if items else None

    return {
        "test_frames": len(samples), "defect_frames": len(defect), "good_frames": len(good),
        "verdicts": len(v), "missing": len(samples) - len(v),
        "defect_recall": share(defect, lambda x: x.is_anomalous),
        "false_alarm_rate": share(good, lambda x: x.is_anomalous),
        "routed_share": len(routed) / max(len(v), 1),
        "prefilter_alone_recall": share(defect, lambda x: x.anomaly_score > x.threshold),
        "prefilter_alone_false_alarm_rate": share(good, lambda x: x.anomaly_score > x.threshold),
        "judo_confirms": sum(x.judo_is_anomalous is True for x in routed),
        "judo_clears": sum(x.judo_is_anomalous is False for x in routed),
        "decided_by": dict(Counter(x.decided_by or "" for x in v.values())),
        "defect_types": dict(Counter(x.defect.type for x in v.values() if x.defect is not None)),
        "box_iou_mean": float(np.mean(ious)) if ious else None, "box_iou_frames": len(ious),
        "latency_p50_ms": percentile(latency, 50), "latency_p99_ms": percentile(latency, 99),
    }


MEAN_KEYS = ("defect_recall", "false_alarm_rate", "routed_share", "prefilter_alone_recall",
             "prefilter_alone_false_alarm_rate", "box_iou_mean", "latency_p50_ms", "latency_p99_ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("JUDO_REAL_DATA"),
                        help="folder of MVTec-layout datasets (default: $JUDO_REAL_DATA)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/real_stream"), help="banks and traces")
    parser.add_argument("--products", nargs="+", help="only these categories")
    parser.add_argument("--limit", type=int, help="at most this many test images per product (a smoke run)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for every verdict")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second over all cameras, as a line "
                        "sends them (0: all at once, a burst; latency then measures the queue)")
    parser.add_argument("--auto", action="store_true", help="fit each bank with judo prefilter fit --auto (backbone, "
                        "canvas and cell levels chosen on synthetic defects in held-out train/good)")
    parser.add_argument("--target-routing-rate", type=float, default=0.05,
                        help="the routing budget each bank's threshold is calibrated to on held-out train/good")
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("--data or JUDO_REAL_DATA names the real folders")
    logging.basicConfig(level=logging.WARNING)
    categories = [c for c in product_folders(args.data) if not args.products or c.name in args.products]
    banks, samples = {}, {}
    for cat in categories:
        started = time.perf_counter()
        fit_bank_from_folder(cat.root.parent, cat.name, args.work / "banks" / cat.name,  # train/good only
                             target_routing_rate=args.target_routing_rate, select=args.auto)
        banks[cat.name] = args.work / "banks" / cat.name
        tests = cat.split("test")[: args.limit] if args.limit else cat.split("test")
        samples[cat.name] = [_Sample(s, f"{cat.name}-{i:04d}") for i, s in enumerate(tests)]
        print(f"{cat.name}: bank fitted on train/good in {time.perf_counter() - started:.1f} s; "
              f"{len(tests)} test frames", flush=True)
    with LocalKafka(brokers=1) as kafka:
        config = demo_config(banks, SHIPPED_CHECKPOINT, kafka.bootstrap_servers, args.work / "traces.jsonl",
                             lines=len(banks), cameras_per_line=1)
        config = config.model_copy(update={"lines": [
            line.model_copy(update={"id": f"{p}-line", "product": p, "cameras": [f"{p}-cam1"]})
            for line, p in zip(config.lines, banks)]})
        pipeline = Pipeline(config, kafka.settings()).start()
        try:
            producer, sent_at = kafka.settings().producer(), {}
            order = [(product, s) for product, items in samples.items() for s in items]
            order = [order[i] for i in np.random.default_rng(0).permutation(len(order))]  # products interleaved
            first = time.monotonic()
            for n, (product, s) in enumerate(order):
                if args.fps > 0:  # paced from the first frame, so a slow send does not slow the line down
                    time.sleep(max(0.0, first + n / args.fps - time.monotonic()))
                key, value, headers = frame_to_record(camera_frame(s.path, product, s.frame_id))
                sent_at[s.frame_id] = time.time()
                producer.send(config.topics.frames, key=key, value=value, headers=headers)
            producer.flush(60)
            producer.close()
            expected = {s.frame_id for items in samples.values() for s in items}
            collected = collect_verdicts(kafka.settings(), config.topics.verdicts, expected, timeout_s=args.timeout)
        finally:
            pipeline.stop()
    results = {product: product_metrics(items, collected.verdicts, sent_at) for product, items in samples.items()}
    results["mean"] = {k: _mean([r[k] for r in results.values()]) for k in MEAN_KEYS}
    payload = {"data": str(args.data), "checkpoint": SHIPPED_CHECKPOINT.name, "limit": args.limit, "fps": args.fps,
               "auto": args.auto, "target_routing_rate": args.target_routing_rate,
               "banks": {p: bank_summary(banks[p]) for p in banks},
               "duplicates": collected.duplicates, "products": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    print(table(results))
    return 0


def bank_summary(directory: Path) -> dict:
    """The backbone, canvas, cell levels and threshold a product's bank was fitted with."""
    bank = PrefilterScorer.load(directory).bank
    return {"backbone": bank.config.backbone.name, "canvas": list(bank.config.preprocess.resolved_canvas()),
            "cell_levels": bank.cell_levels is not None, "threshold": bank.calibration.threshold,
            "chosen_on": (bank.selection_report or {}).get("method", "defaults")}


class _Sample:
    """A test image with the frame id it travels under."""

    def __init__(self, sample, frame_id: str):
        self.sample, self.frame_id = sample, frame_id

    def __getattr__(self, name):
        return getattr(self.sample, name)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def table(results: dict) -> str:
    def fmt(value, pct=False):
        return "–" if value is None else f"{100 * value:.0f} %" if pct else f"{value:.2f}"

    rows = ["| product | recall | prefilter alone | false alarms | routed | JUDO yes / no | box IoU | p50 / p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for product, r in results.items():
        judo = f"{r['judo_confirms']} / {r['judo_clears']}" if "judo_confirms" in r else ""
        latency = f"{r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f}" if r.get("latency_p50_ms") else "–"
        rows.append(f"| {product} | {fmt(r['defect_recall'], True)} | {fmt(r['prefilter_alone_recall'], True)} | "
                    f"{fmt(r['false_alarm_rate'], True)} | {fmt(r['routed_share'], True)} | {judo} | "
                    f"{fmt(r['box_iou_mean'])} | {latency} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
