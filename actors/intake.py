"""Kafka intake: one consumer-group member that hands records out and commits what is finished.

:class:`KafkaIntake` owns the consumer (touched from one thread only: kafka-python clients are
not thread-safe), the rebalance listener, the commits and backpressure; it knows nothing of the
stages a record goes through. :class:`OffsetTracker` is its at-least-once bookkeeping: an offset
is committed only once every record before it in its partition is finished (durable).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, fields
from typing import Iterable

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from cluster.kafka import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordPosition:
    topic: str
    partition: int
    offset: int


@dataclass
class RawRecord:
    """The parts of a consumed Kafka record we use (a plain object so it crosses Ray calls)."""

    position: RecordPosition
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @classmethod
    def from_consumer_record(cls, record) -> "RawRecord":
        return cls(RecordPosition(record.topic, record.partition, record.offset),
                   record.key, record.value, list(record.headers or []))


class OffsetTracker:
    """Commit-after-durable bookkeeping for at-least-once delivery.

    Offsets are registered when consumed and marked done when their result is
    durable; :meth:`committable` returns, per partition, the next offset to commit:
    one past the longest prefix of done offsets. A frame finished out of order never
    lets an earlier, unfinished frame be skipped.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], dict[int, bool]] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def add(self, position: RecordPosition) -> None:
        with self._lock:
            self._pending.setdefault((position.topic, position.partition), {})[position.offset] = False

    def done(self, position: RecordPosition) -> None:
        with self._lock:
            offsets = self._pending.get((position.topic, position.partition))
            if offsets is not None and position.offset in offsets:
                offsets[position.offset] = True

    def is_done(self, position: RecordPosition) -> bool:
        """True once marked done (or already committed past)."""
        with self._lock:
            tp = (position.topic, position.partition)
            offsets = self._pending.get(tp, {})
            if position.offset in offsets:
                return offsets[position.offset]
            return position.offset < self._committed.get(tp, 0)

    def in_flight(self, partitions: Iterable[tuple[str, int]] | None = None) -> int:
        """Frames consumed and not yet done, in ``partitions`` (all when None)."""
        with self._lock:
            wanted = self._pending.keys() if partitions is None else set(partitions) & self._pending.keys()
            return sum(1 for tp in wanted for finished in self._pending[tp].values() if not finished)

    def committable(self) -> dict[tuple[str, int], int]:
        """Advance each partition past its done prefix; return the offsets to commit now."""
        with self._lock:
            return self._advance()

    def _advance(self) -> dict[tuple[str, int], int]:
        result = {}
        for tp, offsets in self._pending.items():
            next_offset = None
            for offset in sorted(offsets):
                if not offsets[offset]:
                    break
                next_offset = offset + 1
                del offsets[offset]
            if next_offset is not None and next_offset > self._committed.get(tp, -1):
                self._committed[tp] = next_offset
                result[tp] = next_offset
        return result

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop partitions taken away by a rebalance; their frames will be redelivered elsewhere."""
        with self._lock:
            for tp in partitions:
                self._pending.pop(tp, None)
                self._committed.pop(tp, None)


@dataclass
class IntakeStats:
    """The intake's counters (part of the driver's stats)."""

    paused_polls: int = 0
    commits: int = 0
    commit_failures: int = 0
    revoked_in_flight: int = 0  # frames given up unfinished in a rebalance (processed again elsewhere)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class IntakeSettings:
    """What the intake needs from the pipeline config (``ingest`` and ``topics.frames``)."""

    topic: str
    group_id: str
    max_in_flight: int
    poll_timeout_ms: int
    max_poll_records: int
    revoke_drain_s: float


class KafkaIntake:
    """A consumer-group member: :meth:`poll` returns new records, :meth:`done` marks one finished.

    Every method but :meth:`done`, :meth:`in_flight` and :meth:`membership` must be called from
    the one thread that owns the consumer. Backpressure: with ``max_in_flight`` records unfinished
    :meth:`poll` pauses the assigned partitions (it keeps polling, so the member stays in its
    group) and resumes them as records finish.
    """

    def __init__(self, kafka: KafkaSettings, settings: IntakeSettings):
        self.kafka = kafka
        self.settings = settings
        self.offsets = OffsetTracker()
        self.stats = IntakeStats()
        self._to_commit: dict[tuple[str, int], int] = {}
        self._consumer = None
        self.polls = 0
        self.last_poll = 0.0

    def open(self) -> None:
        intake = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                intake._give_up([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned):
                pass

        s = self.settings
        self._consumer = self.kafka.consumer(group_id=s.group_id, max_poll_records=s.max_poll_records)
        self._consumer.subscribe([s.topic], listener=Listener())

    def _give_up(self, gone: list[tuple[str, int]]) -> None:
        """Partitions revoked: let their frames in flight finish (bounded), commit, forget them."""
        self._finish_in_flight(gone, self.settings.revoke_drain_s)
        self.commit_ready(blocking=False)
        self.offsets.forget(gone)
        for tp in gone:
            self._to_commit.pop(tp, None)

    def _finish_in_flight(self, partitions: list[tuple[str, int]], timeout_s: float) -> None:
        """Wait (bounded) until the frames in flight from ``partitions`` are durable, so that the
        commit before a rebalance covers them and the partitions' next owner does not process
        them again. The frames finish on the driver's event loop, not on this thread. Runs inside
        the rebalance listener, which holds this consumer's heartbeats: the bound stays well
        under the session timeout (45 s)."""
        deadline = time.monotonic() + timeout_s
        while self.offsets.in_flight(partitions) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = self.offsets.in_flight(partitions)
        if left:
            self.stats.revoked_in_flight += left
            log.warning("%d frames still in flight after %.0f s; their partitions' next owner processes them again",
                        left, timeout_s)

    def poll(self) -> list[RawRecord]:
        """Pause or resume for backpressure, poll once, register the new records, commit what is finished."""
        consumer = self._consumer
        if self.offsets.in_flight() >= self.settings.max_in_flight:
            consumer.pause(*consumer.assignment())
            self.stats.paused_polls += 1
        elif consumer.paused():
            consumer.resume(*consumer.paused())
        batches = consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
        self.polls += 1
        self.last_poll = time.monotonic()
        records = [RawRecord.from_consumer_record(r) for batch in batches.values() for r in batch]
        for record in records:
            self.offsets.add(record.position)
        self.commit_ready()
        return records

    def done(self, position: RecordPosition) -> None:
        """The record's verdict or dead letter is durable: its offset may be committed (any thread)."""
        self.offsets.done(position)

    def is_done(self, position: RecordPosition) -> bool:
        return self.offsets.is_done(position)

    def in_flight(self) -> int:
        return self.offsets.in_flight()

    def commit_ready(self, blocking: bool = True) -> None:
        """Commit the finished prefixes. A failed commit (coordinator moved, group rebalancing) must not
        end the loop: its offsets are retried with the next commit, or the frames are redelivered.

        ``blocking=False`` inside a rebalance listener: kafka-python 3 runs listeners on its IO
        thread and refuses a blocking commit there (the driver's loop then died with "User
        rebalance callback throws an error" whenever a rebalance found finished frames to
        commit). The asynchronous commit is sent ahead of the JoinGroup on the same connection,
        and the broker accepts it from a member of the generation being rebalanced."""
        self._to_commit.update(self.offsets.committable())
        owned = self._consumer.assignment()
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in self._to_commit.items()
                   if TopicPartition(t, p) in owned}
        if not offsets:
            return
        try:
            if blocking:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets, callback=self._async_commit_done)
        except KafkaError as exc:
            self.stats.commit_failures += 1
            log.warning("offset commit failed (%s); retrying with the next commit", exc)
            return
        self._to_commit.clear()
        self.stats.commits += 1

    def _async_commit_done(self, offsets, response) -> None:
        if isinstance(response, Exception):
            self.stats.commit_failures += 1
            log.warning("offset commit in a rebalance failed (%s); those frames are redelivered", response)

    def close(self) -> None:
        """Commit what is finished and leave the group."""
        self.commit_ready()
        self._consumer.close()

    def membership(self) -> dict:
        """Where the consumer stands in its group (best-effort fields of kafka-python's coordinator).

        Read without the consumer thread: a stuck poll must not hide its own state.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        generation = getattr(coordinator, "_generation", None)
        state = str(getattr(coordinator, "state", "")).strip("<>").upper() or None  # kafka-python: "<stable>"
        return {
            "polls": self.polls,
            "since_last_poll_s": round(time.monotonic() - self.last_poll, 1) if self.last_poll else None,
            "group_state": state,
            "generation": getattr(generation, "generation_id", None),
            "coordinator": getattr(coordinator, "coordinator_id", None),
            "assigned": len(self._consumer.assignment()) if self._consumer is not None else 0,
        }
