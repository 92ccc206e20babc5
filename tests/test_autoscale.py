"""Autoscaling that acts: the JUDO deployment on real Ray Serve, with the shipped model, goes from its
minimum to more replicas under a burst of suspect frames and back to the minimum after it.

The replica count is read the way the dashboard reads it (:func:`tooling.dashboard.ray_probe.serve_replicas`,
from ``serve.status()``), so the dashboard's replica chart shows what this test sees.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
from ray import serve

from cluster.kafka_broker import free_port
from cluster.ray_runtime import start_ray, stop_ray
from judo_model.data.stream import FrameStream
from judo_model.imaging import encode_png
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.config import ConfigError, parse_config
from pipelines.judo_request import JudoFrameRequest, SuspectFrame
from pipelines.serve_app import APP_NAME, DEPLOYMENT_NAME, build_judo_deployment, deployment_options
from tooling.dashboard.ray_probe import serve_replicas

#: Requests kept in flight during the burst: well above min_replicas x target_ongoing_requests.
CONCURRENCY = 8
#: How long the burst may last at most while waiting for the scale-up: a failure bound, not a speed target
#: (a new replica imports torch and loads the model; on two busy cores that took over 100 s).
SCALE_UP_BOUND_S = 240.0
SCALE_DOWN_BOUND_S = 90.0


def autoscaled_config(bank_dir, **replicas):
    return parse_config({
        "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
        "products": {"bottle": {"bank": str(bank_dir)}},
        "judo": {"checkpoint": str(SHIPPED_CHECKPOINT), "max_new_tokens": 32, "max_batch_size": 1,
                 "num_cpus": 0.5, "replicas": replicas},
        "telemetry": {"trace_file": None},
    })


FAST = dict(min=1, max=3, target_ongoing_requests=1, upscale_delay_s=1, downscale_delay_s=3,
            metrics_interval_s=0.5, look_back_period_s=2)


def test_the_replicas_section_becomes_serves_autoscaling_config(tmp_path):
    options = deployment_options(autoscaled_config(tmp_path, **FAST).judo)
    assert options["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 3, "initial_replicas": 1, "target_ongoing_requests": 1,
        "upscale_delay_s": 1, "downscale_delay_s": 3, "metrics_interval_s": 0.5, "look_back_period_s": 2}
    assert options["ray_actor_options"]["num_cpus"] == 0.5
    defaults = deployment_options(autoscaled_config(tmp_path).judo)["autoscaling_config"]
    assert "metrics_interval_s" not in defaults and "look_back_period_s" not in defaults  # Serve's own defaults
    with pytest.raises(ConfigError, match="look_back_period_s must be > metrics_interval_s"):
        autoscaled_config(tmp_path, metrics_interval_s=5, look_back_period_s=5)
    with pytest.raises(ConfigError, match="initial must be within min..max"):
        autoscaled_config(tmp_path, min=1, max=2, initial=3)


def suspect_frames(folder, count: int) -> list[SuspectFrame]:
    """Suspect frames as the frame path sends them: pixels, the prefilter's evidence, a reference file."""
    reference = folder / "reference.png"
    reference.write_bytes(encode_png(FrameStream("l1", "c1", "bottle", defect_rate=0.0, size=128).frame(0).image))
    stream = FrameStream("l1", "c1", "bottle", defect_rate=1.0, seed=3, size=128)
    frames = []
    for i in range(count):
        rendered = stream.frame(i % 8)
        amap = rendered.mask.astype(np.float32) * 4.0
        request = JudoFrameRequest(
            frame_id=f"burst-{i:04d}", camera_id="c1", line_id="l1", product="bottle", captured_at=None,
            query=rendered.image, references=[], anomaly_score=4.0, threshold=2.0, anomaly_map=amap,
            defect_hint=rendered.defect_type)
        frames.append(SuspectFrame(request, [str(reference)]))
    return frames


def replica_states() -> dict[str, int]:
    """The JUDO deployment's replicas by state (``RUNNING``, ``STARTING``, ...), as the dashboard reads them."""
    return serve_replicas().get(f"{APP_NAME}/{DEPLOYMENT_NAME}", {}).get("replicas", {})


