"""Prometheus metrics of the pipeline: what each frame driver counts, how the runner adds it up, and /metrics.

Each frame driver keeps a :class:`FrameMetrics` in its stats (frames by line, durable verdicts by line
and stage, dead letters by stage, latency histograms) as plain nested dicts, so a report crosses Ray
and reports add up with :func:`merge_stats`. The runner's :class:`PipelineCollector` keeps the last
report of every driver it ever ran (:class:`DriverTotals`: a replaced driver's counts stay in the sum,
so counters never go down) and serves them with ``prometheus_client`` (:func:`serve_metrics`): every scrape
must carry the configured bearer token, over HTTPS when a certificate is given (:mod:`pipelines.metrics_http`).
No Ray here: the runner passes in how to ask the drivers and Serve.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from kafka import TopicPartition
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from cluster.kafka import KafkaSettings
from cluster.messages import DeadLetter, Frame, Verdict
from pipelines.config import MetricsSection
from pipelines.metrics_http import bearer_guard, listen, tls_context

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the latency histograms' buckets: a pass-path stage takes milliseconds,
#: a JUDO answer on CPU seconds to tens of seconds.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Stages whose time a verdict carries in ``latency_ms`` (``sink`` is timed around the write).
TIMED_STAGES = ("ingest", "prefilter", "judo")
#: How long one collection of the drivers' reports is reused (scrapes in a burst ask Ray once).
REPORT_TTL_S = 1.0


def _bump(tree: dict, labels: tuple[str, ...], amount: float = 1) -> None:
    """Add ``amount`` to the leaf of a nested dict of label values."""
    for label in labels[:-1]:
        tree = tree.setdefault(label, {})
    tree[labels[-1]] = tree.get(labels[-1], 0) + amount


def _observe(histograms: dict, label: str, seconds: float) -> None:
    """Record one observation into the cumulative histogram ``histograms[label]``."""
    hist = histograms.setdefault(label, {"le": {floatToGoString(b): 0 for b in (*LATENCY_BUCKETS_S, float("inf"))},
                                         "sum": 0.0, "count": 0})
    for bound in LATENCY_BUCKETS_S:
        if seconds <= bound:
            hist["le"][floatToGoString(bound)] += 1
    hist["le"]["+Inf"] += 1
    hist["sum"] += seconds
    hist["count"] += 1


@dataclass
class FrameMetrics:
    """One driver's counts for Prometheus, as nested dicts keyed by label values (they cross Ray and add up)."""

    frames: dict = field(default_factory=dict)  # line -> product -> frames decoded
    verdicts: dict = field(default_factory=dict)  # line -> product -> stage -> durable verdicts
    dead_letters: dict = field(default_factory=dict)  # stage -> durable dead letters
    stage_latency: dict = field(default_factory=dict)  # stage -> histogram (seconds)
    frame_latency: dict = field(default_factory=dict)  # path (pass | judo) -> histogram, receipt to verdict

    def arrived(self, frames: Iterable[Frame]) -> None:
        """Frames decoded from Kafka records (records that failed to decode count as dead letters)."""
        for frame in frames:
            _bump(self.frames, (frame.line_id, frame.product))

    def written(self, verdicts: Iterable[Verdict], letters: Iterable[DeadLetter], sink_s: float) -> None:
        """Verdicts and dead letters just made durable, with the write's time (the ``sink`` stage)."""
        wrote = False
        for verdict in verdicts:
            wrote = True
            _bump(self.verdicts, (verdict.line_id, verdict.product, verdict.stage))
            for stage in TIMED_STAGES:
                if stage in verdict.latency_ms:
                    _observe(self.stage_latency, stage, verdict.latency_ms[stage] / 1000)
            if "total" in verdict.latency_ms:
                # a prefilter verdict is anomalous only as the fallback of a frame routed to JUDO
                routed = verdict.stage == "judo" or verdict.is_anomalous
                _observe(self.frame_latency, "judo" if routed else "pass", verdict.latency_ms["total"] / 1000)
        for letter in letters:
            wrote = True
            _bump(self.dead_letters, (letter.stage,))
        if wrote:
            _observe(self.stage_latency, "sink", sink_s)

    def as_dict(self) -> dict:
        return copy.deepcopy(asdict(self))


def merge_stats(parts: Iterable[dict]) -> dict:
    """Drivers' stats added up: numbers summed, lists (latency windows) concatenated, dicts merged key by key."""
    merged: dict = {}
    for part in parts:
        _merge_into(merged, part)
    return merged


