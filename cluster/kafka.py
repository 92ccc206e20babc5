"""Real Apache Kafka (KRaft) for the laptop, the tests and the demo — and the way to reach any Kafka.

* :func:`ensure_kafka_jars` resolves the broker jars from Maven Central through
  ``cluster/kafka_dist/pom.xml`` into ``~/.cache/judo-inspect/kafka/<version>/libs``
  once; later runs start without network.
* :class:`LocalKafka` starts one broker or a cluster of N combined broker+controller
  nodes on 127.0.0.1 with free ports and its own data directories, waits until the
  cluster serves, creates topics, stops and restarts single brokers on the same data
  directory, and leaves no JVM behind. Its client listener is PLAINTEXT, SASL_PLAINTEXT
  (PLAIN users) or SSL (mutual TLS with a throwaway CA from :mod:`cluster.tls`).
* :class:`KafkaSettings` describes an external cluster (bootstrap servers plus
  SSL / SASL settings) and builds kafka-python clients with the project's
  delivery semantics (``acks=all``, idempotent producer, manual commits).
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
DIST_DIR = Path(__file__).resolve().parent / "kafka_dist"
CACHE_ROOT = Path(os.environ.get("JUDO_CACHE", Path.home() / ".cache" / "judo-inspect"))
#: Largest record the embedded brokers accept; frames are images.
MAX_MESSAGE_BYTES = 20 * 1024 * 1024


class KafkaError(RuntimeError):
    """Kafka could not be fetched, started, reached or stopped; the message says why."""


# --------------------------------------------------------------------------- jars


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    return CACHE_ROOT / "kafka" / version


def ensure_kafka_jars(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Return the folder of broker jars, resolving them with Maven the first time.

    A ``.complete`` marker is written only after Maven succeeds, so an interrupted
    download is retried rather than half used.
    """
    libs = kafka_home(version) / "libs"
    marker = kafka_home(version) / ".complete"
    if marker.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("Maven (mvn) is needed once to fetch the Kafka jars; install it (apt-get install maven)")
    if shutil.which("java") is None:
        raise KafkaError("Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)")
    staging = kafka_home(version) / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-B", "-f", str(DIST_DIR / "pom.xml"),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    if quiet:
        cmd.insert(1, "-q")
    log.info("fetching Apache Kafka %s jars from Maven Central into %s", version, libs)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KafkaError(f"mvn failed to fetch Kafka {version}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    marker.write_text(json.dumps({"version": version, "fetched_at": time.time()}))
    return libs


# --------------------------------------------------------------------------- settings


class KafkaSettings(BaseModel):
    """How to reach a Kafka cluster: the embedded one or an external one."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = Field(..., description="comma-separated host:port list")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    client_id: str = "judo-inspect"
    request_timeout_ms: int = 30_000

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every kafka-python client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if "SSL" in self.security_protocol:
            kwargs.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_password=self.ssl_password,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        if "SASL" in self.security_protocol:
            if self.sasl_mechanism is None:
                raise KafkaError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_plain_username,
                sasl_plain_password=self.sasl_plain_password,
            )
        return kwargs

    def producer(self, **overrides: Any):
        """A durable producer: every write acknowledged by all in-sync replicas, no duplicates on retry."""
        from kafka import KafkaProducer

        config: dict[str, Any] = {
            **self.client_kwargs(),
            "acks": "all",
            "enable_idempotence": True,
            "retries": 2**31 - 1,
            "max_in_flight_requests_per_connection": 5,
            "linger_ms": 5,
            "max_request_size": MAX_MESSAGE_BYTES,
            "delivery_timeout_ms": 120_000,
        }
        config.update(overrides)
        return KafkaProducer(**config)

    def consumer(self, *topics: str, group_id: str | None, **overrides: Any):
        """A consumer that commits only when told to: offsets follow durable results."""
        from kafka import KafkaConsumer

        config: dict[str, Any] = {
            **self.client_kwargs(),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": MAX_MESSAGE_BYTES,
            "fetch_max_bytes": 4 * MAX_MESSAGE_BYTES,
        }
        config.update(overrides)
        return KafkaConsumer(*topics, **config)

    def admin(self, **overrides: Any):
        from kafka import KafkaAdminClient

        return KafkaAdminClient(**{**self.client_kwargs(), **overrides})


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


def create_topics(settings: KafkaSettings, topics: list[TopicSpec], timeout_s: float = 60.0) -> None:
    """Create the topics that do not exist yet and wait until every partition has a leader."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = settings.admin()
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            new = [
                NewTopic(t.name, num_partitions=t.partitions, replication_factor=t.replication_factor,
                         topic_configs=dict(t.configs))
                for t in missing
            ]
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass
        _wait_for_leaders(admin, [t.name for t in topics], timeout_s)
    finally:
        admin.close()


def _wait_for_leaders(admin, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_problem = "no metadata yet"
    while time.monotonic() < deadline:
        try:
            described = admin.describe_topics(names)
            problems = []
            for topic in described:
                if topic.get("error_code", 0) != 0:
                    problems.append(f"{topic.get('topic')}: error {topic.get('error_code')}")
                    continue
                partitions = topic.get("partitions") or []
                if not partitions:
                    problems.append(f"{topic.get('topic')}: no partitions")
                problems += [
                    f"{topic.get('topic')}[{p.get('partition_index')}] has no leader"
                    for p in partitions if p.get("leader_id", -1) < 0
                ]
            if not problems:
                return
            last_problem = "; ".join(problems)
        except Exception as exc:  # metadata requests fail while a broker is starting
            last_problem = str(exc)
        time.sleep(0.3)
    raise KafkaError(f"topics {names} not ready after {timeout_s:.0f}s: {last_problem}")


# --------------------------------------------------------------------------- local cluster


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class BrokerNode:
    """One combined broker+controller JVM of the local cluster."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen | None = None
    pid: int | None = None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def is_running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class LocalKafka:
    """Real Apache Kafka in KRaft mode on 127.0.0.1, for tests, the demo and laptops.

    >>> with LocalKafka(brokers=3) as kafka:      # doctest: +SKIP
    ...     kafka.create_topics([TopicSpec("frames", 6, 3)])
    ...     kafka.stop_broker(1); kafka.start_broker(1)
    """

    def __init__(
        self,
        brokers: int = 1,
        *,
        data_dir: str | Path | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "384m",
        broker_overrides: dict[str, str] | None = None,
        listener: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL"] = "PLAINTEXT",
        sasl_users: dict[str, str] | None = None,
        start_timeout_s: float = 90.0,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be >= 1")
        self.version = version
        self.heap = heap
        self.broker_overrides = dict(broker_overrides or {})
        self.listener = listener
        self.sasl_users = dict(sasl_users or {})
        if listener == "SASL_PLAINTEXT" and not self.sasl_users:
            raise ValueError("a SASL_PLAINTEXT listener needs sasl_users")
        self.start_timeout_s = start_timeout_s
        self._own_dir = data_dir is None
        self.root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="judo-kafka-"))
        self.cluster_id = _new_cluster_id()
        self.nodes = [
            BrokerNode(node_id=i + 1, port=free_port(), controller_port=free_port(),
                       data_dir=self.root / f"broker-{i + 1}")
            for i in range(brokers)
        ]
        self.tls = None
        if listener == "SSL":
            from cluster.tls import write_tls_files

            self.tls = write_tls_files(self.root / "tls")
        self._started = False

    # ---- addresses
    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def settings(self, **overrides: Any) -> KafkaSettings:
        """Client settings for this cluster (SASL credentials of the first user, or the client certificate)."""
        values: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self.listener == "SASL_PLAINTEXT":
            user, password = next(iter(self.sasl_users.items()))
            values.update(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                          sasl_plain_username=user, sasl_plain_password=password)
        if self.tls is not None:
            values.update(security_protocol="SSL", ssl_cafile=str(self.tls.ca_cert),
                          ssl_certfile=str(self.tls.client_cert), ssl_keyfile=str(self.tls.client_key))
        values.update(overrides)
        return KafkaSettings(**values)

    # ---- lifecycle
    def start(self) -> "LocalKafka":
        libs = ensure_kafka_jars(self.version)
        self._libs = libs
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            self._write_config(node)
            self._format(node)
        atexit.register(self.stop)
        for node in self.nodes:
            self._launch(node)
        self._started = True
        self.wait_until_ready(expected_brokers=len(self.nodes))
        return self

    def __enter__(self) -> "LocalKafka":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, *, remove_data: bool | None = None) -> None:
        """Stop every broker (SIGTERM to all at once, then SIGKILL after a grace period).

        All brokers are signalled together: stopped one by one, the last ones wait for
        a controller quorum that is already gone.
        """
        running = [n for n in self.nodes if n.is_running()]
        for node in running:
            self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and any(n.is_running() for n in running):
            time.sleep(0.2)
        for node in self.nodes:
            self._terminate(node, sig=signal.SIGKILL)
        if remove_data if remove_data is not None else self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)
        self._started = False

    def stop_broker(self, index: int, *, kill: bool = False) -> None:
        """Stop broker ``index`` (1-based node id) cleanly, or SIGKILL it to simulate a crash."""
        node = self._node(index)
        self._terminate(node, sig=signal.SIGKILL if kill else signal.SIGTERM)

    def start_broker(self, index: int, *, wait: bool = True) -> None:
        """Restart broker ``index`` on its existing data directory and ports."""
        node = self._node(index)
        if node.is_running():
            return
        self._launch(node)
        if wait:
            self._wait_port(node)
            self.wait_until_ready(expected_brokers=sum(n.is_running() for n in self.nodes))

    def running_brokers(self) -> list[int]:
        return [n.node_id for n in self.nodes if n.is_running()]

    def wait_until_ready(self, expected_brokers: int, timeout_s: float | None = None) -> None:
        """Block until the cluster reports ``expected_brokers`` live brokers and a metadata leader."""
        timeout_s = timeout_s or self.start_timeout_s
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.is_running():
                self._wait_port(node, deadline)
        last_error = "not reachable"
        while time.monotonic() < deadline:
            self._raise_if_dead()
            try:
                admin = self.settings().admin(request_timeout_ms=5000)
                try:
                    cluster = admin.describe_cluster()
                    live = len(cluster.get("brokers", []))
                    if live >= expected_brokers and cluster.get("controller_id", -1) is not None:
                        return
                    last_error = f"{live}/{expected_brokers} brokers registered"
                finally:
                    admin.close()
            except Exception as exc:
                last_error = str(exc)
            time.sleep(0.5)
        raise KafkaError(f"Kafka not ready after {timeout_s:.0f}s: {last_error}; logs in {self.root}")

    def create_topics(self, topics: list[TopicSpec], timeout_s: float = 60.0) -> None:
        create_topics(self.settings(), topics, timeout_s)

    # ---- internals
    def _node(self, index: int) -> BrokerNode:
        for node in self.nodes:
            if node.node_id == index:
                return node
        raise ValueError(f"no broker {index}; brokers are {[n.node_id for n in self.nodes]}")

    def _raise_if_dead(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None and node.process.returncode not in (0, -15, 143, -9, 137):
                tail = node.log_path.read_text(errors="replace")[-3000:] if node.log_path.exists() else ""
                raise KafkaError(f"broker {node.node_id} exited with {node.process.returncode}:\n{tail}")

    def _write_config(self, node: BrokerNode) -> None:
        n = len(self.nodes)
        voters = ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in self.nodes)
        listener_name = "CLIENT"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"{listener_name}://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"{listener_name}://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener_name,
            "listener.security.protocol.map": f"{listener_name}:{self.listener},CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir / "logs"),
            "num.partitions": "1",
            "default.replication.factor": str(min(3, n)),
            "min.insync.replicas": str(min(2, n)),
            "offsets.topic.replication.factor": str(min(3, n)),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(min(3, n)),
            "transaction.state.log.min.isr": str(min(2, n)),
            "share.coordinator.state.topic.replication.factor": str(min(3, n)),
            "share.coordinator.state.topic.min.isr": str(min(2, n)),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(MAX_MESSAGE_BYTES),
            "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
            "socket.request.max.bytes": str(4 * MAX_MESSAGE_BYTES),
            "log.flush.interval.messages": "9223372036854775807",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            "log.retention.hours": "24",
        }
        if self.listener == "SASL_PLAINTEXT":
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            admin_user, admin_pw = next(iter(self.sasl_users.items()))
            props.update({
                "sasl.enabled.mechanisms": "PLAIN",
                "sasl.mechanism.inter.broker.protocol": "PLAIN",
                f"listener.name.{listener_name.lower()}.plain.sasl.jaas.config":
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f'username="{admin_user}" password="{admin_pw}" {users};',
            })
        if self.tls is not None:
            props.update({
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.tls.broker_keystore),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.tls.ca_cert),
                "ssl.client.auth": "required",
                "ssl.endpoint.identification.algorithm": "https",
            })
        props.update(self.broker_overrides)
        node.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java_cmd(self, main_class: str, *args: str) -> list[str]:
        return [
            _java(), f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DIST_DIR / 'log4j2.properties'}",
            "-cp", f"{self._libs}/*", main_class, *args,
        ]

    def _format(self, node: BrokerNode) -> None:
        if (node.data_dir / "logs" / "meta.properties").exists():
            return
        cmd = self._java_cmd("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                             "-c", str(node.config_path), "--ignore-formatted")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KafkaError(f"formatting broker {node.node_id} failed:\n{proc.stdout}\n{proc.stderr}")

    def _launch(self, node: BrokerNode) -> None:
        logfile = open(node.log_path, "ab")
        node.process = subprocess.Popen(
            self._java_cmd("kafka.Kafka", str(node.config_path)),
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logfile.close()
        node.pid = node.process.pid

    def _wait_port(self, node: BrokerNode, deadline: float | None = None) -> None:
        deadline = deadline or time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if _port_open(node.port):
                return
            self._raise_if_dead()
            time.sleep(0.2)
        raise KafkaError(f"broker {node.node_id} did not open port {node.port}; see {node.log_path}")

    @staticmethod
    def _signal(node: BrokerNode, sig: int) -> int:
        pid = node.process.pid if node.process is not None else node.pid
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        return pid

    def _terminate(self, node: BrokerNode, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
        if not node.is_running():
            node.process = None
            return
        pid = self._signal(node, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and node.is_running():
            if node.process is not None:
                try:
                    node.process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
        if node.is_running():
            log.warning("broker %s ignored signal %s; killing it", node.node_id, sig)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if node.process is not None:
                node.process.wait(timeout=10)
        node.process = None

    # ---- detached mode for `judo kafka up|down|status`
    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "root": str(self.root),
            "bootstrap_servers": self.bootstrap_servers,
            "nodes": [
                {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port,
                 "data_dir": str(n.data_dir), "pid": n.pid}
                for n in self.nodes
            ],
        }

    @classmethod
    def from_description(cls, state: dict[str, Any]) -> "LocalKafka":
        """Re-attach to brokers started by another process (see ``judo kafka up``)."""
        kafka = cls(brokers=len(state["nodes"]), data_dir=state["root"], version=state["version"])
        kafka.cluster_id = state["cluster_id"]
        kafka.nodes = [
            BrokerNode(node_id=n["node_id"], port=n["port"], controller_port=n["controller_port"],
                       data_dir=Path(n["data_dir"]), pid=n["pid"])
            for n in state["nodes"]
        ]
        kafka._libs = ensure_kafka_jars(kafka.version)
        kafka._started = True
        return kafka


def _new_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, never starting with "-", which the
    storage tool's argument parser would read as an option (one id in 64 did; Kafka's own
    ``Uuid.randomUuid`` skips those for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaError("Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)")
    return java


STATE_FILE = CACHE_ROOT / "kafka-local" / "state.json"


def kafka_up(brokers: int = 1) -> LocalKafka:
    """Start a detached local cluster that outlives this process; remember it in a state file."""
    existing = kafka_attach()
    if existing is not None and existing.running_brokers():
        return existing
    root = STATE_FILE.parent / "data"
    shutil.rmtree(root, ignore_errors=True)
    kafka = LocalKafka(brokers=brokers, data_dir=root)
    kafka.start()
    atexit.unregister(kafka.stop)
    STATE_FILE.write_text(json.dumps(kafka.describe(), indent=2))
    return kafka


def kafka_attach() -> LocalKafka | None:
    if not STATE_FILE.exists():
        return None
    return LocalKafka.from_description(json.loads(STATE_FILE.read_text()))


def kafka_down() -> bool:
    """Stop the detached cluster started by :func:`kafka_up`; True if there was one."""
    kafka = kafka_attach()
    if kafka is None:
        return False
    kafka.stop(remove_data=True)
    STATE_FILE.unlink(missing_ok=True)
    return True
