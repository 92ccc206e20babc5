"""Pipeline subcommands of ``judo``: ``demo`` (and, as the pipeline grows, ``run`` and ``simulate``)."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cluster.kafka import LocalKafka, TopicSpec
from cluster.messages import MessageValidationError, frame_from_record
from cluster.telemetry import extract_context, setup_tracing, shutdown_tracing, tracer
from judo_model.imaging import ImageDecodeError, decode_image
from pipelines.simulator import CameraSimulator, plant_cameras

DEMO_PRODUCTS = ["bottle", "hex_nut", "pcb"]


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="run the embedded stack end to end: local Kafka, simulated cameras, live summary")
    demo.add_argument("--frames", type=int, default=300, help="frames to simulate over all cameras")
    demo.add_argument("--fps", type=float, default=10.0, help="overall camera frame rate")
    demo.add_argument("--defect-rate", type=float, default=0.1)
    demo.add_argument("--lines", type=int, default=3)
    demo.add_argument("--cameras-per-line", type=int, default=2)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="where traces and ground truth go")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Start Kafka, stream simulated camera frames through it and show what arrives, live."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    trace_file = args.out / "traces.jsonl"
    truth_file = args.out / "ground_truth.jsonl"
    for stale in (trace_file, truth_file):
        stale.unlink(missing_ok=True)
    setup_tracing("judo-demo", trace_file=trace_file)
    cameras = plant_cameras(args.lines, args.cameras_per_line, DEMO_PRODUCTS)
    console.print(f"[bold]JUDO Inspect demo[/]: {len(cameras)} cameras on {args.lines} lines, "
                  f"{args.frames} frames at {args.fps:g} frames/s")
    kafka = LocalKafka(brokers=1)
    with console.status("starting Apache Kafka (KRaft)..."):
        kafka.start()
    try:
        console.print(f"Kafka serving at [cyan]{kafka.bootstrap_servers}[/]")
        settings = kafka.settings()
        kafka.create_topics([TopicSpec("frames", partitions=6)])
        simulator = CameraSimulator(cameras, defect_rate=args.defect_rate)
        publisher = threading.Thread(
            target=simulator.publish, args=(settings, "frames", args.frames),
            kwargs={"fps": args.fps, "truth_path": truth_file}, daemon=True)
        stats = _ArrivalStats()
        publisher.start()
        consumer = settings.consumer("frames", group_id="demo-viewer")
        deadline = time.monotonic() + args.frames / max(args.fps, 0.1) + 60
        with Live(stats.table(), console=console, refresh_per_second=4) as live:
            while stats.total < args.frames and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    for record in batch:
                        stats.add(record)
                consumer.commit()
                live.update(stats.table())
        consumer.close()
        publisher.join(timeout=30)
    finally:
        kafka.stop(remove_data=True)
        shutdown_tracing()
    console.print(f"{stats.total} frames arrived, {stats.invalid} rejected; "
                  f"Kafka latency p50 {stats.percentile(50):.1f} ms, p99 {stats.percentile(99):.1f} ms")
    console.print(f"traces: {trace_file}   ground truth: {truth_file}")
    return 0 if stats.total == args.frames and stats.invalid == 0 else 1


class _ArrivalStats:
    """What the demo viewer has seen so far, per camera."""

    def __init__(self) -> None:
        self.per_camera: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
        self.latencies_ms: list[float] = []
        self.total = 0
        self.invalid = 0

    def add(self, record) -> None:
        self.total += 1
        try:
            frame = frame_from_record(record.key, record.value, record.headers)
            image = decode_image(frame.image, frame.encoding)
        except (MessageValidationError, ImageDecodeError):
            self.invalid += 1
            return
        with tracer().start_as_current_span("demo.view", context=extract_context(record.headers)) as span:
            span.set_attribute("frame_id", frame.frame_id)
        key = (frame.line_id, frame.camera_id, frame.product)
        self.per_camera[key]["frames"] += 1
        self.per_camera[key]["bytes"] += len(frame.image)
        self.per_camera[key]["pixels"] = image.shape[0] * image.shape[1]
        self.latencies_ms.append(max(0.0, time.time() * 1000 - frame.captured_at.timestamp() * 1000))

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    def table(self) -> Table:
        table = Table(title=f"frames arriving from Kafka: {self.total} (rejected {self.invalid})")
        for column in ("line", "camera", "product", "frames", "avg KB", "image"):
            table.add_column(column)
        for (line, camera, product), counts in sorted(self.per_camera.items()):
            side = int(counts["pixels"] ** 0.5)
            table.add_row(line, camera, product, str(counts["frames"]),
                          f"{counts['bytes'] / max(counts['frames'], 1) / 1024:.1f}", f"{side}x{side}")
        return table
