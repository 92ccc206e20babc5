"""The arithmetic behind fault handling, without a cluster: recovery time and driver restart backoff."""

from __future__ import annotations

import pytest

from pipelines.faults import recovery_metrics


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
    from pipelines.runner import RestartBackoff

    backoff = RestartBackoff(initial_s=1.0, max_s=8.0, healthy_s=60.0)
    assert backoff.delay_after(ran_for_s=600.0) == 0.0, "a driver killed after a healthy run is replaced at once"
    assert [backoff.delay_after(ran_for_s=2.0) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.delay_after(ran_for_s=61.0) == 0.0, "a healthy run resets the backoff"
    assert backoff.delay_after(ran_for_s=0.5) == 1.0
