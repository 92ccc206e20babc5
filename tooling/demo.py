"""`make demo`: the whole system on one machine, from nothing, in a few minutes.

1. start real Apache Kafka (KRaft) on 127.0.0.1;
2. render normal images of the demo products and fit their prefilter banks (cached);
3. load the shipped tiny JUDO checkpoint (no download);
4. start Ray, the prefilter pool, reference retrieval, the sink and JUDO on Ray Serve;
5. simulate 3 lines x 2 cameras for about a minute with a live summary;
6. score verdicts against the simulator's ground truth and write a verdict gallery.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from actors.references import ReferenceService
from cluster.local_kafka import LocalKafka
from cluster.telemetry import percentile, read_spans, setup_tracing, shutdown_tracing, summarize_spans
from judo_model.data.synth.writer import generate_dataset
from judo_model.imaging import decode_image
from judo_model.prefilter.bank_format import BankFormatError
from judo_model.prefilter.fitting import fit_bank_from_folder
from judo_model.prefilter.references import REFERENCES_SUBDIR, ReferenceIndex
from pipelines.commands import summary_table
from pipelines.config import PipelineConfig
from pipelines.metrics_http import local_token_file
from pipelines.runner import Pipeline
from tooling.gallery import collect_verdicts, gallery_card, score_against_truth, write_gallery
from tooling.simulator import CameraSimulator, CameraSpec

DEMO_PRODUCTS = ("bottle", "hex_nut", "pcb")


def prepare_banks(out: Path, products: tuple[str, ...], seed: int = 7, images_per_category: int = 80,
                  console: Console | None = None, size: int = 256, bank_config=None) -> dict[str, Path]:
    """Fit one prefilter bank (with its reference index) per product from rendered normal images.

    Cached under ``out``: a second demo run reuses the banks (and refits one an older release
    saved). ``size`` is the rendered image side and ``bank_config`` an optional
    :class:`judo_model.prefilter.patchcore.PatchCoreConfig` (small frames fit small banks).
    """
    banks = {}
    data = out / "data"
    if not (data / "splits.json").exists():
        generate_dataset(data, seed=seed, categories=list(products), images_per_category=images_per_category,
                         size=size, heldout=())
    for product in products:
        bank_dir = out / "banks" / product
        fresh, stale = not (bank_dir / "bank.json").exists(), None
        if not fresh:
            try:
                ReferenceIndex.load(bank_dir / REFERENCES_SUBDIR)
            except BankFormatError as error:  # saved by an older release: fit again rather than fail
                stale = str(error)
        if fresh or stale:
            if console:
                console.print(f"fitting the prefilter bank for [cyan]{product}[/]" + (f" ({stale})" if stale else ""))
            fit_bank_from_folder(data / "Synthetic", product, bank_dir, bank_config)
        banks[product] = bank_dir
    return banks


def demo_config(banks: dict[str, Path], checkpoint: Path, bootstrap: str, trace_file: Path,
                lines: int, cameras_per_line: int) -> PipelineConfig:
    products = list(banks)
    return PipelineConfig.model_validate({
        "kafka": {"mode": "external", "settings": {"bootstrap_servers": bootstrap}},
        "lines": [
            {"id": f"line{i + 1}", "product": products[i % len(products)],
             "cameras": [f"line{i + 1}-cam{j + 1}" for j in range(cameras_per_line)]}
            for i in range(lines)
        ],
        "products": {name: {"bank": str(path)} for name, path in banks.items()},
        "prefilter": {"actors": 1, "batch_size": 8, "threads_per_actor": 1},
        "ingest": {"actors": 1, "max_in_flight": 48},
        "judo": {"checkpoint": str(checkpoint), "max_batch_size": 4, "max_new_tokens": 96,
                 "replicas": {"min": 1, "max": 1}, "num_cpus": 0},
        "telemetry": {"trace_file": str(trace_file)},
        "ray": {"num_cpus": 2},
        "metrics": {"bearer_token_file": str(local_token_file())},  # /metrics never serves without a token
    })


def run_full_demo(args: argparse.Namespace) -> int:
    """``judo demo``: run the steps above, print the score and latencies; 0 when every frame got a verdict."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    console = Console()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if not (checkpoint / "config.json").exists():
        console.print(f"[red]no JUDO checkpoint at {checkpoint}[/]; `make train` builds one")
        return 1
    trace_file = out / "traces.jsonl"
    truth_file = out / "ground_truth.jsonl"
    for stale in (trace_file, truth_file):
        stale.unlink(missing_ok=True)
    setup_tracing("judo-demo.cameras", trace_file=trace_file)
    banks = prepare_banks(out / "assets", DEMO_PRODUCTS, console=console)
    kafka = LocalKafka(brokers=1)
    with console.status("starting Apache Kafka (KRaft)..."):
        kafka.start()
    pipeline = None
    try:
        config = demo_config(banks, checkpoint, kafka.bootstrap_servers, trace_file, args.lines,
                             args.cameras_per_line)
        cameras = [CameraSpec(line.id, camera, line.product) for line in config.lines for camera in line.cameras]
        pipeline = Pipeline(config, kafka.settings())
        with console.status("starting Ray, the prefilter pool and JUDO on Ray Serve..."):
            pipeline.start()
        simulator = CameraSimulator(cameras, defect_rate=args.defect_rate, seed=args.seed)
        frames = int(args.seconds * args.fps)
        sent: list = []
        publisher = threading.Thread(
            target=lambda: sent.extend(simulator.publish(kafka.settings(), config.topics.frames, frames,
                                                         fps=args.fps, truth_path=truth_file)), daemon=True)
        console.print(f"simulating {len(cameras)} cameras on {args.lines} lines: {frames} frames "
                      f"at {args.fps:g} frames/s, defect rate {args.defect_rate:.0%}")
        started = time.monotonic()
        publisher.start()
        done = lambda s: s.get("verdicts_prefilter", 0) + s.get("verdicts_judo", 0) + s.get("dead_letters", 0) >= frames
        with Live(console=console, refresh_per_second=1) as live:
            stats = pipeline.stats()
            while not (done(stats) and not publisher.is_alive()) and time.monotonic() - started < args.seconds + 300:
                live.update(summary_table(stats, time.monotonic() - started))
                time.sleep(1.0)
                stats = pipeline.stats()
            live.update(summary_table(stats, time.monotonic() - started))
        publisher.join(timeout=60)
        truth = [json.loads(line) for line in truth_file.read_text().splitlines()]
        collected = collect_verdicts(kafka.settings(), config.topics.verdicts, {t["frame_id"] for t in truth},
                                     timeout_s=60)
    finally:
        if pipeline is not None:
            pipeline.stop()
        kafka.stop(remove_data=True)
        shutdown_tracing()
    score = score_against_truth(collected.verdicts, truth)
    console.print(
        f"verdicts {len(collected.verdicts)}/{len(truth)} (duplicates {collected.duplicates}); defects caught "
        f"{score['caught']}/{score['defective']} (recall {score['recall']:.0%}), correct type "
        f"{score['defect_type_correct']}, false alarms {score['false_alarms']}, normal frames routed "
        f"{score['routing_rate_normal']:.1%}")
    console.print(f"pass-path latency p50 {percentile(stats.get('latencies_pass_ms', []), 50):.0f} ms, "
                  f"p99 {percentile(stats.get('latencies_pass_ms', []), 99):.0f} ms; JUDO path p50 "
                  f"{percentile(stats.get('latencies_judo_ms', []), 50):.0f} ms, "
                  f"p99 {percentile(stats.get('latencies_judo_ms', []), 99):.0f} ms")
    sheet = _gallery(sent, collected.verdicts, truth, banks, out / "gallery")
    (out / "summary.json").write_text(json.dumps({
        "score": score, "duplicates": collected.duplicates,
        "trace_summary": summarize_spans(read_spans(trace_file)) if trace_file.exists() else {},
    }, indent=2))
    console.print(f"gallery: {sheet}   traces: {trace_file}   summary: {out / 'summary.json'}")
    return 0 if len(collected.verdicts) == len(truth) else 1


def _gallery(sent, verdicts, truth, banks: dict[str, Path], out_dir: Path, limit: int = 12) -> Path:
    """Cards for JUDO verdicts first (they carry reasoning), each beside its nearest normal reference."""
    references = ReferenceService({name: str(path / REFERENCES_SUBDIR) for name, path in banks.items()}, threads=1)
    by_id = {t["frame_id"]: t for t in truth}
    shown = [s for s in sent if s.frame.frame_id in verdicts]
    shown.sort(key=lambda s: (verdicts[s.frame.frame_id].stage != "judo", not s.is_defective))
    cards = []
    for item in shown[:limit]:
        image = decode_image(item.frame.image)
        [refs] = references.query(item.frame.product, [image], 1, True)
        reference = decode_image(refs[0]["image"]) if refs else None
        cards.append(gallery_card(image, verdicts[item.frame.frame_id], reference, by_id.get(item.frame.frame_id)))
    return write_gallery(cards, out_dir)
