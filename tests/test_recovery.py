"""Fault handling logic: recovery-time arithmetic, driver restart backoff, and the supervisor's join watchdog."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import ray

from cluster.ray_runtime import start_ray, stop_ray
from pipelines.config import PipelineConfig
from pipelines.runner import Pipeline, PipelineHandles, RestartBackoff
from tooling.faults.watch import recovery_metrics


def test_recovery_metrics_on_a_stall_then_catch_up():
    # 10 verdicts/s for 10 s, nothing for 5 s after the fault at t=10, then 20/s until caught up
    before = [i / 10 for i in range(100)]
    after = [15 + i / 20 for i in range(200)]
    rate, gap, recovery = recovery_metrics(before + after, fault_at=10.0, frames=300, slack_s=2.0)
    assert rate == pytest.approx(10.0, rel=0.02)
    assert gap == pytest.approx(5.0, abs=0.01)
    # on schedule for good once 100 + 20 (t - 15) >= 100 + 10 (t - 10) - 20, at t = 17.9 on the grid
    assert recovery == pytest.approx(7.9, abs=0.06)


def test_driver_restarts_back_off_only_when_a_driver_keeps_dying():
    backoff = RestartBackoff(initial_s=1.0, max_s=8.0, healthy_s=60.0)
    assert backoff.delay_after(ran_for_s=600.0) == 0.0, "a driver killed after a healthy run is replaced at once"
    assert [backoff.delay_after(ran_for_s=2.0) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.delay_after(ran_for_s=61.0) == 0.0, "a healthy run resets the backoff"
    assert backoff.delay_after(ran_for_s=0.5) == 1.0


def test_a_driver_stuck_outside_its_group_is_replaced(tmp_path):
    """The supervisor, on real Ray actors: a driver that stays outside its consumer group (alive,
    polling, "rebalancing" for good, as kafka-python 3.0.12 was seen to after a broker restart)
    is killed and replaced once ``join_timeout_s`` has passed; a driver in the group is left alone."""
    @ray.remote(num_cpus=0)
    class PollingDriver:
        """Polls for an hour, in its group or stuck "rebalancing" outside it."""

        def __init__(self, in_group: bool = True):
            self.in_group = in_group

        async def run(self):
            await asyncio.sleep(3600)

        def membership(self):
            return {"in_group": self.in_group, "phase": "polling",
                    "group_state": "STABLE" if self.in_group else "REBALANCING", "generation": 3 if self.in_group else 2}

    owns = start_ray(num_cpus=2)
    try:
        config = PipelineConfig.model_validate({
            "lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
            "products": {"bottle": {"bank": str(tmp_path)}}, "judo": {"checkpoint": str(tmp_path)},
            "ingest": {"actors": 2, "join_timeout_s": 5}})
        pipeline = Pipeline(config, kafka=None)
        hung, joined = PollingDriver.remote(in_group=False), PollingDriver.remote()
        pipeline.handles = PipelineHandles([], None, None, [hung, joined], [hung.run.remote(), joined.run.remote()])
        pipeline._driver_cls, pipeline._driver_args = PollingDriver, ()
        supervisor = threading.Thread(target=pipeline._supervise, daemon=True)
        supervisor.start()
        deadline = time.monotonic() + 60
        while pipeline.driver_restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(6)  # more than another join timeout: the replacement and the joined driver stay
        pipeline._stopping.set()
        supervisor.join(timeout=30)
        assert pipeline.driver_restarts == 1
        assert pipeline.handles.drivers[1] is joined
        assert ray.get(pipeline.handles.drivers[0].membership.remote())["in_group"] is True
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(hung.membership.remote(), timeout=30)
    finally:
        if owns:
            stop_ray()
