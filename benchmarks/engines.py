"""JUDO engine benchmark: requests/s and p50/p99 latency per replica at concurrency 1, 4 and 16.

Run: ``python benchmarks/engines.py --json docs/engines_benchmark.json`` (on an otherwise idle machine).

Every engine answers the same suspect-frame requests (:func:`sample_requests`: rendered synthetic
frames with their reference, anomaly map, defect hint, the product's defect types and 0-2
questions) in the same run. One engine is one replica, measured in-process:

- a batching engine (``infer(list)``, e.g. the transformers engine) gets its batches as
  ``@serve.batch`` forms them in :class:`pipelines.serve_app.JudoReplica`: up to
  ``--max-batch-size`` requests, or what arrived ``--batch-wait-s`` after the first one;
- an engine with its own scheduler (an ``ainfer(request)`` coroutine, e.g. vLLM's async engine)
  gets each request as it comes, from ``concurrency`` asyncio clients;
- ``transformers-serve`` is the transformers engine in one real Ray Serve replica
  (:class:`pipelines.serve_app.JudoReplica`, its own ``@serve.batch``), asked through its handle.

``concurrency`` clients each send their next request when the previous one is answered (closed
loop), so at concurrency 1 there is never more than one request to batch.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import queue
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray import serve  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cluster.ray_runtime import start_ray, stop_ray  # noqa: E402
from cluster.telemetry import percentile  # noqa: E402
from pipelines.commands import SHIPPED_CHECKPOINT  # noqa: E402
from pipelines.config import JudoSection  # noqa: E402
from pipelines.engines import (JudoEngine, TransformersEngine, VllmEngine,  # noqa: E402
                               model_version_of)
from pipelines.judo_request import JudoFrameRequest  # noqa: E402
from pipelines.serve_app import JudoReplica, deployment_options  # noqa: E402

from benchmarks.judo_requests import sample_requests  # noqa: E402  (also imported from here by others)


class EngineUnavailable(RuntimeError):
    """The engine cannot run on this machine (e.g. vLLM not installed); the run records why."""


# --- engines --------------------------------------------------------------------------------------

def build_transformers(judo: JudoSection) -> JudoEngine:
    return TransformersEngine(judo.checkpoint, device=judo.device, max_new_tokens=judo.max_new_tokens,
                              torch_threads=judo.torch_threads)


#: Further ``AsyncEngineArgs`` for the vLLM engine (``--vllm-args``, e.g. scheduler settings), set by main.
VLLM_ARGS: dict = {}


def build_vllm(judo: JudoSection) -> JudoEngine:
    """vLLM's async engine (:class:`pipelines.engines.VllmEngine`), measured per request through its
    ``ainfer(request)`` coroutine; only where vLLM is installed (the engine environment, docs/vllm.md)."""
    if importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(f"vLLM is not installed in {sys.executable}; run this benchmark with the engine "
                                "environment's Python (make vllm-env; docs/vllm.md)")
    return VllmEngine(judo.checkpoint, device=judo.device, max_new_tokens=judo.max_new_tokens,
                      **{"max_num_seqs": max(judo.max_batch_size, 16), **judo.vllm.engine_options(), **VLLM_ARGS})


class ServeReplicaEngine:
    """One JUDO replica on a local Ray Serve, asked through its handle: batches are formed by the
    deployment's own ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s`` from ``judo``)."""

    def __init__(self, judo: JudoSection):
        self.started_ray = start_ray(num_cpus=max(int(judo.num_cpus) + 1, 2))
        fixed = judo.model_copy(update={"replicas": judo.replicas.model_copy(update={"min": 1, "max": 1,
                                                                                      "initial": 1})})
        app = JudoReplica.options(**deployment_options(fixed)).bind(fixed.model_dump(mode="json"),
                                                                  "judo-bench", None, None)
        self.handle = serve.run(app, name="judo-bench", route_prefix=None)
        self.model_version = model_version_of(Path(judo.checkpoint))

    async def ainfer(self, request: JudoFrameRequest):
        return await self.handle.infer.remote(request)

    def close(self) -> None:
        serve.delete("judo-bench")
        if self.started_ray:
            stop_ray()


def build_serve(judo: JudoSection) -> JudoEngine:
    if judo.engine != "transformers":
        raise EngineUnavailable("transformers-serve measures the transformers engine only")
    return ServeReplicaEngine(judo)


ENGINES = {"transformers": build_transformers, "vllm": build_vllm, "transformers-serve": build_serve}


# --- measurement ----------------------------------------------------------------------------------

class ServeStyleBatcher:
    """Forms batches as ``@serve.batch`` does: up to ``max_batch_size`` requests, or what arrived
    ``wait_s`` after the batch's first request, then one ``engine.infer`` call (one at a time)."""

    def __init__(self, engine: JudoEngine, max_batch_size: int, wait_s: float):
        self.engine, self.max_batch_size, self.wait_s = engine, max_batch_size, wait_s
        self.pending: queue.Queue = queue.Queue()
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def submit(self, request: JudoFrameRequest) -> Future:
        future: Future = Future()
        self.pending.put((request, future))
        return future

    def close(self) -> None:
        self.pending.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while (first := self.pending.get()) is not None:
            batch, deadline = [first], time.perf_counter() + self.wait_s
            closing = False
            while len(batch) < self.max_batch_size:
                try:
                    item = self.pending.get(timeout=max(deadline - time.perf_counter(), 0.0))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            self.batch_sizes.append(len(batch))
            try:
                results = self.engine.infer([request for request, _ in batch])
                for (_, future), result in zip(batch, results):
                    future.set_result(result)
            except Exception as exc:  # every waiting client sees the engine's error
                for _, future in batch:
                    future.set_exception(exc)
            if closing:
                return


