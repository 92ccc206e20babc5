"""Scaling benchmark: pass-path frames/s against drivers and prefilter actors, on one Ray node and on two.

Run: ``python benchmarks/scaling.py --frames 300 --json docs/scaling.json --markdown docs/scaling.md``

The plant-sizing inputs of docs/scaling.md, measured on this machine: for 1 and 2 frame drivers (Kafka
consumers of the frame topic) with as many prefilter actors, once on a local Ray node and once on a
two-node Ray cluster started with ``ray start`` (:class:`cluster.ray_nodes.LocalRayCluster`), the max-rate
pass path (no frame routed, as in ``benchmarks/pipeline.py``) and the CPU seconds every process group
spent per frame while the frames streamed (drivers, prefilter actors, sink, Ray's own daemons, the Kafka
broker, and this process, which plays the cameras and reads the verdicts). The sizing derived from them
(:func:`plant_sizing`: cores, drivers, partitions and JUDO replicas for the plant of docs/scaling.md) is
written under ``extrapolated``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402  (installed with Ray)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cluster.local_kafka import LocalKafka  # noqa: E402
from cluster.ray_nodes import LocalRayCluster  # noqa: E402
from cluster.ray_runtime import stop_ray  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.runner import Pipeline  # noqa: E402
from tooling.demo import DEMO_PRODUCTS, demo_config, prepare_banks  # noqa: E402
from tooling.gallery import collect_verdicts  # noqa: E402
from tooling.simulator import CameraSimulator, CameraSpec, publish_frames  # noqa: E402

from benchmarks.markdown_blocks import write_block  # noqa: E402
from benchmarks.pipeline import NEVER_ROUTED  # noqa: E402

#: process group of a process, by its command line (Ray names worker processes ``ray::<Actor>``)
GROUPS = (("ray::FrameDriverActor", "drivers"), ("ray::PrefilterService", "prefilter"), ("ray::Sink", "sink"),
          ("kafka.Kafka", "kafka broker"), ("raylet", "ray daemons"), ("gcs_server", "ray daemons"),
          ("ray/dashboard", "ray daemons"), ("ray::", "other ray workers"), ("default_worker.py", "other ray workers"))


def group_of(process: psutil.Process) -> str | None:
    if process.pid == os.getpid():
        return "cameras + verdict reader (this process)"
    try:
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for marker, group in GROUPS:
        if marker in command:
            return group
    return None


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process of interest, by pid."""
    out = {}
    for process in psutil.process_iter():
        group = group_of(process)
        if group is None:
            continue
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[process.pid] = (group, times.user + times.system)
    return out


