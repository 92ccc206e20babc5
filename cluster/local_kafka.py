"""Real Apache Kafka (KRaft) on 127.0.0.1 for laptops, the tests and the demo.

:class:`LocalKafka` starts one broker or a cluster of N combined broker+controller nodes
(:mod:`cluster.kafka_broker`) with free ports and its own data directories, waits until the
cluster serves, creates topics, stops and restarts single brokers on the same data
directory, and leaves no JVM behind. Its client listener is PLAINTEXT, SASL_PLAINTEXT
(PLAIN users), SSL (mutual TLS with a throwaway CA from :mod:`cluster.tls`) or SASL_SSL
(SCRAM-SHA-512 users over mutual TLS), optionally with ACLs enforced (``acls=True``).
:mod:`cluster.kafka_detached` keeps one such cluster running between commands
(``judo kafka up [--secure]|down|status``).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cluster.kafka import AccessGrant, KafkaError, KafkaSettings, TopicSpec, create_topics, grant_access
from cluster.kafka_broker import (
    DIST_DIR,
    KAFKA_VERSION,
    SCRAM_MECHANISM,
    BrokerNode,
    Listener,
    broker_properties,
    ensure_kafka_jars,
    free_port,
    java_executable,
    new_cluster_id,
    port_open,
    scram_admin,
)
from cluster.secrets import write_secret_file
from cluster.tls import write_tls_files

log = logging.getLogger(__name__)


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
        listener: Listener = "PLAINTEXT",
        sasl_users: dict[str, str] | None = None,
        acls: bool = False,
        start_timeout_s: float = 90.0,
        tls_days: int = 2,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be >= 1")
        self.version = version
        self.heap = heap
        self.broker_overrides = dict(broker_overrides or {})
        self.listener = listener
        self.sasl_users = dict(sasl_users or {})
        if listener in ("SASL_PLAINTEXT", "SASL_SSL") and not self.sasl_users:
            raise ValueError(f"a {listener} listener needs sasl_users")
        if acls and listener != "SASL_SSL":
            raise ValueError("acls=True needs listener='SASL_SSL' (principals come from SCRAM users)")
        self.acls = acls
        self.admin = scram_admin(self.sasl_users) if listener == "SASL_SSL" else None
        self.start_timeout_s = start_timeout_s
        self._own_dir = data_dir is None
        self.root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="judo-kafka-"))
        self.cluster_id = new_cluster_id()
        self.nodes = [
            BrokerNode(node_id=i + 1, port=free_port(), controller_port=free_port(),
                       data_dir=self.root / f"broker-{i + 1}")
            for i in range(brokers)
        ]
        self.tls = write_tls_files(self.root / "tls", days=tls_days) if listener in ("SSL", "SASL_SSL") else None
        #: whether :meth:`settings` names passwords by file unless told otherwise (a re-attached cluster knows no other)
        self.password_files = False
        self._started = False

    # ---- addresses
    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def settings(self, user: str | None = None, *, password_file: bool | None = None,
                 **overrides: Any) -> KafkaSettings:
        """Client settings for this cluster: the client certificate and/or SASL credentials of ``user``
        (default: the first user). ``password_file`` names the password by a 0600 file in the cluster's
        folder instead of carrying it inline (default: :attr:`password_files`)."""
        values: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self.tls is not None:
            values.update(security_protocol="SSL", ssl_cafile=str(self.tls.ca_cert),
                          ssl_certfile=str(self.tls.client_cert), ssl_keyfile=str(self.tls.client_key))
        if self.listener in ("SASL_PLAINTEXT", "SASL_SSL"):
            users = self._all_users
            user = user or next(iter(self.sasl_users))
            if user not in users:
                raise ValueError(f"no SASL user {user!r} on this cluster (users: {sorted(users)})")
            values.update(security_protocol=self.listener,
                          sasl_mechanism="PLAIN" if self.listener == "SASL_PLAINTEXT" else SCRAM_MECHANISM,
                          sasl_plain_username=user)
            if self.password_files if password_file is None else password_file:
                values["sasl_plain_password_file"] = str(self.password_file(user))
            elif users[user] is None:
                raise ValueError(f"{user}'s password is known only by its file here: pass password_file=True")
            else:
                values["sasl_plain_password"] = users[user]
        values.update(overrides)
        return KafkaSettings(**values)

    def admin_settings(self, **overrides: Any) -> KafkaSettings:
        """Settings of the broker's super user (SASL_SSL): topics, ACLs, reading anything."""
        if self.admin is None:
            return self.settings(**overrides)
        return self.settings(self.admin[0], **overrides)

    def password_file(self, user: str) -> Path:
        """A 0600 file in the cluster's folder holding ``user``'s password (written on first use)."""
        path = self.password_path(user)
        if not path.exists():
            write_secret_file(path, self._all_users[user])
        return path

    def password_path(self, user: str) -> Path:
        return self.root / "secrets" / f"{user}.password"

    @property
    def _all_users(self) -> dict[str, str | None]:
        return dict(self.sasl_users, **dict([self.admin] if self.admin else []))

    def grant(self, *grants: AccessGrant) -> None:
        """Write ACLs (``acls=True`` clusters) as the super user."""
        grant_access(self.admin_settings(), *grants)

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
                admin = self.admin_settings().admin(request_timeout_ms=5000)
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
        create_topics(self.admin_settings(), topics, timeout_s)

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
        props = broker_properties(node, self.nodes, self.listener, self.sasl_users, self.tls, self.broker_overrides,
                                  admin=self.admin, acls=self.acls)
        node.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        node.config_path.chmod(0o600)  # SASL listeners' JAAS lines hold the inter-broker password

    def _java_cmd(self, main_class: str, *args: str) -> list[str]:
        return [
            java_executable(), f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DIST_DIR / 'log4j2.properties'}",
            "-cp", f"{self._libs}/*", main_class, *args,
        ]

    def _format(self, node: BrokerNode) -> None:
        if (node.data_dir / "logs" / "meta.properties").exists():
            return
        cmd = self._java_cmd("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                             "-c", str(node.config_path), "--ignore-formatted")
        if self.listener == "SASL_SSL":  # SCRAM users live in the metadata log, written at format time
            for user, password in [self.admin, *self.sasl_users.items()]:
                cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            output = f"{proc.stdout}\n{proc.stderr}"
            for password in self._all_users.values():
                output = output.replace(password, "***")
            raise KafkaError(f"formatting broker {node.node_id} failed:\n{output}")

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
            if port_open(node.port):
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

    # ---- what `judo kafka up|down|status` (cluster.kafka_detached) remembers: paths and names, never a password
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
            "listener": self.listener,
            "acls": self.acls,
            "users": list(self.sasl_users),
            "admin_user": self.admin[0] if self.admin else None,
            "tls": {name: str(path) for name, path in asdict(self.tls).items()} if self.tls else None,
        }
