"""The one pipeline configuration: plant, Kafka, topics, prefilter, JUDO serving, telemetry.

Loaded from YAML and validated with pydantic; errors name the offending key, e.g.
``judo.replicas.max: must be >= judo.replicas.min (got 0 < 1)``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.kafka import KafkaSettings
from cluster.secrets import SecretError, read_secret


class ConfigError(ValueError):
    """The configuration file is missing, not YAML, or does not validate; the message says where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def inline_secret_refusal(name: str, what: str) -> str:
    """Why a config may not carry ``name`` inline, and the two references to use instead."""
    return (f"{name} gives the {what} inline, which a config may not (it would travel in the file, in dumps "
            f"and in Ray actors' arguments): name it instead with {name}_env (an environment variable) or "
            f"{name}_file (a file holding it on its first line, mode 0600)")


class KafkaSection(_Section):
    """``embedded`` starts a local broker; anything else is an external cluster."""

    mode: Literal["embedded", "external"] = "embedded"
    brokers: int = Field(1, ge=1, le=5, description="embedded brokers")
    settings: KafkaSettings | None = None

    @model_validator(mode="after")
    def _external_needs_servers(self) -> "KafkaSection":
        if self.mode == "external" and self.settings is None:
            raise ValueError("kafka.settings (bootstrap_servers, security) is required when kafka.mode is external")
        for name, what in (("sasl_plain_password", "SASL password"), ("ssl_password", "client key's password")):
            if self.settings is not None and getattr(self.settings, name):
                raise ValueError("settings." + inline_secret_refusal(name, what))
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
    domain_knowledge: Path | None = Field(
        None, description="an MMAD-style domain_knowledge.json for this product: its defect entries join the "
                          "types its verdicts may name (None: the bank folder's domain_knowledge.json, if any)")


class PrefilterSection(_Section):
    actors: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1, description="most frames of one product in one prefilter call")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="how long a frame may wait for others of its "
                               "product to fill a call while a call slot is free (0: send at once; under load "
                               "frames batch up anyway while every slot is busy)")
    calls_per_actor: int = Field(2, ge=1, le=16, description="prefilter calls in flight per actor: one running "
                                 "and one on its way keeps it busy; more only queue in its mailbox")
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
        """Keyword arguments of :class:`judo_model.runtime.vllm_engine.AsyncVllm` from this section."""
        return self.model_dump(exclude={"python"})


class _TokenEndpoint(_Section):
    """An HTTP endpoint guarded by a bearer token read by reference (environment variable or file, never
    inline), optionally over HTTPS."""

    secret_name: ClassVar[str] = "bearer token"
    bearer_token: str | None = Field(None, repr=False, description="refused: use bearer_token_env or _file")
    bearer_token_env: str | None = Field(None, description="environment variable holding the bearer token")
    bearer_token_file: Path | None = Field(None, description="file holding the bearer token (first line)")
    ssl_certfile: Path | None = Field(None, description="PEM certificate (chain): the endpoint then speaks HTTPS")
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile")

    def token_sources(self) -> list[str]:
        """The fields the token is configured by: none or one (two are refused at validation)."""
        return [s for s in ("bearer_token_env", "bearer_token_file") if getattr(self, s)]

    @model_validator(mode="after")
    def _token_by_reference(self) -> "_TokenEndpoint":
        if self.bearer_token:
            raise ValueError(inline_secret_refusal("bearer_token", self.secret_name))
        sources = self.token_sources()
        if len(sources) > 1:
            raise ValueError(f"give the bearer token one way only (got {', '.join(sources)})")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    def token(self) -> str | None:
        """The bearer token from its environment variable or file (None: none configured)."""
        return read_secret(env=self.bearer_token_env, file=self.bearer_token_file, what=self.secret_name)


class HttpSection(_TokenEndpoint):
    """JUDO's ad-hoc HTTP endpoint (``POST /judo``): off by default, and never without a bearer token
    (``bearer_token_env`` is read in each replica: every node needs it)."""

    secret_name: ClassVar[str] = "judo.http bearer token"
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_references: int = Field(8, ge=0, le=32, description="more reference images get 400")
    max_questions: int = Field(16, ge=0, le=256, description="more questions get 400")
    max_image_pixels: int = Field(16_000_000, ge=64, description="a larger image (query or reference) gets 400")
    proxy_location: Literal["HeadOnly", "EveryNode", "Disabled"] = Field(
        "HeadOnly", description="where Serve runs its HTTP proxies; EveryNode needs one host per node (nodes "
                                "sharing a machine would all bind host:port)")

    @model_validator(mode="after")
    def _enabled_needs_token(self) -> "HttpSection":
        if self.enabled and not self.token_sources():
            raise ValueError("enabled needs a bearer token: set bearer_token_env or bearer_token_file "
                             "(the endpoint is never open without one)")
        return self

    def serve_http_options(self) -> dict:
        """``serve.start(http_options=...)``: where to listen, and HTTPS when a certificate is given."""
        options: dict = {"host": self.host, "port": self.port}
        if self.ssl_certfile is not None:
            options.update(ssl_certfile=str(self.ssl_certfile), ssl_keyfile=str(self.ssl_keyfile))
        return options