def cpu_spent(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per group between two snapshots (a process born in between counts from zero)."""
    spent: dict[str, float] = {}
    for pid, (group, seconds) in after.items():
        spent[group] = spent.get(group, 0.0) + seconds - before.get(pid, (group, 0.0))[1]
    return spent


def pass_path_config(banks, bootstrap: str, drivers: int, ray_address: str | None):
    config = demo_config(banks, SHIPPED_CHECKPOINT, bootstrap, Path(os.devnull), lines=3, cameras_per_line=2)
    products = {n: p.model_copy(update={"threshold": NEVER_ROUTED}) for n, p in config.products.items()}
    update = {"products": products, "telemetry": config.telemetry.model_copy(update={"trace_file": None}),
              "ingest": config.ingest.model_copy(update={"actors": drivers}),
              "prefilter": config.prefilter.model_copy(update={"actors": drivers})}
    if ray_address:
        update["ray"] = config.ray.model_copy(update={"address": ray_address, "num_cpus": None})
        update["judo"] = config.judo.model_copy(update={"resources": {"judo_gpu": 1}})
    return config.model_copy(update=update)


def run(kafka, config, frames: int, tag: str) -> dict:
    topics = config.topics.model_copy(update={"frames": f"{tag}.frames", "verdicts": f"{tag}.verdicts",
                                              "dead_letters": f"{tag}.dlq", "feedback": f"{tag}.feedback"})
    config = config.model_copy(update={"topics": topics})
    cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
    pipeline = Pipeline(config, kafka.settings()).start()
    try:
        rendered = list(CameraSimulator(cameras, defect_rate=0.1, seed=1, run_id=tag).frames(frames))
        before = cpu_by_process()
        started = time.time()
        sent = publish_frames(kafka.settings(), topics.frames, rendered)
        collected = collect_verdicts(kafka.settings(), topics.verdicts, {s.frame.frame_id for s in sent},
                                     timeout_s=600)
        finished = max((v.produced_at.timestamp() for v in collected.verdicts.values()), default=time.time())
        cpu = cpu_spent(before, cpu_by_process())
    finally:
        pipeline.stop()
    seconds = finished - started
    verdicts = len(collected.verdicts)
    pipeline_cpu = sum(v for k, v in cpu.items() if k in ("drivers", "prefilter", "sink", "ray daemons",
                                                            "other ray workers"))
    return {"frames": len(sent), "verdicts": verdicts, "lost": len(sent) - verdicts,
            "duplicates": collected.duplicates, "seconds": seconds, "frames_per_s": verdicts / max(seconds, 1e-6),
            "cpu_s": cpu, "pipeline_cpu_ms_per_frame": 1000 * pipeline_cpu / max(verdicts, 1),
            "kafka_cpu_ms_per_frame": 1000 * cpu.get("kafka broker", 0.0) / max(verdicts, 1),
            "mean_frame_bytes": sum(len(s.frame.image) for s in sent) / max(len(sent), 1)}


def plant_sizing(runs: list[dict], plant_fps: float, routed_share: float, judo_benchmark: dict) -> dict:
    """What a plant of ``plant_fps`` frames/s needs, extrapolated linearly from the 1-node, 1-driver run (CPU
    per frame by process group) and the JUDO replica benchmark (requests/s per replica at its best level)."""
    one = next(r for r in runs if r["ray_nodes"] == 1 and r["drivers"] == 1)
    per_frame_s = {group: seconds / max(one["verdicts"], 1) for group, seconds in one["cpu_s"].items()}
    judo = judo_benchmark["engines"]["transformers"]["levels"]
    judo_rps = max(level["requests_per_s"] for level in judo.values())
    cores = {group: plant_fps * per_frame_s.get(group, 0.0)
             for group in ("prefilter", "drivers", "sink", "ray daemons", "other ray workers", "kafka broker")}
    driver_fps = 1 / max(per_frame_s.get("drivers", 0.0), 1e-9)  # frames/s one driver core can feed
    drivers = int(-(-plant_fps // driver_fps))
    return {
        "plant_frames_per_s": plant_fps, "routed_share": routed_share,
        "cpu_ms_per_frame": {g: 1000 * v for g, v in per_frame_s.items()},
        "cores": cores, "pass_path_cores": sum(v for g, v in cores.items() if g != "kafka broker"),
        "prefilter_actors": int(-(-cores["prefilter"] // 1)),
        "frames_per_s_one_driver_core_feeds": driver_fps, "drivers": drivers,
        "frame_partitions": 4 * drivers,  # a few per driver, so a rebalance moves small shares
        "frame_topic_mb_per_s": plant_fps * one["mean_frame_bytes"] / 1e6,
        "judo_requests_per_s": plant_fps * routed_share,
        "judo_requests_per_s_per_cpu_replica": judo_rps,
        "judo_cpu_replicas": int(-(-plant_fps * routed_share // judo_rps)),
        "basis": "linear in frames/s from the CPU seconds per frame of the 1-node, 1-driver max-rate pass path "
                 "on this machine (256x256 frames, EfficientNet-Lite0 prefilter, 1 torch thread per actor) and "
                 "the tiny JUDO's requests/s per CPU replica (transformers engine on Ray Serve, best concurrency)",
    }


@contextmanager
def ray_layout(nodes: int):
    """``None`` (a local Ray started by the pipeline) or the address of a fresh cluster of ``nodes`` nodes."""
    if nodes == 1:
        yield None
        return
    with LocalRayCluster.with_workers(nodes - 1, head_resources={"judo_gpu": 1}, worker_resources={"judo_gpu": 1},
                                      object_store_mb=512) as cluster:
        try:
            yield cluster.address
        finally:
            stop_ray()


BLOCK = "scaling.json"  # the block of docs/scaling.md rendered from the JSON (benchmarks/markdown_blocks.py)


def markdown(results: dict) -> str:
    """The measured and extrapolated tables of docs/scaling.md, from the JSON."""
    lines = [f"Measured ({results['date']}, {results['cores']} cores, {results['frames']} frames per run, max rate, "
             "nothing routed):", "",
             "| Ray nodes | drivers = prefilter actors | frames/s | lost | duplicates | pipeline CPU ms/frame "
             "| Kafka broker CPU ms/frame |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        lines.append(f"| {r['ray_nodes']} | {r['drivers']} | {r['frames_per_s']:.1f} | {r['lost']} | {r['duplicates']} "
                     f"| {r['pipeline_cpu_ms_per_frame']:.1f} | {r['kafka_cpu_ms_per_frame']:.1f} |")
    x = results["extrapolated"]
    lines += ["", "CPU per frame by process group (1 node, 1 driver; measured):", "",
              "| process group | CPU ms per frame |", "|---|---:|"]
    lines += [f"| {group} | {ms:.1f} |" for group, ms in sorted(x["cpu_ms_per_frame"].items(), key=lambda kv: -kv[1])]
    lines += ["", f"Extrapolated to {x['plant_frames_per_s']:,.0f} frames/s (linear; routed share "
              f"{x['routed_share']:.0%}):", "", "| what | how many | from |", "|---|---:|---|",
              f"| cores for the pass path (prefilter, drivers, sink, Ray) | {x['pass_path_cores']:.0f} "
              "| CPU ms/frame above × frames/s |",
              f"| prefilter actors (1 core each) | {x['prefilter_actors']} | prefilter CPU ms/frame × frames/s |",
              f"| frame drivers | {x['drivers']} | one driver core feeds "
              f"{x['frames_per_s_one_driver_core_feeds']:.0f} frames/s |",
              f"| frame-topic partitions | {x['frame_partitions']} | 4 per driver |",
              f"| frame-topic ingress | {x['frame_topic_mb_per_s']:,.0f} MB/s | mean frame size × frames/s |",
              f"| Kafka broker cores | {x['cores']['kafka broker']:.0f} | broker CPU ms/frame × frames/s |",
              f"| JUDO requests/s | {x['judo_requests_per_s']:,.0f} | frames/s × routed share |",
              f"| tiny-JUDO CPU replicas | {x['judo_cpu_replicas']} | "
              f"{x['judo_requests_per_s_per_cpu_replica']:.1f} requests/s per replica |"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--json", type=Path, default=Path("docs/scaling.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-scaling"))
    parser.add_argument("--plant-fps", type=float, default=10_000, help="the plant to size (frames/s)")
    parser.add_argument("--routed-share", type=float, default=0.06,
                        help="share of frames routed to JUDO (defect rate + the prefilter's routing budget)")
    parser.add_argument("--judo-benchmark", type=Path, default=Path("docs/engines_benchmark_serve.json"),
                        help="benchmarks/engines.py JSON with the JUDO replica's requests/s")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also rewrite the measured tables in this file (docs/scaling.md)")
    parser.add_argument("--from-json", action="store_true", help="render --markdown from --json without running")
    args = parser.parse_args()
    if args.from_json:
        write_block(args.markdown, BLOCK, markdown(json.loads(args.json.read_text())))
        return 0
    logging.getLogger("kafka").setLevel(logging.WARNING)
    console = Console()
    banks = prepare_banks(args.work / "assets", DEMO_PRODUCTS, console=console)
    results: dict = {"frames": args.frames, "cores": psutil.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                     "runs": []}
    with LocalKafka(brokers=1) as kafka:
        for nodes in (1, 2):
            with ray_layout(nodes) as address:
                for drivers in (1, 2):
                    tag = f"scale-n{nodes}-d{drivers}"
                    console.print(f"[bold]{tag}[/]: {nodes} Ray node(s), {drivers} driver(s) and prefilter actor(s)")
                    row = run(kafka, pass_path_config(banks, kafka.bootstrap_servers, drivers, address), args.frames,
                              tag)
                    results["runs"].append({"ray_nodes": nodes, "drivers": drivers, "prefilter_actors": drivers, **row})
    results["extrapolated"] = plant_sizing(results["runs"], args.plant_fps, args.routed_share,
                                           json.loads(args.judo_benchmark.read_text()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=float))

    table = Table(title=f"pass path, {args.frames} frames, 3 lines x 2 cameras, {results['cores']} cores")
    for column in ("Ray nodes", "drivers + prefilter actors", "frames/s", "lost", "dup",
                   "pipeline CPU ms/frame", "Kafka CPU ms/frame"):
        table.add_column(column)
    for r in results["runs"]:
        table.add_row(str(r["ray_nodes"]), str(r["drivers"]), f"{r['frames_per_s']:.1f}", str(r["lost"]),
                      str(r["duplicates"]), f"{r['pipeline_cpu_ms_per_frame']:.1f}",
                      f"{r['kafka_cpu_ms_per_frame']:.1f}")
    console.print(table)
    console.print(f"wrote {args.json}")
    if args.markdown:
        write_block(args.markdown, BLOCK, markdown(results))
    return 0 if all(r["lost"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