def measure(engine: JudoEngine, requests: list[JudoFrameRequest], concurrency: int, max_batch_size: int,
            wait_s: float) -> dict:
    """One closed-loop run of ``len(requests)`` requests from ``concurrency`` client threads."""
    if hasattr(engine, "ainfer"):
        return asyncio.run(measure_async(engine, requests, concurrency))
    batcher = ServeStyleBatcher(engine, max_batch_size, wait_s)
    latencies: list[float] = []
    cursor = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            sent = time.perf_counter()
            batcher.submit(requests[index]).result()
            with lock:
                latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    clients = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    elapsed = time.perf_counter() - started
    batcher.close()
    return summary(latencies, elapsed, concurrency, batcher.batch_sizes)


async def measure_async(engine, requests: list[JudoFrameRequest], concurrency: int) -> dict:
    """:func:`measure` for an engine with its own scheduler: each request sent alone to ``ainfer``."""
    latencies: list[float] = []
    cursor = iter(range(len(requests)))

    async def client() -> None:
        while (index := next(cursor, None)) is not None:
            sent = time.perf_counter()
            await engine.ainfer(requests[index])
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summary(latencies, time.perf_counter() - started, concurrency, None)


def summary(latencies: list[float], elapsed: float, concurrency: int, batch_sizes: list[int] | None) -> dict:
    latencies_ms = [s * 1000 for s in latencies]
    return {
        "concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 3),
        "p50_ms": round(percentile(latencies_ms, 50), 1), "p99_ms": round(percentile(latencies_ms, 99), 1),
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
    }


def run_engine(name: str, judo: JudoSection, requests: list[JudoFrameRequest], levels: list[int],
               max_batch_size: int, wait_s: float, warmup: int) -> dict:
    """Every concurrency level for one engine, after ``warmup`` unmeasured requests."""
    try:
        loaded = time.perf_counter()
        engine = ENGINES[name](judo)
    except (EngineUnavailable, ImportError) as exc:
        return {"skipped": str(exc)}
    load_s = time.perf_counter() - loaded
    try:
        if warmup:
            measure(engine, requests[:warmup], 1, max_batch_size, wait_s)
        rows = {str(c): measure(engine, requests, c, max_batch_size, wait_s) for c in levels}
    finally:
        if hasattr(engine, "close"):
            engine.close()
    base = rows[str(levels[0])]["requests_per_s"]
    return {"model_version": engine.model_version, "load_s": round(load_s, 1), "levels": rows,
            "speedup_vs_first_level": {c: round(r["requests_per_s"] / base, 2) for c, r in rows.items()}}


def print_table(results: dict) -> None:
    table = Table(title=f"JUDO engines, per replica ({results['settings']['requests']} requests per level)")
    for column in ("engine", "concurrency", "requests/s", "p50 ms", "p99 ms", "mean batch", "× conc. 1"):
        table.add_column(column, justify="right")
    skipped = []
    for name, engine in results["engines"].items():
        if "skipped" in engine:
            table.add_row(name, "-", "skipped", "", "", "", "")
            skipped.append(f"{name} skipped: {engine['skipped']}")
            continue
        for level, row in engine["levels"].items():
            table.add_row(name, level, f"{row['requests_per_s']:.2f}", f"{row['p50_ms']:.0f}",
                          f"{row['p99_ms']:.0f}", str(row["mean_batch_size"] or "-"),
                          f"{engine['speedup_vs_first_level'][level]:.2f}")
    console = Console(width=max(Console().width, 100))
    console.print(table)
    for line in skipped:
        console.print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers,vllm", help="comma-separated: " + ", ".join(ENGINES))
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16, help="@serve.batch's max_batch_size")
    parser.add_argument("--batch-wait-s", type=float, default=0.05, help="@serve.batch's batch_wait_timeout_s")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU (benchmarks/gpu_check.sh)")
    parser.add_argument("--vllm-args", type=json.loads, default={},
                        help='JSON of further vLLM engine arguments, e.g. \'{"max_num_batched_tokens": 8192}\'')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("docs/engines_benchmark.json"))
    args = parser.parse_args()
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        parser.error(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    if any(c < 1 for c in levels) or args.requests < 1 or args.max_batch_size < 1:
        parser.error("concurrency levels, --requests and --max-batch-size must be >= 1")
    VLLM_ARGS.update(args.vllm_args)
    judo = JudoSection(checkpoint=args.checkpoint, max_new_tokens=args.max_new_tokens, device=args.device,
                       max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s,
                       torch_threads=args.torch_threads)
    requests = sample_requests(args.requests, args.seed)
    results = {
        "settings": {"requests": args.requests, "concurrency": levels, "max_batch_size": args.max_batch_size,
                     "batch_wait_s": args.batch_wait_s, "max_new_tokens": args.max_new_tokens,
                     "torch_threads": args.torch_threads, "checkpoint": str(args.checkpoint), "seed": args.seed,
                     "device": args.device, "vllm_args": args.vllm_args,
                     "cpus": os.cpu_count(), "machine": platform.platform(),
                     "target": "issue #25: requests/s at concurrency 16 >= 2 x concurrency 1, per replica"},
        "engines": {name: run_engine(name, judo, requests, levels, args.max_batch_size, args.batch_wait_s,
                                     args.warmup) for name in names},
    }
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