def _merge_into(into: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _merge_into(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            into.setdefault(key, []).extend(value)
        else:
            into[key] = into.get(key, 0) + value


class DriverTotals:
    """Counters over every driver the pipeline ran: a driver that died or was replaced keeps its last report
    in the sum, so totals never go down (Prometheus would read a drop as a counter reset)."""

    def __init__(self) -> None:
        self.last: dict[str, dict] = {}

    def update(self, reports: dict[str, dict]) -> dict:
        """Fold in the live drivers' reports (by driver id); return the totals over all drivers ever seen."""
        for driver_id, report in reports.items():
            self.last[driver_id] = {k: v for k, v in report.items() if not isinstance(v, list)}
        return merge_stats(self.last.values())


class ConsumerLag:
    """Records in the frames topic not yet committed by the pipeline's consumer group, per partition.

    Read through a consumer that names the group but never subscribes, so the group is not disturbed.
    """

    def __init__(self, settings: KafkaSettings, group_id: str, topic: str, timeout_ms: int = 3000):
        self.settings, self.group_id, self.topic, self.timeout_ms = settings, group_id, topic, timeout_ms
        self._consumer = None

    def __call__(self) -> dict[str, int]:
        if self._consumer is None:
            self._consumer = self.settings.consumer(group_id=self.group_id)
        consumer = self._consumer
        partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
        tps = [TopicPartition(self.topic, p) for p in partitions]
        end = consumer.end_offsets(tps, timeout_ms=self.timeout_ms)
        lag = {}
        for tp in tps:
            committed = consumer.committed(tp, timeout_ms=self.timeout_ms)
            lag[str(tp.partition)] = max(end[tp] - (committed or 0), 0)
        return lag

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None


#: The series served, name -> (type, help). Names follow Prometheus conventions (``_total``, ``_seconds``).
METRICS = {
    "judo_records_total": ("counter", "Kafka records consumed from the frames topic (valid or not)"),
    "judo_frames_total": ("counter", "frames decoded, by line and product; rate() is frames/s per line"),
    "judo_verdicts_total": ("counter", "durable verdicts by line, product and stage (prefilter | judo)"),
    "judo_dead_letters_total": ("counter", "durable dead letters by the stage that rejected the record"),
    "judo_retries_total": ("counter", "stage calls retried, by stage (prefilter | judo)"),
    "judo_judo_fallbacks_total": ("counter", "routed frames JUDO never answered (they get the prefilter's verdict)"),
    "judo_offset_commits_total": ("counter", "offset commits, by result (ok | failed)"),
    "judo_driver_restarts_total": ("counter", "frame drivers replaced by the supervisor"),
    "judo_frames_in_flight": ("gauge", "frames read and not yet durable, over the live drivers"),
    "judo_frame_drivers": ("gauge", "frame drivers that answered the last collection"),
    "judo_consumer_lag_records": ("gauge", "records of the frames topic not yet committed, by partition"),
    "judo_replicas": ("gauge", "JUDO Serve replicas by state (RUNNING, STARTING, ...)"),
    "judo_stage_latency_seconds": ("histogram", "time of one stage per frame (ingest, prefilter, judo, sink)"),
    "judo_frame_latency_seconds": ("histogram", "Kafka receipt to verdict, by path (pass | judo)"),
}


def _leaves(tree: dict, depth: int, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], float]]:
    """(label values, value) for every leaf ``depth`` levels down a nested dict."""
    for key, value in tree.items():
        if depth == 1:
            yield (*prefix, str(key)), value
        else:
            yield from _leaves(value, depth - 1, (*prefix, str(key)))


