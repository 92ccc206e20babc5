"""Autoscaling benchmark: a load ramp through the real pipeline and JUDO replicas following it.

Run: ``python benchmarks/autoscale.py --json docs/autoscale.json --picture docs/autoscale.png``

Simulated cameras publish into Kafka in phases (``--phases name:seconds:fps:defect_rate,...``; by
default low → high → low: the camera rate and the share of defective, hence routed, frames step up and
back down). The pipeline (Kafka → prefilter → JUDO on Ray Serve → sink) runs with an
``autoscaling_config`` from ``judo.replicas``; the JUDO replica count is sampled from
``serve.status()`` every second, as the dashboard's replica chart does. Reported: replicas over time;
time from the load step to Serve starting a replica (decision) and to the first replica above min
running (scale-up), and from the step down to the return to min (scale-down); JUDO-path and pass-path
latency p50/p99 per phase (by the phase a frame was published in); lost frames (no verdict),
duplicates and JUDO fallbacks. The picture shows offered load, replicas and latency over time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cluster.kafka_broker import free_port  # noqa: E402
from cluster.local_kafka import LocalKafka  # noqa: E402
from cluster.telemetry import percentile  # noqa: E402
from judo_model.prefilter.features import BackboneConfig, PreprocessConfig  # noqa: E402
from judo_model.prefilter.patchcore import PatchCoreConfig  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.config import PipelineConfig  # noqa: E402
from pipelines.frame_path import JUDO_UNAVAILABLE  # noqa: E402
from pipelines.metrics_http import local_token_file  # noqa: E402
from pipelines.runner import Pipeline  # noqa: E402
from pipelines.serve_app import APP_NAME, DEPLOYMENT_NAME  # noqa: E402
from tooling.dashboard.ray_probe import serve_replicas  # noqa: E402
from tooling.demo import prepare_banks  # noqa: E402
from tooling.faults.bench import CAMERAS, PRODUCTS, wait_for_group  # noqa: E402
from tooling.faults.watch import VerdictWatcher  # noqa: E402
from tooling.simulator import CameraSimulator, SimulatedFrame, publish_frames  # noqa: E402

DEFAULT_PHASES = "low:40:2:0.05,high:60:5:0.5,low:90:2:0.05"


@dataclass
class Phase:
    """One step of the ramp: ``fps`` frames/s over all cameras for ``seconds``, ``defect_rate`` of them defective."""

    name: str
    seconds: float
    fps: float
    defect_rate: float
    started_at: float = 0.0
    ended_at: float = 0.0


def parse_phases(text: str) -> list[Phase]:
    phases = []
    for part in text.split(","):
        fields = part.split(":")
        try:
            name, seconds, fps, rate = fields[0], float(fields[1]), float(fields[2]), float(fields[3])
        except (IndexError, ValueError):
            raise SystemExit(f"--phases: {part!r} is not name:seconds:fps:defect_rate (e.g. high:60:5:0.5)") from None
        if len(fields) != 4 or seconds <= 0 or fps <= 0 or not 0 <= rate <= 1:
            raise SystemExit(f"--phases: {part!r} needs seconds > 0, fps > 0 and 0 <= defect_rate <= 1")
        phases.append(Phase(name, seconds, fps, rate))
    if len(phases) < 2:
        raise SystemExit("--phases: give at least two phases (a load step up and back down)")
    return phases


def bench_config(banks: dict, bootstrap: str, tag: str, args) -> PipelineConfig:
    """Two drivers and two prefilter actors as in the fault bench; JUDO autoscaled from ``args``."""
    return PipelineConfig.model_validate({
        "kafka": {"mode": "external", "settings": {"bootstrap_servers": bootstrap}},
        "topics": {"frames": f"{tag}.frames", "verdicts": f"{tag}.verdicts", "dead_letters": f"{tag}.dlq",
                   "feedback": f"{tag}.feedback", "partitions": 4},
        "lines": [{"id": line, "product": product, "cameras": [c.camera_id for c in CAMERAS if c.line_id == line]}
                  for line, product in (("line1", "bottle"), ("line2", "hex_nut"))],
        "products": {name: {"bank": str(path)} for name, path in banks.items()},
        "prefilter": {"actors": 2, "batch_size": 16, "threads_per_actor": 1},
        "ingest": {"actors": 2, "group_id": tag, "max_in_flight": 128, "max_poll_records": 64, "poll_timeout_ms": 100},
        "judo": {"checkpoint": str(args.checkpoint), "max_batch_size": args.max_batch_size, "max_new_tokens": 96,
                 "num_cpus": args.replica_cpus, "max_queued_requests": 256, "http": {"port": free_port()},
                 "replicas": {"min": args.min, "max": args.max, "target_ongoing_requests": args.target,
                              "upscale_delay_s": args.upscale_delay, "downscale_delay_s": args.downscale_delay,
                              "metrics_interval_s": args.metrics_interval, "look_back_period_s": args.look_back}},
        "telemetry": {"trace_file": None},
        "metrics": {"bearer_token_file": str(local_token_file())},
        "ray": {"num_cpus": args.ray_cpus},
    })


class ReplicaSampler:
    """Samples the JUDO deployment's running replicas from ``serve.status()`` on its own thread."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (time, running)
        self.starting: list[tuple[float, int]] = []  # (time, replicas Serve is starting: decided, not yet up)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                states = serve_replicas().get(f"{APP_NAME}/{DEPLOYMENT_NAME}", {}).get("replicas", {})
                now = time.time()
                self.samples.append((now, states.get("RUNNING", 0)))
                self.starting.append((now, states.get("STARTING", 0)))
            except Exception:  # a status call that failed is a gap in the series, not a zero
                self.errors += 1
            self._stop.wait(self.interval_s)

    def start(self) -> "ReplicaSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def last(self) -> int | None:
        return self.samples[-1][1] if self.samples else None


