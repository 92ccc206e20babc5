"""Faults during streaming runs (issue 7): real Kafka, real Ray, the shipped JUDO on Ray Serve.

One fault per run of 500 frames (see :mod:`tooling.faults`; ``benchmarks/faults.py`` streams 1,000 for
docs/faults.md): brokers stopped or killed, actors and replicas killed, a replica stalled, the whole
pipeline restarted. After each, every produced frame id has a verdict, and the fault demonstrably
happened and was handled.
"""

from __future__ import annotations

import pytest

from pipelines.commands import SHIPPED_CHECKPOINT
from tooling.faults.bench import FaultBench
from tooling.faults.catalogue import FaultSettings

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(), reason="no shipped JUDO checkpoint"),
]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    with FaultBench(tmp_path_factory.mktemp("faults"), FaultSettings(frames=500)) as bench:
        yield bench


def assert_nothing_lost(report, bench):
    assert report.frames_in == bench.settings.frames
    assert report.lost == 0, f"{report.fault}: no verdict for {report.missing}"
    assert report.unexpected == [], "the verdict topic holds exactly the produced frame ids"
    assert report.verdicts_out == report.frames_in
    assert report.dead_letters == 0, report.dead_letter_reasons


def test_baseline_run_has_no_losses_and_no_duplicates(bench):
    report = bench.run("none")
    assert_nothing_lost(report, bench)
    assert report.duplicates == 0
    assert report.details["driver_restarts"] == 0


def test_single_broker_stopped_and_restarted(bench):
    report = bench.run("broker_restart")
    assert_nothing_lost(report, bench)
    assert report.details["broker_down_s"] >= bench.settings.outage_s
    assert bench.kafka.running_brokers() == [1]


def test_one_of_three_brokers_killed(bench):
    report = bench.run("broker_killed")
    assert_nothing_lost(report, bench)
    assert report.details["running_brokers"] == [1, 3]


def test_killed_driver_is_replaced_and_resumes_from_committed_offsets(bench):
    report = bench.run("driver_killed")
    assert_nothing_lost(report, bench)
    assert report.details["driver_restarts"] >= 1


def test_killed_prefilter_actor_is_restarted(bench):
    report = bench.run("prefilter_killed")
    assert_nothing_lost(report, bench)
    assert report.details["prefilter_alive_after"] is True


def test_killed_judo_replica_is_replaced(bench):
    report = bench.run("judo_replica_killed")
    assert_nothing_lost(report, bench)
    assert report.details["killed"] not in report.details["replicas_after"]
    assert len(report.details["replicas_after"]) == 2


def test_stalled_judo_replica_times_out_and_frames_still_get_verdicts(bench):
    report = bench.run("judo_replica_stalled")
    assert_nothing_lost(report, bench)
    assert report.details["judo_retries"] >= 1
    assert report.judo_verdicts + report.fallback_verdicts > 0


def test_pipeline_restarted_resumes_from_committed_offsets(bench):
    report = bench.run("pipeline_restarted")
    assert_nothing_lost(report, bench)
    assert report.details["pipeline_down_s"] >= bench.settings.outage_s
    # a planned restart is not a failure: every driver drains and commits before any leaves the
    # group, and a rebalance waits for the frames in flight, so nothing is processed twice
    assert report.duplicates == 0
