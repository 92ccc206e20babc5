"""The dashboard's bounded, in-memory view of the plant: what the feeds write and the HTTP handlers read.

Everything here has a fixed ceiling (cards, frame bytes, verdict events, spans, traces, replica
samples), so a dashboard left open for weeks uses the same memory as one opened a minute ago.
Feeds run in their own threads; one lock guards the whole view, and every read returns plain
dicts/lists that are safe to serialise after the lock is released.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from cluster.messages import Verdict
from cluster.telemetry import summarize_spans

#: Pipeline stages in the order a frame meets them (trace span names); others follow alphabetically.
STAGE_ORDER = ("camera.capture", "ingest", "prefilter", "router", "references", "judo", "sink")


@dataclass(frozen=True)
class Limits:
    """Ceilings of the in-memory window."""

    cards: int = 200
    frame_bytes: int = 64 * 1024 * 1024
    frames: int = 2000
    events: int = 20_000
    spans: int = 20_000
    traces: int = 5_000
    replica_samples: int = 720
    seen_ids: int = 50_000


@dataclass(frozen=True)
class CachedFrame:
    encoding: str
    width: int
    height: int
    image: bytes


@dataclass(frozen=True)
class _Event:
    """One verdict reduced to what line health needs."""

    at: float
    line_id: str
    camera_id: str
    routed: bool
    anomalous: bool
    latency_ms: tuple[tuple[str, float], ...] = ()


class DashboardState:
    """Verdict cards for the gallery, per-camera counters, span window and replica history."""

    def __init__(self, cameras: list[tuple[str, str]], limits: Limits = Limits()):
        self.limits = limits
        self.cameras = list(cameras)
        self._lock = threading.Lock()
        self._cards: deque[dict] = deque(maxlen=limits.cards)
        self._card_by_frame: dict[str, dict] = {}
        self._seq = 0
        self._frames: OrderedDict[str, CachedFrame] = OrderedDict()
        self._frame_bytes = 0
        self._events: deque[_Event] = deque(maxlen=limits.events)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._spans: deque[dict] = deque(maxlen=limits.spans)
        self._traces: OrderedDict[str, list[dict]] = OrderedDict()
        self._replicas: deque[dict] = deque(maxlen=limits.replica_samples)
        self.feeds: dict[str, dict] = {}
        self.duplicates = 0

    # ------------------------------------------------------------------ frames
    def add_frame(self, frame_id: str, frame: CachedFrame) -> None:
        """Keep a frame's bytes until its verdict says whether the gallery needs them."""
        with self._lock:
            if frame_id in self._frames:
                return
            self._frames[frame_id] = frame
            self._frame_bytes += len(frame.image)
            while self._frames and (self._frame_bytes > self.limits.frame_bytes
                                    or len(self._frames) > self.limits.frames):
                _, dropped = self._frames.popitem(last=False)
                self._frame_bytes -= len(dropped.image)

    def frame(self, frame_id: str) -> CachedFrame | None:
        with self._lock:
            return self._frames.get(frame_id)

    def _drop_frame(self, frame_id: str) -> None:
        dropped = self._frames.pop(frame_id, None)
        if dropped is not None:
            self._frame_bytes -= len(dropped.image)

    # ------------------------------------------------------------------ verdicts
    def add_verdict(self, verdict: Verdict) -> bool:
        """Count a verdict once per frame (redelivery repeats frame_ids); routed or anomalous ones
        become gallery cards. Returns False for a duplicate."""
        with self._lock:
            if verdict.frame_id in self._seen:
                self.duplicates += 1
                return False
            self._seen[verdict.frame_id] = None
            if len(self._seen) > self.limits.seen_ids:
                self._seen.popitem(last=False)
            routed = verdict.stage == "judo"
            self._events.append(_Event(verdict.produced_at.timestamp(), verdict.line_id, verdict.camera_id,
                                       routed, verdict.is_anomalous, tuple(verdict.latency_ms.items())))
            if not (routed or verdict.is_anomalous):
                self._drop_frame(verdict.frame_id)
                return True
            self._seq += 1
            if len(self._cards) == self._cards.maxlen:
                evicted = self._cards[0]
                self._card_by_frame.pop(evicted["verdict"]["frame_id"], None)
                self._drop_frame(evicted["verdict"]["frame_id"])
            card = {"seq": self._seq, "verdict": verdict.model_dump(mode="json")}
            self._cards.append(card)
            self._card_by_frame[verdict.frame_id] = card
            return True

    def cards_after(self, seq: int, limit: int) -> tuple[list[dict], int]:
        """Cards newer than ``seq``, newest first, each saying whether its frame bytes are at hand, and
        the latest sequence number (lower than ``seq`` when the dashboard restarted under an open page)."""
        with self._lock:
            newer = [c for c in reversed(self._cards) if c["seq"] > seq][:limit]
            cards = [{**card, "frame_available": card["verdict"]["frame_id"] in self._frames} for card in newer]
            return cards, self._seq

    def verdict_of(self, frame_id: str) -> Verdict | None:
        """The verdict behind a gallery card (feedback is accepted only for these)."""
        with self._lock:
            card = self._card_by_frame.get(frame_id)
        return None if card is None else Verdict.model_validate(card["verdict"])

    def camera_health(self, window_s: float, now: float | None = None) -> list[dict]:
        """Per configured camera (silent ones included): frames/s, routed % and defect rate over the
        last ``window_s`` seconds of verdicts (by when they were produced). Rates divide by the part of
        the window the dashboard has seen, so a plant that started a minute ago is not under-reported."""
        now = time.time() if now is None else now
        since = now - window_s
        with self._lock:
            recent = [e for e in self._events if e.at >= since]
            last_seen: dict[tuple[str, str], float] = {}
            for event in self._events:
                key = (event.line_id, event.camera_id)
                last_seen[key] = max(last_seen.get(key, 0.0), event.at)
            earliest = min((e.at for e in self._events), default=now)
        observed_s = max(min(window_s, now - earliest), 1.0)
        by_camera: dict[tuple[str, str], list[_Event]] = {}
        by_line: dict[str, list[_Event]] = {}
        for event in recent:
            by_camera.setdefault((event.line_id, event.camera_id), []).append(event)
            by_line.setdefault(event.line_id, []).append(event)
        keys = list(dict.fromkeys([*self.cameras, *sorted(by_camera)]))
        rows = [_health_row(line, camera, by_camera.get((line, camera), []), observed_s, last_seen.get((line, camera)))
                for line, camera in keys]
        for line_id in dict.fromkeys(line for line, _ in keys):
            seen = [at for (line, _), at in last_seen.items() if line == line_id]
            rows.append(_health_row(line_id, None, by_line.get(line_id, []), observed_s, max(seen) if seen else None))
        return rows

    # ------------------------------------------------------------------ traces
    def add_spans(self, spans: list[dict]) -> None:
        with self._lock:
            for span in spans:
                trace_id = span.get("trace_id")
                if not trace_id or "name" not in span or "duration_ms" not in span:
                    continue
                self._spans.append(span)
                self._traces.setdefault(trace_id, []).append(span)
                self._traces.move_to_end(trace_id)
                while len(self._traces) > self.limits.traces:
                    self._traces.popitem(last=False)

    def stage_latency(self) -> list[dict]:
        """Percentiles per span name over the recent window, in pipeline order."""
        with self._lock:
            spans = list(self._spans)
        return _ordered_summary(spans)

    def verdict_latency(self, window_s: float, now: float | None = None) -> list[dict]:
        """Percentiles of the stage times the verdicts report (``Verdict.latency_ms``) over the window,
        with the end-to-end time split by path: JUDO's model time is here, not in its span."""
        since = (time.time() if now is None else now) - window_s
        with self._lock:
            recent = [e for e in self._events if e.at >= since]
        samples = [{"name": (f"total ({'JUDO' if e.routed else 'pass'} path)" if key == "total" else key),
                    "duration_ms": ms} for e in recent for key, ms in e.latency_ms]
        return _ordered_summary(samples)

    def trace(self, trace_id: str) -> list[dict]:
        with self._lock:
            spans = list(self._traces.get(trace_id, ()))
        return sorted(spans, key=lambda s: (s.get("start_ns", 0), s.get("name", "")))

    # ------------------------------------------------------------------ replicas and feed status
    def add_replica_sample(self, deployments: dict[str, dict] | None, error: str | None = None,
                           at: float | None = None) -> None:
        """``deployments``: ``{"app/deployment": {"running": n, "status": str}}``; None when unknown."""
        with self._lock:
            self._replicas.append({"at": time.time() if at is None else at, "deployments": deployments,
                                   "error": error})

    def replica_history(self) -> list[dict]:
        with self._lock:
            return list(self._replicas)

    def set_feed(self, name: str, **status) -> None:
        with self._lock:
            self.feeds[name] = {**self.feeds.get(name, {}), **status, "updated_at": time.time()}

    def feed_status(self) -> dict:
        with self._lock:
            return {name: dict(status) for name, status in self.feeds.items()}


def _ordered_summary(samples: list[dict]) -> list[dict]:
    """:func:`summarize_spans` rows in the order a frame meets the stages; others follow alphabetically."""
    summary = summarize_spans(samples)
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    names = sorted(summary, key=lambda n: (order.get(n, len(order)), n))
    return [{"stage": name, **summary[name]} for name in names]


def _health_row(line_id: str, camera_id: str | None, events: list[_Event], observed_s: float,
                last_at: float | None) -> dict:
    count = len(events)
    return {
        "line_id": line_id, "camera_id": camera_id, "frames": count,
        "frames_per_s": count / observed_s,
        "routed_pct": 100.0 * sum(e.routed for e in events) / count if count else None,
        "defect_rate_pct": 100.0 * sum(e.anomalous for e in events) / count if count else None,
        "last_verdict_at": last_at,
    }