def scale_times(samples: list[tuple[float, int]], starting: list[tuple[float, int]], step_up: float,
                step_down: float, minimum: int) -> dict:
    """Seconds from the load step to Serve's first extra replica (``scale_decision_s``: one starting), to the
    first running above ``minimum`` (``scale_up_s``), to the peak, and from the step down to the sample from
    which the running count stays at ``minimum`` (None where it never happened)."""
    after_up = [(t, n) for t, n in samples if t >= step_up]
    up = next((t - step_up for t, n in after_up if n > minimum), None)
    decided = next((t - step_up for (t, n), (_, k) in zip(samples, starting) if t >= step_up and (k or n > minimum)),
                   None)
    peak = max((n for _, n in after_up), default=0)
    to_peak = next((t - step_up for t, n in after_up if n == peak), None) if peak > minimum else None
    down = None
    for t, n in samples:
        if t >= step_down and n == minimum and all(m == minimum for s, m in samples if s >= t):
            down = t - step_down
            break
    return {"scale_decision_s": decided, "scale_up_s": up, "time_to_peak_s": to_peak, "peak_replicas": peak,
            "scale_down_s": down}


def phase_stats(phases: list[Phase], frames_by_phase: dict[str, list[str]], verdicts: dict) -> list[dict]:
    rows = []
    for i, phase in enumerate(phases):
        got = [verdicts[f] for f in frames_by_phase[f"{i}"] if f in verdicts]
        judo = [v.latency_ms.get("total", 0.0) for v in got if v.stage == "judo"]
        passed = [v.latency_ms.get("total", 0.0) for v in got if v.stage == "prefilter"
                  and not v.model_version.endswith(JUDO_UNAVAILABLE)]
        rows.append({
            "phase": phase.name, "seconds": phase.seconds, "fps": phase.fps, "defect_rate": phase.defect_rate,
            "frames": len(frames_by_phase[f"{i}"]), "verdicts": len(got), "judo_verdicts": len(judo),
            "judo_requests_per_s": len(judo) / phase.seconds,
            "judo_fallbacks": sum(v.model_version.endswith(JUDO_UNAVAILABLE) for v in got),
            "judo_p50_ms": percentile(judo, 50), "judo_p99_ms": percentile(judo, 99),
            "pass_p50_ms": percentile(passed, 50), "pass_p99_ms": percentile(passed, 99),
        })
    return rows


