"""Watching the verdicts of a fault run and turning their arrival times into metrics.

* ``lost``: produced frame ids with no verdict; ``duplicates``: verdict records beyond the first
  per frame id (at-least-once redelivery).
* ``gap_s``: the longest time after the fault with no new frame getting its verdict.
* ``recovery_s``: time from the fault until the pipeline is back on schedule for good — from then
  on, the count of frames with verdicts stays within ``slack_s`` seconds' worth (at the pre-fault
  verdict rate) of where that rate would have put it without the fault.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from cluster.records import dead_letter_from_record, verdict_from_record

class VerdictWatcher:
    """Reads the verdict and dead-letter topics on its own thread, noting when each record was seen."""

    def __init__(self, settings, verdict_topic: str, dead_letter_topic: str):
        self.settings = settings
        self.topics = (verdict_topic, dead_letter_topic)
        self.first_seen: dict[str, float] = {}
        self.verdicts: dict[str, object] = {}
        self.duplicates = 0
        self.dead_letters: list = []
        self.last_record_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verdict-watcher", daemon=True)

    def start(self) -> "VerdictWatcher":
        self._thread.start()
        return self

    def _run(self) -> None:
        consumer = self.settings.consumer(*self.topics, group_id=None, fetch_max_wait_ms=100)
        try:
            while not self._stop.is_set():
                for batch in consumer.poll(timeout_ms=200).values():
                    now = time.time()
                    for record in batch:
                        self.last_record_at = now
                        if record.topic == self.topics[0]:
                            verdict = verdict_from_record(record.key, record.value, record.headers)
                            if verdict.frame_id in self.verdicts:
                                self.duplicates += 1
                            else:
                                self.first_seen[verdict.frame_id] = now
                            self.verdicts[verdict.frame_id] = verdict
                        else:
                            self.dead_letters.append(dead_letter_from_record(record.key, record.value, record.headers))
        finally:
            consumer.close()

    def wait_until(self, predicate: Callable[["VerdictWatcher"], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, quiet_s: float = 2.0) -> None:
        """Keep reading until ``quiet_s`` passes without a record (late duplicates), then stop."""
        while time.time() - self.last_record_at < quiet_s:
            time.sleep(0.2)
        self._stop.set()
        self._thread.join(timeout=30)


def recovery_metrics(first_seen: list[float], fault_at: float, frames: int, slack_s: float,
                     pre_window_s: float = 10.0, step_s: float = 0.05) -> tuple[float, float, float]:
    """``(pre_fault_fps, gap_s, recovery_s)`` from the times frames got their first verdict.

    The pre-fault rate is measured over the ``pre_window_s`` before the fault; the schedule after
    the fault is that rate continued from the count at the fault, capped at ``frames``. Recovery is
    the end of the last instant (on a ``step_s`` grid) the count was behind schedule by more than
    ``slack_s`` worth: from then on the pipeline stays on schedule.
    """
    times = np.sort(np.asarray(first_seen, dtype=float))
    done_at_fault = int(np.searchsorted(times, fault_at))
    window = min(pre_window_s, fault_at - times[0]) if done_at_fault else 0.0
    recent = done_at_fault - int(np.searchsorted(times, fault_at - pre_window_s))
    rate = recent / window if window > 0 else 0.0
    after = times[done_at_fault:]
    gap = float(np.max(np.diff(np.concatenate([[fault_at], after])))) if len(after) else 0.0
    grid = np.arange(fault_at, max(times[-1], fault_at) + step_s, step_s)
    count = np.searchsorted(times, grid, side="right")
    behind = count < np.minimum(frames, done_at_fault + rate * (grid - fault_at)) - rate * slack_s
    recovery = float(grid[np.nonzero(behind)[0][-1]] + step_s - fault_at) if behind.any() else 0.0
    return rate, gap, recovery