class ClearingSection(_Section):
    """When JUDO may clear a frame the prefilter flagged (docs/pipeline.md, "Who decides a verdict"):
    only for a product whose bank folder holds a ``judo_clearing.json`` measured with the serving
    checkpoint (``judo calibrate-clearing``) that meets this rule."""

    max_missed_defect_rate: float = Field(0.05, gt=0, le=1, description="the most the upper confidence bound of "
                                          "the share of real defects JUDO cleared may be")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="one-sided confidence of that bound (Clopper-Pearson)")
    min_defect_frames: int = Field(20, ge=1, description="labelled defect frames the measurement needs at least")


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
    clearing: ClearingSection = ClearingSection()

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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1 or localhost)."""
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MetricsSection(_TokenEndpoint):
    """The Prometheus endpoint the pipeline serves (``/metrics``; names in docs/pipeline.md): on by default, and
    never without a bearer token unless ``allow_unauthenticated_localhost`` says so for a scraper on this host.
    Prometheus reads the token's file with ``authorization.credentials_file``."""

    secret_name: ClassVar[str] = "metrics bearer token"
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port (logged)")
    allow_unauthenticated_localhost: bool = Field(
        False, description="serve /metrics with no token, for a scraper on this machine only: host must be a "
                           "loopback address, and no token may be configured")

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> "MetricsSection":
        if self.allow_unauthenticated_localhost:
            if self.token_sources():
                raise ValueError(f"allow_unauthenticated_localhost and {self.token_sources()[0]} exclude each "
                                 "other: with a token configured, every scrape must send it")
            if not is_loopback(self.host):
                raise ValueError(f"allow_unauthenticated_localhost needs a loopback host (127.0.0.1, ::1 or "
                                 f"localhost), got {self.host!r}: anywhere else /metrics needs a bearer token")
        return self

    def required_token(self) -> str | None:
        """The token every scrape must send; None when disabled or under ``allow_unauthenticated_localhost``.
        :class:`ConfigError` when the endpoint is enabled with neither, or its token cannot be read:
        /metrics is never served open by default."""
        if not self.enabled:
            return None
        try:
            token = self.token()
        except SecretError as exc:
            raise ConfigError(f"metrics: {exc}") from None
        if token is None and not self.allow_unauthenticated_localhost:
            raise ConfigError("metrics: the Prometheus endpoint is enabled without a bearer token, and it never "
                              "serves without one. Set metrics.bearer_token_file (Prometheus: authorization: "
                              "{credentials_file: ...}) or metrics.bearer_token_env; or metrics.enabled: false; or, "
                              "for a scraper on this host only, metrics.allow_unauthenticated_localhost: true")
        return token


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

        products = {name: p.model_copy(update={"bank": fix(p.bank), "domain_knowledge": fix(p.domain_knowledge)})
                    for name, p in self.products.items()}
        judo = self.judo.model_copy(update={"checkpoint": fix(self.judo.checkpoint) or self.judo.checkpoint})
        telemetry = self.telemetry.model_copy(update={"trace_file": fix(self.telemetry.trace_file)})
        return self.model_copy(update={"products": products, "judo": judo, "telemetry": telemetry})


def load_config(path: str | Path, *, check_paths: bool = False) -> PipelineConfig:
    """The config of a YAML file; relative paths in it resolve against the file's folder. With
    ``check_paths`` (what ``judo run`` does) the files this machine must read are checked now
    (:func:`check_input_paths`), so a wrong path fails at start with its field, not deep in a replica."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    config = parse_config(raw, source=str(path)).resolve_paths(path.resolve().parent)
    if check_paths:
        check_input_paths(config, source=str(path))
    return config


def check_input_paths(config: PipelineConfig, source: str = "config") -> None:
    """Every input path the pipeline reads exists: each product's bank folder (with ``bank.json``),
    its domain-knowledge file when named, and the JUDO checkpoint folder. The error names each field
    and the path it resolved to."""
    problems = []
    for name, product in config.products.items():
        if not (product.bank / "bank.json").is_file():
            what = "has no bank.json (fit one with `judo prefilter fit`)" if product.bank.is_dir() else "does not exist"
            problems.append(f"  products.{name}.bank: {product.bank} {what}")
        if product.domain_knowledge is not None and not product.domain_knowledge.is_file():
            problems.append(f"  products.{name}.domain_knowledge: {product.domain_knowledge} does not exist")
    if not config.judo.checkpoint.is_dir():
        problems.append(f"  judo.checkpoint: {config.judo.checkpoint} does not exist")
    if problems:
        raise ConfigError(f"{source}: paths not found (relative paths resolve against the config file's folder):\n"
                          + "\n".join(problems))


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