class Burst:
    """``CONCURRENCY`` client threads, each sending one suspect frame at a time until told to stop."""

    def __init__(self, handle, frames: list[SuspectFrame]):
        # ``handle.infer`` initializes the handle's router on first use: done here, once. Threads racing to
        # do it each got a router of their own under the same handle id, and the controller, which keeps
        # the latest load report per handle id, saw one thread's requests instead of all of them.
        self.infer, self.frames = handle.infer, frames
        self.sent: list[str] = []
        self.verdicts: dict[str, object] = {}
        self.errors: list[str] = []
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CONCURRENCY)]

    def _client(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                frame = self.frames[self._next % len(self.frames)]
                frame_id = f"{frame.request.frame_id}-{self._next}"
                self._next += 1
                self.sent.append(frame_id)
            call = SuspectFrame(dataclasses.replace(frame.request, frame_id=frame_id), frame.reference_paths)
            try:
                verdict = self.infer.remote(call).result(timeout_s=180)
                with self._lock:
                    self.verdicts[frame_id] = verdict
            except Exception as exc:  # counted as lost below, with the reason
                with self._lock:
                    self.errors.append(f"{frame_id}: {type(exc).__name__}: {exc}"[:300])

    def start(self) -> "Burst":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=240)


def wait_for_count(predicate, bound_s: float, samples: list) -> bool:
    """Sample the running replicas (and those Serve is starting) until ``predicate(running)`` holds."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        states = replica_states()
        samples.append((time.monotonic(), states.get("RUNNING", 0), states.get("STARTING", 0)))
        if predicate(states.get("RUNNING", 0)):
            return True
        time.sleep(0.5)
    return False


@pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field in AutoscalingConfig is deprecated")
def test_judo_replicas_scale_up_under_a_burst_and_back_down_after_it(tmp_path):
    config = autoscaled_config(tmp_path, **FAST)
    started = start_ray(num_cpus=2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()},
                    logging_config={"enable_access_log": False, "log_level": "WARNING"})
        handle = serve.run(build_judo_deployment(config), name=APP_NAME, route_prefix=None,
                           logging_config={"enable_access_log": False, "log_level": "WARNING"})
        samples: list[tuple[float, int, int]] = []  # (time, running, starting)
        assert wait_for_count(lambda n: n == 1, 60, samples), f"not at min before the burst: {samples[-3:]}"

        burst = Burst(handle, suspect_frames(tmp_path, 16)).start()
        try:
            scaled_up = wait_for_count(lambda n: n > 1, SCALE_UP_BOUND_S, samples)
            if scaled_up:  # a few more seconds of load, so requests also land on the new replicas
                wait_for_count(lambda n: n == 3, 5, samples)
        finally:
            burst.stop()
        decided = any(starting for _, _, starting in samples)
        assert scaled_up, (f"running replicas never rose above min=1 under {CONCURRENCY} concurrent requests "
                           f"(Serve {'did' if decided else 'did not'} start more): {samples[-5:]}")
        assert 1 < max(running for _, running, _ in samples) <= 3

        lost = set(burst.sent) - set(burst.verdicts)
        assert not lost and not burst.errors, f"{len(lost)} requests without a verdict: {burst.errors[:3]}"
        assert all(v.stage == "judo" and v.frame_id == fid for fid, v in burst.verdicts.items())
        assert len(burst.verdicts) >= CONCURRENCY

        assert wait_for_count(lambda n: n == 1, SCALE_DOWN_BOUND_S, samples), \
            f"replicas did not return to min=1 after the burst: {samples[-5:]}"
        t0 = samples[0][0]
        print("(seconds, running, starting):", [(round(t - t0, 1), n, k) for t, n, k in samples])
        # the deployment still answers at its minimum
        verdict = handle.infer.remote(suspect_frames(tmp_path, 1)[0]).result(timeout_s=120)
        assert verdict.stage == "judo"
    finally:
        serve.shutdown()
        if started:
            stop_ray()
