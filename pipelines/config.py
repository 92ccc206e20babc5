"""The one pipeline configuration: plant, Kafka, topics, prefilter, JUDO serving, telemetry.

Loaded from YAML and validated with pydantic; errors name the offending key, e.g.
``judo.replicas.max: must be >= judo.replicas.min (got 0 < 1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.kafka import KafkaSettings


class ConfigError(ValueError):
    """The configuration file is missing, not YAML, or does not validate; the message says where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSection(_Section):
    """``embedded`` starts a local broker; anything else is an external cluster."""

    mode: Literal["embedded", "external"] = "embedded"
    brokers: int = Field(1, ge=1, le=5, description="embedded brokers")
    settings: KafkaSettings | None = None

    @model_validator(mode="after")
    def _external_needs_servers(self) -> "KafkaSection":
        if self.mode == "external" and self.settings is None:
            raise ValueError("kafka.settings (bootstrap_servers, security) is required when kafka.mode is external")
        return self


class TopicsSection(_Section):
    frames: str = "frames"
    verdicts: str = "verdicts"
    dead_letters: str = "frames.dead-letters"
    feedback: str = "verdicts.feedback"
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int | None = Field(
        None, ge=1, description="topic min.insync.replicas (None: the broker default); with acks=all a write "
                                "succeeds only once this many replicas have it")


class LineSection(_Section):
    id: str
    product: str
    cameras: list[str] = Field(min_length=1)


class ProductSection(_Section):
    """Where a product's prefilter bank lives, and an optional threshold override."""

    bank: Path
    threshold: float | None = Field(None, description="overrides the bank's calibrated threshold")


class PrefilterSection(_Section):
    actors: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    threads_per_actor: int = Field(1, ge=1)
    references_k: int = Field(1, ge=1, le=8)


class IngestSection(_Section):
    actors: int = Field(1, ge=1)
    group_id: str = "judo-inspect"
    max_in_flight: int = Field(64, ge=1, description="frames in flight per ingest actor before its partitions pause")
    poll_timeout_ms: int = Field(200, ge=10)
    max_poll_records: int = Field(32, ge=1)
    judo_retries: int = Field(3, ge=0)
    revoke_drain_s: float = Field(20.0, ge=0, le=40, description="in a rebalance, how long a driver waits for its frames "
                                  "in flight to finish before it gives their partitions up (they are redelivered "
                                  "to the new owner otherwise: duplicates)")
    join_timeout_s: float = Field(120.0, ge=5, description="a frame driver whose consumer is out of its group this long "
                                  "is replaced (a stuck member must not idle its share of partitions)")


