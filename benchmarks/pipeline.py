"""Pipeline benchmark: sustained frames/s, latency per path, loss and duplicates, Kafka + Ray overhead.

Run: ``python benchmarks/pipeline.py --frames 300 --json docs/pipeline_benchmark.json``

1. Max rate: all frames (rendered beforehand, as in the in-process run) published at once;
   sustained rate = frames / (last verdict - first frame).
2. Paced run at 80 % of that rate: pass-path and JUDO-path latency percentiles.
3. The same frame path (:class:`pipelines.frame_path.FramePath`) with its stages called in one
   process on the same frames (decode, prefilter with references, route, JUDO for suspect frames): the compute the pipeline must at least spend. Overhead of Kafka + Ray =
   pipeline seconds per frame / in-process seconds per frame - 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from actors.ingest import FrameDecoder  # noqa: E402
from actors.intake import OffsetTracker, RawRecord, RecordPosition  # noqa: E402
from actors.prefilter import PrefilterService  # noqa: E402
from actors.routing import Router  # noqa: E402
from cluster.local_kafka import LocalKafka  # noqa: E402
from cluster.records import frame_to_record  # noqa: E402
from cluster.telemetry import percentile  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.frame_path import FramePath  # noqa: E402
from pipelines.runner import Pipeline, routing_thresholds  # noqa: E402
from pipelines.serve_app import JudoInference, SuspectFrame, with_references  # noqa: E402
from tooling.demo import DEMO_PRODUCTS, demo_config, prepare_banks  # noqa: E402
from tooling.gallery import collect_verdicts  # noqa: E402
from tooling.simulator import CameraSimulator, CameraSpec, publish_frames  # noqa: E402


def run_stream(kafka, config, cameras, frames: int, fps: float | None, seed: int, tag: str) -> dict:
    topics = config.topics.model_copy(update={
        "frames": f"{tag}.frames", "verdicts": f"{tag}.verdicts", "dead_letters": f"{tag}.dlq",
        "feedback": f"{tag}.feedback"})
    config = config.model_copy(update={"topics": topics})
    pipeline = Pipeline(config, kafka.settings()).start()
    try:
        rendered = list(CameraSimulator(cameras, defect_rate=0.1, seed=seed, run_id=tag).frames(frames))
        started = time.time()
        sent = publish_frames(kafka.settings(), topics.frames, rendered, fps=fps)
        expected = {s.frame.frame_id for s in sent}
        collected = collect_verdicts(kafka.settings(), topics.verdicts, expected, timeout_s=600)
        finished = max((v.produced_at.timestamp() for v in collected.verdicts.values()), default=time.time())
        stats = pipeline.stats()
    finally:
        pipeline.stop()
    verdicts = collected.verdicts
    pass_lat = [v.latency_ms.get("total", 0.0) for v in verdicts.values() if v.stage == "prefilter"]
    judo_lat = [v.latency_ms.get("total", 0.0) for v in verdicts.values() if v.stage == "judo"]
    normal = [s for s in sent if not s.is_defective]
    routed_normal = sum(1 for s in normal if s.frame.frame_id in verdicts and verdicts[s.frame.frame_id].stage == "judo")
    return {
        "frames_in": len(sent), "verdicts_out": len(verdicts), "lost": len(expected - set(verdicts)),
        "duplicates": collected.duplicates, "seconds": finished - started,
        "frames_per_s": len(verdicts) / max(finished - started, 1e-6),
        "pass_p50_ms": percentile(pass_lat, 50), "pass_p99_ms": percentile(pass_lat, 99),
        "judo_p50_ms": percentile(judo_lat, 50), "judo_p99_ms": percentile(judo_lat, 99),
        "routed_normal_rate": routed_normal / max(len(normal), 1), "judo_verdicts": len(judo_lat),
        "dead_letters": stats.get("dead_letters", 0),
    }


class LocalPrefilter:
    """The prefilter stage called in this process."""

    def __init__(self, service: PrefilterService, references_k: int):
        self.service = service
        self.references_k = references_k

    async def screen(self, product: str, frames: list) -> list[dict]:
        return self.service.screen_frames(product, [f.image for f in frames], [f.trace for f in frames],
                                          [f.frame.frame_id for f in frames], self.references_k)


class LocalJudo:
    """The JUDO stage called in this process (references read from the bank folder, as a replica does)."""

    def __init__(self, inference: JudoInference):
        self.inference = inference

    async def judge(self, request, reference_paths: list[str]):
        return self.inference.infer([with_references(SuspectFrame(request, reference_paths))])[0]


class DiscardingSink:
    async def write(self, verdicts, letters) -> None:
        pass


def in_process(config, cameras, frames: int, seed: int) -> dict:
    """The same frame path and stage code, called in one process one frame at a time: the compute floor."""
    banks = {n: str(p.bank) for n, p in config.products.items()}
    tracker = OffsetTracker()
    path = FramePath(
        FrameDecoder(known_products=banks),
        LocalPrefilter(PrefilterService(banks, threads=config.prefilter.threads_per_actor, with_references=True),
                       config.prefilter.references_k),
        Router(routing_thresholds(config)), LocalJudo(JudoInference(config.judo.model_dump(mode="json"))),
        DiscardingSink(), tracker)
    sent = list(CameraSimulator(cameras, defect_rate=0.1, seed=seed, run_id="inproc").frames(frames))
    records = [RawRecord(RecordPosition("frames", 0, i), *frame_to_record(item.frame)) for i, item in enumerate(sent)]

    async def walk() -> None:
        for record in records:
            tracker.add(record.position)
            await path.process([record])

    started = time.perf_counter()
    asyncio.run(walk())
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--json", type=Path, default=Path("docs/pipeline_benchmark.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-pipeline"))
    args = parser.parse_args()
    logging.getLogger("kafka").setLevel(logging.WARNING)
    console = Console()
    banks = prepare_banks(args.work / "assets", DEMO_PRODUCTS, console=console)
    results = {}
    with LocalKafka(brokers=1) as kafka:
        config = demo_config(banks, SHIPPED_CHECKPOINT, kafka.bootstrap_servers, args.work / "traces.jsonl",
                             lines=3, cameras_per_line=2)
        cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
        results["max_rate"] = run_stream(kafka, config, cameras, args.frames, None, 1, "bench-max")
        paced_fps = 0.8 * results["max_rate"]["frames_per_s"]
        results["paced_80pct"] = run_stream(kafka, config, cameras, args.frames, paced_fps, 2, "bench-paced")
        results["paced_80pct"]["target_fps"] = paced_fps
    results["in_process"] = in_process(config, cameras, args.frames, 1)
    per_frame_pipeline = 1 / results["max_rate"]["frames_per_s"]
    per_frame_inproc = 1 / results["in_process"]["frames_per_s"]
    results["overhead_vs_in_process"] = per_frame_pipeline / per_frame_inproc - 1

    table = Table(title=f"pipeline benchmark: {args.frames} frames, 3 lines x 2 cameras, 10% defective")
    for column in ("run", "frames/s", "in", "out", "lost", "dup", "pass p50/p99 ms", "JUDO p50/p99 ms", "routed normal"):
        table.add_column(column)
    for name in ("max_rate", "paced_80pct"):
        r = results[name]
        table.add_row(name, f"{r['frames_per_s']:.1f}", str(r["frames_in"]), str(r["verdicts_out"]), str(r["lost"]),
                      str(r["duplicates"]), f"{r['pass_p50_ms']:.0f}/{r['pass_p99_ms']:.0f}",
                      f"{r['judo_p50_ms']:.0f}/{r['judo_p99_ms']:.0f}", f"{r['routed_normal_rate']:.1%}")
    table.add_row("in-process", f"{results['in_process']['frames_per_s']:.1f}", str(args.frames), "-", "-", "-",
                  "-", "-", "-")
    console.print(table)
    console.print(f"Kafka + Ray overhead vs in-process stages: {results['overhead_vs_in_process']:.1%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