def draw(path: Path, phases: list[Phase], samples, starting, judo_points, bounds: tuple[int, int],
         t0: float) -> None:
    """Offered load (frames/s and routed share), replicas and JUDO-path latency on one time axis."""
    fig, (load, reps, lat) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    xs, fps, routed = [], [], []
    for phase in phases:
        xs += [phase.started_at - t0, phase.ended_at - t0]
        fps += [phase.fps] * 2
        routed += [phase.fps * phase.defect_rate] * 2
    load.plot(xs, fps, label="camera frames/s offered")
    load.plot(xs, routed, label="defective frames/s offered (routed to JUDO)")
    if judo_points:
        done = sorted(t - t0 for t, _ in judo_points)
        edges = list(range(0, int(max(done)) + 6, 5))
        load.hist(done, bins=edges, weights=[1 / 5] * len(done), alpha=0.3, label="JUDO verdicts/s (5 s bins)")
    load.set_ylabel("frames/s")
    load.legend(fontsize=8, loc="upper right")
    if samples:
        reps.step([t - t0 for t, _ in samples], [n + k for (_, n), (_, k) in zip(samples, starting)], where="post",
                  linestyle="--", label="running + starting")
        reps.step([t - t0 for t, _ in samples], [n for _, n in samples], where="post", label="running replicas")
    for value, style in zip(bounds, (":", "--")):
        reps.axhline(value, linestyle=style, color="grey", linewidth=0.8)
    reps.set_ylabel("JUDO replicas")
    reps.set_ylim(0, bounds[1] + 0.5)
    reps.legend(fontsize=8, loc="upper right")
    if judo_points:
        lat.scatter([t - t0 for t, _ in judo_points], [ms for _, ms in judo_points], s=6, label="JUDO-path latency")
    lat.set_ylabel("ms (frame received → verdict)")
    lat.set_xlabel("seconds since the first phase started")
    lat.legend(fontsize=8, loc="upper right")
    for axis in (load, reps, lat):
        for phase in phases[1:]:
            axis.axvline(phase.started_at - t0, color="black", linewidth=0.5, alpha=0.4)
    fig.suptitle("JUDO autoscaling under a load ramp (Kafka → prefilter → JUDO on Ray Serve)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args, console: Console) -> dict:
    phases = parse_phases(args.phases)
    bank_config = PatchCoreConfig(preprocess=PreprocessConfig(size=args.size), backbone=BackboneConfig(threads=1),
                                  coreset_min=200)
    banks = prepare_banks(args.work / f"assets-{args.size}", PRODUCTS, images_per_category=40, size=args.size,
                          bank_config=bank_config, console=console)
    tag = f"autoscale-{uuid.uuid4().hex[:6]}"
    rendered: list[list[SimulatedFrame]] = []
    for i, phase in enumerate(phases):
        count = max(1, round(phase.seconds * phase.fps))
        sim = CameraSimulator(CAMERAS, defect_rate=phase.defect_rate, seed=11 + i, size=args.size,
                              run_id=f"{tag}-p{i}")
        rendered.append(list(sim.frames(count)))
    frames_by_phase = {f"{i}": [f.frame.frame_id for f in frames] for i, frames in enumerate(rendered)}
    expected = {fid for ids in frames_by_phase.values() for fid in ids}
    with LocalKafka(brokers=1) as kafka:
        config = bench_config(banks, kafka.bootstrap_servers, tag, args)
        pipeline = Pipeline(config, kafka.settings()).start()
        sampler = watcher = None
        try:
            wait_for_group(kafka.settings(), config.ingest.group_id, config.ingest.actors)
            sampler = ReplicaSampler().start()
            watcher = VerdictWatcher(kafka.settings(), config.topics.verdicts, config.topics.dead_letters).start()
            for phase, frames in zip(phases, rendered):
                phase.started_at = time.time()
                console.print(f"phase {phase.name}: {len(frames)} frames at {phase.fps} frames/s, "
                              f"{phase.defect_rate:.0%} defective (replicas now {sampler.last()})")
                publish_frames(kafka.settings(), config.topics.frames, frames, fps=phase.fps)
                phase.ended_at = time.time()
            watcher.wait_until(lambda w: expected <= w.first_seen.keys(), args.timeout)
            settle_until = time.time() + args.settle
            while time.time() < settle_until and sampler.last() != args.min:
                time.sleep(1)
            time.sleep(3)  # a few samples at the settled count
            stats = pipeline.stats()
        finally:
            if sampler is not None:
                sampler.stop()
            pipeline.stop()
            if watcher is not None:
                watcher.stop()
    peak_phase = max(range(len(phases)), key=lambda i: phases[i].fps * phases[i].defect_rate)
    step_up = phases[peak_phase].started_at
    step_down = phases[peak_phase].ended_at
    verdicts = watcher.verdicts
    t0 = phases[0].started_at
    judo_points = [(watcher.first_seen[fid], v.latency_ms.get("total", 0.0)) for fid, v in verdicts.items()
                   if v.stage == "judo" and fid in watcher.first_seen]
    draw(args.picture, phases, sampler.samples, sampler.starting, judo_points, (args.min, args.max), t0)
    return {
        "config": {"phases": [asdict(p) for p in phases], "replicas": config.judo.replicas.model_dump(),
                   "replica_num_cpus": config.judo.num_cpus, "max_batch_size": config.judo.max_batch_size,
                   "ray_num_cpus": args.ray_cpus, "image_size": args.size, "cameras": len(CAMERAS)},
        "frames_in": len(expected), "verdicts_out": len(expected & verdicts.keys()),
        "lost": len(expected - verdicts.keys()), "duplicates": watcher.duplicates,
        "dead_letters": len(watcher.dead_letters),
        "judo_fallbacks": sum(v.model_version.endswith(JUDO_UNAVAILABLE) for v in verdicts.values()),
        "judo_retries": stats.get("judo_retries", 0),
        "load_step_phase": phases[peak_phase].name,
        **scale_times(sampler.samples, sampler.starting, step_up, step_down, args.min),
        "phases": phase_stats(phases, frames_by_phase, verdicts),
        "replicas_over_time": [[round(t - t0, 2), n, k] for (t, n), (_, k) in zip(sampler.samples, sampler.starting)],
        "replicas_over_time_columns": ["seconds", "running", "starting"],
        "status_errors": sampler.errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("docs/autoscale.json"))
    parser.add_argument("--picture", type=Path, default=Path("docs/autoscale.png"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-autoscale"))
    parser.add_argument("--phases", default=DEFAULT_PHASES,
                        help="name:seconds:fps:defect_rate,... (default %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--size", type=int, default=128, help="rendered frame side")
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.5,
                        help="target_ongoing_requests per replica (0.5: scale out once a replica is busy half "
                             "the time; with 1 a replica that just keeps up never asks for help)")
    parser.add_argument("--upscale-delay", type=float, default=3.0)
    parser.add_argument("--downscale-delay", type=float, default=15.0)
    parser.add_argument("--metrics-interval", type=float, default=1.0)
    parser.add_argument("--look-back", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=2)
    parser.add_argument("--replica-cpus", type=float, default=0.5, help="num_cpus per JUDO replica")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the last verdicts")
    parser.add_argument("--settle", type=float, default=180, help="seconds to wait for the return to min")
    args = parser.parse_args()
    if args.max * args.replica_cpus > args.ray_cpus:
        parser.error(f"--max {args.max} replicas x --replica-cpus {args.replica_cpus} do not fit in --ray-cpus "
                     f"{args.ray_cpus}")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    console = Console()
    result = run(args, console)

    table = Table(title=f"autoscaling: JUDO replicas {args.min}..{args.max}, target {args.target} ongoing/replica")
    for column in ("phase", "s", "frames/s", "defective", "frames", "JUDO verdicts", "JUDO req/s",
                   "JUDO p50/p99 ms", "pass p50/p99 ms", "fallbacks"):
        table.add_column(column)
    for r in result["phases"]:
        table.add_row(r["phase"], f"{r['seconds']:.0f}", f"{r['fps']:.1f}", f"{r['defect_rate']:.0%}", str(r["frames"]),
                      str(r["judo_verdicts"]), f"{r['judo_requests_per_s']:.2f}",
                      f"{r['judo_p50_ms']:.0f}/{r['judo_p99_ms']:.0f}",
                      f"{r['pass_p50_ms']:.0f}/{r['pass_p99_ms']:.0f}",
                      str(r["judo_fallbacks"]))
    console.print(table)

    def secs(value) -> str:
        return "never" if value is None else f"{value:.1f} s"

    console.print(f"load step at phase {result['load_step_phase']!r}: Serve starts a replica after "
                  f"{secs(result['scale_decision_s'])}, first replica above min running after "
                  f"{secs(result['scale_up_s'])}, peak {result['peak_replicas']} after "
                  f"{secs(result['time_to_peak_s'])}; "
                  f"back to min {secs(result['scale_down_s'])} after the step down")
    console.print(f"frames {result['frames_in']}, verdicts {result['verdicts_out']}, lost {result['lost']}, "
                  f"duplicates {result['duplicates']}, dead letters {result['dead_letters']}, "
                  f"JUDO fallbacks {result['judo_fallbacks']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.json} and {args.picture}")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
