"""Sink: write verdicts and dead letters to Kafka durably, and only then report success.

The producer is idempotent with ``acks=all``; :meth:`VerdictSink.write` blocks until
every record is acknowledged by all in-sync replicas, so the caller may commit the
source offsets afterwards. A failed write raises and nothing is committed: the frames
are redelivered (at-least-once; duplicates carry the same ``frame_id``).
"""

from __future__ import annotations

import ray

from cluster.kafka import KafkaSettings
from cluster.messages import DeadLetter, Verdict
from cluster.records import dead_letter_to_record, verdict_to_record
from cluster.telemetry import context_from_carrier, inject_headers, setup_tracing, tracer


class SinkError(RuntimeError):
    pass


class VerdictSink:
    def __init__(self, settings: KafkaSettings, verdict_topic: str, dead_letter_topic: str,
                 timeout_s: float = 60.0):
        self.verdict_topic = verdict_topic
        self.dead_letter_topic = dead_letter_topic
        self.timeout_s = timeout_s
        self._producer = settings.producer()

    def write(self, verdicts: list[tuple[Verdict, dict[str, str]]],
              dead_letters: list[tuple[DeadLetter, dict[str, str]]] = ()) -> int:
        """Publish and wait for every acknowledgement; return how many records were written."""
        futures = []
        for verdict, carrier in verdicts:
            with tracer().start_as_current_span("sink", context=context_from_carrier(carrier)) as span:
                span.set_attribute("frame_id", verdict.frame_id)
                span.set_attribute("stage", verdict.stage)
                span.set_attribute("is_anomalous", verdict.is_anomalous)
                record = verdict_to_record(verdict, inject_headers())
            futures.append(self._producer.send(self.verdict_topic, key=record.key, value=record.value,
                                               headers=record.headers))
        for letter, carrier in dead_letters:
            with tracer().start_as_current_span("sink.dead_letter", context=context_from_carrier(carrier)) as span:
                span.set_attribute("reason", letter.reason[:500])
                record = dead_letter_to_record(letter, inject_headers())
            futures.append(self._producer.send(self.dead_letter_topic, key=record.key or None,
                                               value=record.value, headers=record.headers))
        self._producer.flush(timeout=self.timeout_s)
        for future in futures:
            try:
                future.get(timeout=self.timeout_s)
            except Exception as exc:
                raise SinkError(f"a record was not acknowledged: {exc}") from exc
        return len(futures)

    def close(self) -> None:
        self._producer.close(timeout=10)


def sink_actor_class():
    """The thin Ray actor around :class:`VerdictSink`."""
    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
    class SinkActor:
        def __init__(self, settings: dict, verdict_topic: str, dead_letter_topic: str,
                     service_name: str, trace_file: str | None):
            setup_tracing(service_name, trace_file=trace_file)
            self.sink = VerdictSink(KafkaSettings(**settings), verdict_topic, dead_letter_topic)

        def write(self, verdicts, dead_letters=()) -> int:
            return self.sink.write(verdicts, dead_letters)

        def ready(self) -> bool:
            return True

    return SinkActor
