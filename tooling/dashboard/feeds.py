"""What keeps the dashboard's view current: Kafka (verdicts and frames), the trace file, Ray Serve.

Each feed is a daemon thread that survives its source going away: Kafka or the trace file
disappearing, or Ray restarting, shows up as a status on the page and the feed retries,
instead of the dashboard dying with it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from kafka import TopicPartition

from cluster.kafka import KafkaSettings
from cluster.records import MessageValidationError, frame_from_record, verdict_from_record
from cluster.ray_runtime import ray_environment
from tooling.dashboard.state import CachedFrame, DashboardState

log = logging.getLogger(__name__)


class _Feed(threading.Thread):
    """A daemon loop with a stop event; ``step`` does one unit of work and returns the pause after it."""

    def __init__(self, name: str, state: DashboardState):
        super().__init__(name=f"dashboard-{name}", daemon=True)
        self.feed_name = name
        self.state = state
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                pause = self.step()
            except Exception as exc:  # a source that went away: show it, back off, try again
                log.warning("%s feed: %s", self.feed_name, exc)
                self.state.set_feed(self.feed_name, ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
                self.reset()
                pause = 5.0
            self._stop_event.wait(pause)
        self.reset()

    def step(self) -> float:
        raise NotImplementedError

    def reset(self) -> None:
        """Drop any connection so the next ``step`` starts afresh."""


class KafkaFeed(_Feed):
    """Tails the verdict and frame topics with an unmanaged consumer (no group: the dashboard never
    holds partitions the pipeline needs, and a restart shows the last ``backlog`` records per partition
    straight away)."""

    def __init__(self, state: DashboardState, settings: KafkaSettings, verdict_topic: str, frame_topic: str,
                 backlog: int = 200):
        super().__init__("kafka", state)
        self.settings = settings
        self.verdict_topic = verdict_topic
        self.frame_topic = frame_topic
        self.backlog = backlog
        self._consumer = None
        self.counts = {"verdicts": 0, "frames": 0, "invalid": 0}

    def step(self) -> float:
        if self._consumer is None and not self._connect():
            return 2.0
        for batch in self._consumer.poll(timeout_ms=500).values():
            for record in batch:
                self._handle(record)
        self.state.set_feed("kafka", ok=True, error=None, **self.counts)
        return 0.0

    def _connect(self) -> bool:
        consumer = self.settings.consumer(group_id=None, client_id=f"{self.settings.client_id}-dashboard")
        try:
            partitions = []
            for topic in (self.verdict_topic, self.frame_topic):
                ids = consumer.partitions_for_topic(topic)
                if not ids:
                    self.state.set_feed("kafka", ok=False, error=f"waiting for topic {topic!r}")
                    consumer.close()
                    return False
                partitions += [TopicPartition(topic, p) for p in sorted(ids)]
            consumer.assign(partitions)
            start = consumer.beginning_offsets(partitions)
            end = consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(start[tp], end[tp] - self.backlog))
        except Exception:
            consumer.close()
            raise
        self._consumer = consumer
        return True

    def _handle(self, record) -> None:
        try:
            if record.topic == self.frame_topic:
                frame = frame_from_record(record.key, record.value, record.headers)
                self.state.add_frame(frame.frame_id, CachedFrame(frame.encoding, frame.width, frame.height,
                                                                 frame.image))
                self.counts["frames"] += 1
            else:
                self.state.add_verdict(verdict_from_record(record.key, record.value, record.headers))
                self.counts["verdicts"] += 1
        except MessageValidationError as exc:
            self.counts["invalid"] += 1
            log.debug("skipping an invalid record on %s: %s", record.topic, exc)

    def reset(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None


class TraceFileFeed(_Feed):
    """Follows the JSON-lines trace file as spans are appended (the same lines
    :func:`cluster.telemetry.read_spans` reads), starting near its end so a long-running
    plant's file is not read whole. A file that shrank was rotated: it is read from the start."""

    def __init__(self, state: DashboardState, path: Path, start_bytes: int = 8 * 1024 * 1024):
        super().__init__("traces", state)
        self.path = Path(path)
        self.start_bytes = start_bytes
        self._offset: int | None = None
        self._partial = b""

    def step(self) -> float:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self.state.set_feed("traces", ok=False, error=f"no trace file at {self.path} yet")
            return 2.0
        if self._offset is None or size < self._offset:
            self._offset, self._partial = max(0, size - self.start_bytes), b""
            skip_first = self._offset > 0
        else:
            skip_first = False
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(4 * 1024 * 1024)
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if skip_first and lines:
            lines.pop(0)
        spans = []
        for line in lines:
            try:
                spans.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        self.state.add_spans([s for s in spans if isinstance(s, dict)])
        self.state.set_feed("traces", ok=True, error=None, path=str(self.path))
        return 0.0 if len(chunk) == 4 * 1024 * 1024 else 1.0

    def reset(self) -> None:
        self._offset, self._partial = None, b""


class ReplicaFeed(_Feed):
    """JUDO replica counts from ``serve.status()``, asked by a child process (:mod:`tooling.dashboard.ray_probe`).

    A Ray driver exits its process when the cluster goes away; in a child that only ends the
    probe, and the dashboard records "unknown" and starts another one later.
    """

    def __init__(self, state: DashboardState, address: str | None, interval_s: float = 5.0):
        super().__init__("ray", state)
        self.address = address or "auto"
        self.interval_s = interval_s
        self._child: subprocess.Popen | None = None
        self._last_error: str | None = None

    def step(self) -> float:
        if self._child is None:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "tooling.dashboard.ray_probe", "--address", self.address,
                 "--interval", str(self.interval_s)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_probe_env())
        child = self._child
        line = child.stdout.readline()
        if not line:
            code = child.wait()
            self._child = None
            error = self._last_error or f"Ray not reachable at {self.address} (probe exited with {code})"
            self.state.add_replica_sample(None, error)
            self.state.set_feed("ray", ok=False, error=error)
            self._last_error = None
            return 30.0
        sample = json.loads(line)
        self._last_error = sample.get("error")
        self.state.add_replica_sample(sample.get("deployments"), sample.get("error"), sample.get("at"))
        self.state.set_feed("ray", ok=sample.get("error") is None, error=sample.get("error"), address=self.address)
        return 0.0

    def stop(self) -> None:
        super().stop()
        self.reset()

    def reset(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def _probe_env() -> dict[str, str]:
    """The probe imports this project: make sure it finds it whatever the working directory."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **ray_environment()}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