class PipelineCollector:
    """A ``prometheus_client`` collector over the running pipeline.

    ``driver_stats``: each live driver's stats by driver id; ``driver_restarts``: the supervisor's count;
    ``replicas`` (optional): JUDO replicas by state; ``lag`` (optional): consumer lag by partition. A source
    that fails is left out of that scrape (logged), never the whole page.
    """

    def __init__(self, driver_stats: Callable[[], dict[str, dict]], driver_restarts: Callable[[], int],
                 replicas: Callable[[], dict[str, int]] | None = None, lag: Callable[[], dict[str, int]] | None = None):
        self.driver_stats, self.driver_restarts, self.replicas, self.lag = driver_stats, driver_restarts, replicas, lag
        self.totals = DriverTotals()
        self._lock = threading.RLock()  # one scrape at a time reads the sources
        self._cached: tuple[float, dict, dict] | None = None

    def snapshot(self) -> tuple[dict, dict]:
        """(totals over every driver ever seen, the live drivers' stats merged), at most :data:`REPORT_TTL_S` old."""
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > REPORT_TTL_S:
                reports = self.driver_stats()
                self._cached = (time.monotonic(), self.totals.update(reports),
                                {**merge_stats(reports.values()), "drivers": len(reports)})
            return self._cached[1], self._cached[2]

    def collect(self):
        totals, live = self.snapshot()
        family = _families()
        path = totals.get("metrics", {})
        family["judo_records_total"].add_metric([], totals.get("frames_in", 0))
        for labels, value in _leaves(path.get("frames", {}), 2):
            family["judo_frames_total"].add_metric(labels, value)
        for labels, value in _leaves(path.get("verdicts", {}), 3):
            family["judo_verdicts_total"].add_metric(labels, value)
        for labels, value in _leaves(path.get("dead_letters", {}), 1):
            family["judo_dead_letters_total"].add_metric(labels, value)
        family["judo_retries_total"].add_metric(["prefilter"], totals.get("prefilter_retries", 0))
        family["judo_retries_total"].add_metric(["judo"], totals.get("judo_retries", 0))
        family["judo_judo_fallbacks_total"].add_metric([], totals.get("judo_fallbacks", 0))
        family["judo_offset_commits_total"].add_metric(["ok"], totals.get("commits", 0))
        family["judo_offset_commits_total"].add_metric(["failed"], totals.get("commit_failures", 0))
        family["judo_driver_restarts_total"].add_metric([], self.driver_restarts())
        family["judo_frames_in_flight"].add_metric([], live.get("in_flight", 0))
        family["judo_frame_drivers"].add_metric([], live.get("drivers", 0))
        for name, source in (("judo_consumer_lag_records", self.lag), ("judo_replicas", self.replicas)):
            try:
                with self._lock:
                    values = source() if source else {}
                for label, value in values.items():
                    family[name].add_metric([label], value)
            except Exception as exc:  # a slow broker or a restarting controller must not blank the page
                log.warning("metrics: %s unavailable this scrape (%s: %s)", name, type(exc).__name__, exc)
        for name, key in (("judo_stage_latency_seconds", "stage_latency"),
                          ("judo_frame_latency_seconds", "frame_latency")):
            for label, hist in sorted(path.get(key, {}).items()):
                family[name].add_metric([label], list(hist["le"].items()), hist["sum"])
        yield from family.values()


def _families() -> dict:
    labels = {"judo_frames_total": ["line", "product"], "judo_verdicts_total": ["line", "product", "stage"],
              "judo_dead_letters_total": ["stage"], "judo_retries_total": ["stage"],
              "judo_offset_commits_total": ["result"], "judo_consumer_lag_records": ["partition"],
              "judo_replicas": ["state"], "judo_stage_latency_seconds": ["stage"],
              "judo_frame_latency_seconds": ["path"]}
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}
    return {name: kinds[kind](name.removesuffix("_total") if kind == "counter" else name, doc,
                              labels=labels.get(name, []))
            for name, (kind, doc) in METRICS.items()}


@dataclass
class MetricsServer:
    """The /metrics endpoint; :meth:`close` stops it."""

    server: object
    thread: threading.Thread
    collector: PipelineCollector
    host: str
    tls: bool = False
    authenticated: bool = True

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if isinstance(self.collector.lag, ConsumerLag):
            with self.collector._lock:  # not while a scrape still reads through it
                self.collector.lag.close()


def serve_metrics(settings: MetricsSection, collector: PipelineCollector) -> MetricsServer | None:
    """Serve ``collector`` on ``settings.host:settings.port`` (the config's ``metrics`` section; port 0 picks a free
    one), each scrape checked for the bearer token, over HTTPS with a certificate. None when disabled, or when the
    port is taken: metrics must never stop inspection, so that is a warning. A missing token (with no
    ``allow_unauthenticated_localhost``) or an unreadable token or certificate is a :class:`ConfigError`."""
    if not settings.enabled:
        return None
    token = settings.required_token()
    context = tls_context(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    app = make_wsgi_app(registry)
    try:
        server = listen(settings.host, settings.port, app if token is None else bearer_guard(app, token), context)
    except OSError as exc:
        log.warning("metrics: cannot serve on %s:%d (%s); the pipeline runs without /metrics. Set metrics.port to "
                    "a free port (0: any) or metrics.enabled: false", settings.host, settings.port, exc)
        return None
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    served = MetricsServer(server, thread, collector, settings.host, tls=context is not None,
                           authenticated=token is not None)
    if token is None:
        log.warning("metrics: Prometheus endpoint at %s WITHOUT authentication (metrics.allow_unauthenticated_"
                    "localhost): any process on this machine may read it", served.url)
    else:
        source = (f"environment variable {settings.bearer_token_env}" if settings.bearer_token_env
                  else f"file {settings.bearer_token_file}")
        log.info("metrics: Prometheus endpoint at %s; scrapes send the bearer token in %s", served.url, source)
    return served