class ReplicasSection(_Section):
    """JUDO's Serve ``autoscaling_config``: replicas follow the requests queued and running per replica."""

    min: int = Field(1, ge=0)
    max: int = Field(1, ge=1)
    initial: int | None = None
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    metrics_interval_s: float | None = Field(None, gt=0, description="how often handles and replicas report "
                                             "their load to the autoscaler (None: Serve's default, 10 s)")
    look_back_period_s: float | None = Field(None, gt=0, description="the window the load is averaged over "
                                             "(None: Serve's default, 30 s)")

    @model_validator(mode="after")
    def _ordered(self) -> "ReplicasSection":
        if self.max < self.min:
            raise ValueError(f"max must be >= min (got {self.max} < {self.min})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"initial must be within min..max (got {self.initial}, {self.min}..{self.max})")
        if (self.look_back_period_s or 30.0) <= (self.metrics_interval_s or 10.0):
            raise ValueError(f"look_back_period_s must be > metrics_interval_s (got {self.look_back_period_s} <= "
                             f"{self.metrics_interval_s}; unset means 30 and 10 s)")
        return self


class VllmSection(_Section):
    """The vLLM engine (``judo.engine: vllm``; docs/vllm.md)."""

    python: Path | None = Field(None, description="the engine environment's interpreter (made by scripts/vllm_env.sh, "
                                "e.g. ~/.cache/judo-inspect/vllm-venv/bin/python): JUDO replicas run in it through "
                                "Ray's runtime_env; None: the replicas' own Python has vLLM")
    max_model_len: int = 4096
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    cpu_kvcache_gib: float = Field(1.0, gt=0, description="KV cache of vLLM's CPU build (judo.device: cpu)")
    dtype: str = Field("float32", description="weights' dtype in vLLM: float32 as the transformers engine (vLLM's "
                       "auto would run a float32 checkpoint in half precision); bfloat16 halves GPU memory")
    max_pixels_per_image: int = 448 * 448
    limit_images_per_prompt: int = Field(3, ge=2)
    enable_prefix_caching: bool = False

    def engine_options(self) -> dict:
        """Keyword arguments of :class:`pipelines.vllm_engine.AsyncVllm` from this section."""
        return self.model_dump(exclude={"python"})


class HttpSection(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    bearer_token: str | None = None
    proxy_location: Literal["HeadOnly", "EveryNode", "Disabled"] = Field(
        "HeadOnly", description="where Serve runs its HTTP proxies; EveryNode needs one host per node (nodes "
                                "sharing a machine would all bind host:port)")


class JudoSection(_Section):
    checkpoint: Path
    engine: Literal["transformers", "vllm"] = "transformers"
    device: str = "cpu"
    max_new_tokens: int = Field(128, ge=8)
    max_batch_size: int = Field(4, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    replicas: ReplicasSection = ReplicasSection()
    max_queued_requests: int = Field(64, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    accelerator_type: str | None = None
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources, e.g. judo_gpu: 1")
    request_timeout_s: float = Field(60.0, gt=0)
    torch_threads: int = Field(1, ge=1)
    vllm: VllmSection = VllmSection()
    http: HttpSection = HttpSection()

    @model_validator(mode="after")
    def _engine_device(self) -> "JudoSection":
        if self.engine == "vllm" and self.device != "cpu" and self.num_gpus <= 0:
            raise ValueError(f"engine vllm on device {self.device!r} needs num_gpus > 0 (device cpu runs vLLM's "
                             "CPU build, docs/vllm.md)")
        return self


class TelemetrySection(_Section):
    service_name: str = "judo-inspect"
    trace_file: Path | None = Path("runs/traces.jsonl")


class RaySection(_Section):
    address: str | None = Field(None, description="None starts a local Ray; 'auto' or HOST:PORT joins a running "
                                "cluster (docs/cluster.md)")
    num_cpus: int | None = None
    scheduling: Literal["SPREAD", "DEFAULT"] = Field(
        "SPREAD", description="placement of the prefilter pool (SPREAD: a SPREAD placement group, one actor "
                              "per node while there are nodes), sink and frame drivers (Ray's SPREAD strategy) "
                              "over the nodes of a cluster (one node: no difference); JUDO replicas are placed "
                              "by judo.resources")


class MetricsSection(_Section):
    """The Prometheus endpoint the pipeline serves (``/metrics``; names in docs/pipeline.md)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port (logged)")


class PipelineConfig(_Section):
    kafka: KafkaSection = KafkaSection()
    topics: TopicsSection = TopicsSection()
    lines: list[LineSection] = Field(min_length=1)
    products: dict[str, ProductSection]
    prefilter: PrefilterSection = PrefilterSection()
    ingest: IngestSection = IngestSection()
    judo: JudoSection
    telemetry: TelemetrySection = TelemetrySection()
    ray: RaySection = RaySection()
    metrics: MetricsSection = MetricsSection()

    @model_validator(mode="after")
    def _lines_use_known_products(self) -> "PipelineConfig":
        for line in self.lines:
            if line.product not in self.products:
                raise ValueError(
                    f"line {line.id!r} makes product {line.product!r}, which has no entry under products "
                    f"(known: {sorted(self.products)})")
        cameras = [c for line in self.lines for c in line.cameras]
        if len(cameras) != len(set(cameras)):
            raise ValueError("camera ids must be unique across lines")
        return self

    def resolve_paths(self, base: Path) -> "PipelineConfig":
        """Make relative paths relative to the config file's folder."""
        def fix(path: Path | None) -> Path | None:
            return path if path is None or path.is_absolute() else base / path

        products = {name: p.model_copy(update={"bank": fix(p.bank)}) for name, p in self.products.items()}
        judo = self.judo.model_copy(update={"checkpoint": fix(self.judo.checkpoint) or self.judo.checkpoint})
        telemetry = self.telemetry.model_copy(update={"trace_file": fix(self.telemetry.trace_file)})
        return self.model_copy(update={"products": products, "judo": judo, "telemetry": telemetry})


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw, source=str(path)).resolve_paths(path.resolve().parent)


def parse_config(raw: object, source: str = "config") -> PipelineConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
            lines.append(f"  {where}: {err.get('msg')}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None
