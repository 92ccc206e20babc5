"""SIGTERM stops ``judo run`` the way Ctrl-C does, and its /metrics count what reached Kafka.

Real Kafka, real Ray, the shipped JUDO checkpoint, ``judo run`` as its own process (as systemd,
Kubernetes or ``ray job stop`` see it). SIGTERM arrives while frames are in flight; the process must
drain, commit and exit 0, and a second run must finish the rest: every frame exactly one verdict.
The second run's Prometheus counters are scraped and compared with the verdicts it wrote.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from kafka import TopicPartition

from cluster.records import verdict_from_record
from pipelines.commands import SHIPPED_CHECKPOINT, stop_on_sigterm
from pipelines.config import MetricsSection
from tests.pipeline_support import committed_and_end_offsets, pipeline_test_config
from tests.test_metrics import scrape
from tooling.simulator import CameraSimulator, CameraSpec, publish_frames


REPO = Path(__file__).resolve().parents[1]
FIRST, SECOND = 12, 6  # frames before the SIGTERM, frames published while the pipeline is down
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JudoRun:
    """``python -m pipelines.cli run --config FILE`` in its own session, output in a log file."""

    def __init__(self, config_file: Path, log_file: Path):
        self.log_file = log_file
        self.process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--config", str(config_file)],
                                        cwd=REPO, stdout=open(log_file, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_running(self) -> None:
        """Until it prints that it runs (after the SIGTERM handler is installed)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while "pipeline running" not in self.log_file.read_text():
            assert self.process.poll() is None, f"judo run exited on start:\n{self.log_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"judo run did not start:\n{self.log_file.read_text()[-3000:]}"
            time.sleep(0.5)

    def terminate(self, timeout_s: float = 240) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def read_verdicts(settings, topic: str, until=None, timeout_s: float = 300.0) -> list:
    """Every verdict on ``topic`` up to its current end (or, with ``until``, until ``until(verdicts)``)."""
    consumer = settings.consumer(group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    verdicts, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=100).values():
                verdicts += [verdict_from_record(r.key, r.value, r.headers) for r in batch]
            if until is not None:
                if until(verdicts):
                    break
            elif all(consumer.position(tp) >= end for tp, end in consumer.end_offsets(partitions).items()):
                break
    finally:
        consumer.close()
    return verdicts


def test_sigterm_sets_the_stop_event_and_a_second_one_only_warns(caplog):
    """The handler ``judo run`` installs once started: SIGTERM asks for the same stop as Ctrl-C."""
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5), "SIGTERM set the stop event (and did not end the process)"
        with caplog.at_level(logging.WARNING):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs in the main thread between bytecodes
        assert "still draining" in caplog.text
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(), reason="no shipped JUDO checkpoint")
def test_sigterm_drains_and_commits_and_a_restart_finishes_the_rest(kafka, pipeline_banks, tmp_path):
    prefix = f"sigterm-{uuid.uuid4().hex[:6]}"
    settings = kafka.settings()
    config = pipeline_test_config(pipeline_banks, SHIPPED_CHECKPOINT, settings, tmp_path / "traces.jsonl", prefix,
                                  ingest={"group_id": f"{prefix}-group"})
    port = free_port()
    token_file = config.metrics.bearer_token_file  # the demo config's generated token: /metrics never serves without
    config = config.model_copy(update={"metrics": MetricsSection(port=port, bearer_token_file=token_file)})
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    topics = config.topics
    cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
    simulator = CameraSimulator(cameras, defect_rate=0.3, seed=5, run_id=prefix)
    frames = list(simulator.frames(FIRST + SECOND))
    assert any(item.is_defective for item in frames[:FIRST]), "frames routed to JUDO keep the stream busy"

    first = JudoRun(config_file, tmp_path / "run1.log")
    try:
        first.wait_running()
        publish_frames(settings, topics.frames, frames[:FIRST])
        seen_before_sigterm = read_verdicts(settings, topics.verdicts, until=len)
        rc = first.terminate()
    finally:
        first.kill()
    log = (tmp_path / "run1.log").read_text()
    assert rc == 0, log[-3000:]
    assert "SIGTERM: draining" in log
    assert len(seen_before_sigterm) < FIRST, "SIGTERM must arrive mid-stream"

    after_first = read_verdicts(settings, topics.verdicts)
    ids_first = Counter(v.frame_id for v in after_first)
    assert max(ids_first.values()) == 1, "no duplicate verdicts"
    committed, _ = committed_and_end_offsets(settings, f"{prefix}-group", topics.frames)
    assert sum(max(c, 0) for c in committed.values()) == len(after_first), \
        "every frame with a verdict is committed, and no frame without one"

    publish_frames(settings, topics.frames, frames[FIRST:])
    second = JudoRun(config_file, tmp_path / "run2.log")
    expected = {item.frame.frame_id for item in frames}
    try:
        second.wait_running()
        final = read_verdicts(settings, topics.verdicts, until=lambda vs: expected <= {v.frame_id for v in vs})
        counts = Counter(v.frame_id for v in final)
        assert set(counts) == expected, f"lost: {sorted(expected - set(counts))}"
        assert max(counts.values()) == 1, f"duplicates: {[f for f, n in counts.items() if n > 1]}"

        # the second run's counters match the verdicts it wrote, once every frame is committed
        written = [v for v in final if v.frame_id not in ids_first]
        by_series = Counter((v.line_id, v.product, v.stage) for v in written)
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            samples = scrape(url, token_file.read_text().strip())
            verdict_samples = {tuple(dict(labels)[k] for k in ("line", "product", "stage")): value
                               for (name, labels), value in samples.items() if name == "judo_verdicts_total"}
            lag = sum(value for (name, _), value in samples.items() if name == "judo_consumer_lag_records")
            if (verdict_samples == by_series and lag == 0) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert verdict_samples == by_series
        frames_by_line = Counter((v.line_id, v.product) for v in written)
        assert {tuple(dict(labels)[k] for k in ("line", "product")): value
                for (name, labels), value in samples.items() if name == "judo_frames_total"} == frames_by_line
        assert lag == 0 and samples[("judo_frames_in_flight", ())] == 0
        assert samples[("judo_replicas", (("state", "RUNNING"),))] == 1
        assert samples[("judo_frame_latency_seconds_count", (("path", "pass"),))] == \
            sum(1 for v in written if v.stage == "prefilter" and not v.is_anomalous)
        assert second.terminate() == 0
    finally:
        second.kill()
