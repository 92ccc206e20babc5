"""One broker of the local Kafka: its jars, its ``server.properties`` and its JVM process.

* :func:`ensure_kafka_jars` resolves the broker jars from Maven Central through
  ``cluster/kafka_dist/pom.xml`` into ``~/.cache/judo-inspect/kafka/<version>/libs``
  once; later runs start without network.
* :func:`broker_properties` writes a combined broker+controller's configuration;
  :class:`BrokerNode` is one such JVM. :mod:`cluster.local_kafka` runs a cluster of them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cluster.kafka import MAX_MESSAGE_BYTES, KafkaError
from cluster.tls import TlsFiles

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
DIST_DIR = Path(__file__).resolve().parent / "kafka_dist"
CACHE_ROOT = Path(os.environ.get("JUDO_CACHE", Path.home() / ".cache" / "judo-inspect"))

Listener = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"]
#: The SASL mechanism of a SASL_SSL local broker: salted, iterated passwords kept in the KRaft metadata.
SCRAM_MECHANISM = "SCRAM-SHA-512"
#: The broker certificate's principal (cluster.tls): the controller listener admits only it.
BROKER_PRINCIPAL = "User:CN=kafka broker,O=judo-inspect test"
#: The local broker's own super user on a SASL_SSL listener.
ADMIN_USER = "admin"
#: What a local SASL user name or password may contain.
_CREDENTIAL = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")


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


def java_executable() -> str:
    """The ``java`` of ``$JAVA_HOME``, else the one on ``PATH``."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaError("Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)")
    return java


# --------------------------------------------------------------------------- one broker


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
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


def broker_properties(node: BrokerNode, nodes: list[BrokerNode], listener: Listener,
                      sasl_users: dict[str, str], tls: TlsFiles | None,
                      overrides: dict[str, str] | None = None, *,
                      admin: tuple[str, str] | None = None, acls: bool = False) -> dict[str, str]:
    """The ``server.properties`` of one combined broker+controller of the local cluster.

    Replication settings follow the cluster size (at most 3 replicas, min ISR 2); the client
    listener is PLAINTEXT, SASL_PLAINTEXT (PLAIN users, the first one is the inter-broker user),
    SSL with client certificates required, or SASL_SSL: SCRAM-SHA-512 (users created when the
    storage is formatted, ``admin`` the inter-broker user) over TLS with client certificates
    required. With ``acls`` the StandardAuthorizer refuses whatever no ACL allows; the super users
    are ``admin`` and the brokers themselves, whose controller listener then also requires the
    broker certificate (mutual TLS), so nobody else reaches the controllers.
    """
    n = len(nodes)
    voters = ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in nodes)
    listener_name = "CLIENT"
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"{listener_name}://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"{listener_name}://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener_name,
        "listener.security.protocol.map": f"{listener_name}:{listener},CONTROLLER:PLAINTEXT",
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
    if listener == "SASL_PLAINTEXT":
        users = " ".join(f'user_{u}="{p}"' for u, p in sasl_users.items())
        admin_user, admin_pw = next(iter(sasl_users.items()))
        props.update({
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            f"listener.name.{listener_name.lower()}.plain.sasl.jaas.config":
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{admin_user}" password="{admin_pw}" {users};',
        })
    if listener == "SASL_SSL":
        if admin is None:
            raise KafkaError("a SASL_SSL listener needs an inter-broker admin user")
        props.update({
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.{listener_name.lower()}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{admin[0]}" password="{admin[1]}";',
            # a SASL_SSL listener ignores the global ssl.client.auth (KIP-684): ask for certificates by name
            f"listener.name.{listener_name.lower()}.ssl.client.auth": "required",
        })
    if acls:
        if tls is None or admin is None:
            raise KafkaError("ACLs on the local broker need the SASL_SSL listener (users and TLS)")
        props.update({
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{admin[0]};{BROKER_PRINCIPAL}",
            "listener.security.protocol.map": f"{listener_name}:{listener},CONTROLLER:SSL",
            "listener.name.controller.ssl.client.auth": "required",
        })
    if tls is not None:
        props.update({
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.ca_cert),
            "ssl.client.auth": "required",
            "ssl.endpoint.identification.algorithm": "https",
        })
    props.update(overrides or {})
    return props


def scram_admin(sasl_users: dict[str, str]) -> tuple[str, str]:
    """Check a SASL_SSL local broker's users (they go into JAAS lines and storage-tool arguments) and
    make its own super user, :data:`ADMIN_USER` with a random password (inter-broker traffic, topics, ACLs)."""
    if ADMIN_USER in sasl_users:
        raise ValueError(f"{ADMIN_USER!r} is the broker's own super user; name the users otherwise")
    bad = [u for u, pw in sasl_users.items() if not (_CREDENTIAL.match(u) and _CREDENTIAL.match(pw))]
    if bad:
        raise ValueError(f"SASL user names and passwords may hold only letters, digits and ._~- (users {bad})")
    return ADMIN_USER, secrets.token_urlsafe(24)


def new_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, never starting with "-", which the
    storage tool's argument parser would read as an option (one id in 64 did; Kafka's own
    ``Uuid.randomUuid`` skips those for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
