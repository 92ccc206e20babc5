"""``judo kafka up [--secure]|down|status``: one local Kafka that outlives the command that started it.

:func:`kafka_up` starts a :class:`~cluster.local_kafka.LocalKafka` detached and remembers it in a state
file; :func:`kafka_attach` finds it again from another process and :func:`kafka_down` stops it.

With ``secure=True`` it is a plant's set-up in small: the only client listener is SASL_SSL (SCRAM-SHA-512
over mutual TLS), ACLs are enforced, the default topics exist, and each principal of :class:`SecureLayout`
has a random password in a 0600 file and its least-privilege grant. The state file and
:func:`secure_summary` hold file paths and user names, never a password.
"""

from __future__ import annotations

import atexit
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster.kafka import AccessGrant, KafkaError, TopicSpec, pipeline_grant
from cluster.kafka_broker import CACHE_ROOT, SCRAM_MECHANISM, BrokerNode, ensure_kafka_jars
from cluster.local_kafka import LocalKafka
from cluster.tls import TlsFiles

STATE_FILE = CACHE_ROOT / "kafka-local" / "state.json"
#: Days the secured cluster's throwaway certificates stay valid (a detached cluster may run for a while).
SECURE_TLS_DAYS = 30


@dataclass(frozen=True)
class SecureLayout:
    """What a secured local cluster is made for: the pipeline config's default topics and consumer group
    (``topics`` and ``ingest.group_id`` in :mod:`pipelines.config`), and one principal per role."""

    frames: str = "frames"
    verdicts: str = "verdicts"
    dead_letters: str = "frames.dead-letters"
    feedback: str = "verdicts.feedback"
    group_id: str = "judo-inspect"
    partitions: int = 6

    def grants(self) -> dict[str, AccessGrant]:
        """Principal -> its grant. The first is the one ``kafka.mode: embedded`` attaches as."""
        return {
            "judo-pipeline": pipeline_grant("judo-pipeline", frames=self.frames, verdicts=self.verdicts,
                                            dead_letters=self.dead_letters, feedback=self.feedback,
                                            group_id=self.group_id),
            "judo-dashboard": AccessGrant("judo-dashboard", read=(self.frames, self.verdicts), write=(self.feedback,)),
            "judo-camera": AccessGrant("judo-camera", write=(self.frames,)),
        }

    def topics(self, brokers: int) -> list[TopicSpec]:
        """The topics as ``judo run`` would create them (its principal may not: they exist beforehand)."""
        replication = min(3, brokers)
        return [TopicSpec(self.frames, self.partitions, replication),
                TopicSpec(self.verdicts, self.partitions, replication),
                TopicSpec(self.dead_letters, 1, replication), TopicSpec(self.feedback, 1, replication)]


def kafka_up(brokers: int = 1, *, secure: bool = False) -> LocalKafka:
    """Start a detached local cluster that outlives this process (or return the running one); remember it in
    :data:`STATE_FILE`. ``secure``: SCRAM-SHA-512 over mutual TLS with ACLs, as :class:`SecureLayout` says."""
    existing = kafka_attach()
    if existing is not None and existing.running_brokers():
        if (existing.listener == "SASL_SSL") != secure:
            raise KafkaError(f"a local Kafka is already running at {existing.bootstrap_servers} with a "
                             f"{existing.listener} listener; stop it with `judo kafka down` first")
        return existing
    root = STATE_FILE.parent / "data"
    shutil.rmtree(root, ignore_errors=True)
    layout = SecureLayout()
    if secure:
        users = {user: secrets.token_urlsafe(24) for user in layout.grants()}
        kafka = LocalKafka(brokers=brokers, data_dir=root, listener="SASL_SSL", sasl_users=users, acls=True,
                           tls_days=SECURE_TLS_DAYS)
        kafka.password_files = True
    else:
        kafka = LocalKafka(brokers=brokers, data_dir=root)
    kafka.start()
    try:
        if secure:
            for user in (*users, kafka.admin[0]):
                kafka.password_file(user)
            kafka.create_topics(layout.topics(brokers))
            kafka.grant(*layout.grants().values())
    except Exception:
        kafka.stop(remove_data=True)
        raise
    atexit.unregister(kafka.stop)
    STATE_FILE.write_text(json.dumps(kafka.describe(), indent=2))
    return kafka


def from_description(state: dict[str, Any]) -> LocalKafka:
    """Re-attach to brokers another process started (:func:`kafka_up`). A secured cluster's passwords stay in
    their files: its :meth:`~cluster.local_kafka.LocalKafka.settings` name them by file."""
    kafka = LocalKafka(brokers=len(state["nodes"]), data_dir=state["root"], version=state["version"])
    kafka.cluster_id = state["cluster_id"]
    kafka.nodes = [
        BrokerNode(node_id=n["node_id"], port=n["port"], controller_port=n["controller_port"],
                   data_dir=Path(n["data_dir"]), pid=n["pid"])
        for n in state["nodes"]
    ]
    if state.get("listener", "PLAINTEXT") != "PLAINTEXT":
        kafka.listener, kafka.acls = state["listener"], state["acls"]
        kafka.tls = TlsFiles(**{name: Path(path) for name, path in state["tls"].items()}) if state["tls"] else None
        kafka.sasl_users = dict.fromkeys(state["users"])
        kafka.admin = (state["admin_user"], None) if state["admin_user"] else None
        kafka.password_files = True
    kafka._libs = ensure_kafka_jars(kafka.version)
    kafka._started = True
    return kafka


def kafka_attach() -> LocalKafka | None:
    if not STATE_FILE.exists():
        return None
    return from_description(json.loads(STATE_FILE.read_text()))


def kafka_down() -> bool:
    """Stop the detached cluster started by :func:`kafka_up`; True if there was one."""
    kafka = kafka_attach()
    if kafka is None:
        return False
    kafka.stop(remove_data=True)
    STATE_FILE.unlink(missing_ok=True)
    return True


def _what(grant: AccessGrant) -> str:
    parts = []
    if grant.read:
        parts.append(f"reads {', '.join(grant.read)}" + (f" (group {', '.join(grant.groups)})" if grant.groups else ""))
    if grant.write:
        parts.append(f"writes {', '.join(grant.write)}")
    return "; ".join(parts)


def secure_summary(kafka: LocalKafka) -> str:
    """What ``judo kafka up --secure`` prints: where the CA, the client certificate and key, and each principal's
    password file are, and the pipeline config's ``kafka`` section that uses them. Never a password."""
    grants = SecureLayout().grants()
    tls = kafka.tls
    width = max(len(user) for user in kafka._all_users)
    lines = [
        f"bootstrap servers:  {kafka.bootstrap_servers}",
        f"security:           SASL_SSL only: {SCRAM_MECHANISM} over mutual TLS; ACLs enforced (what no ACL "
        f"grants is refused)",
        f"CA certificate:     {tls.ca_cert}",
        f"client certificate: {tls.client_cert}",
        f"client key:         {tls.client_key}  (unencrypted, 0600; a throwaway CA for this machine only)",
        "password files (0600; the passwords are not printed):",
        *(f"  {user:<{width}}  {kafka.password_path(user)}  "
          f"{_what(grants[user]) if user in grants else 'super user: topics and ACLs'}" for user in kafka._all_users),
        f"topics: {', '.join(f'{t.name} ({t.partitions})' for t in SecureLayout().topics(len(kafka.nodes)))}",
        "",
        "kafka.mode: embedded attaches as judo-pipeline by itself. To name the cluster explicitly, in the pipeline",
        "config (the dashboard and cameras: the same with their user and password file):",
        "",
    ]
    settings = kafka.settings(next(iter(grants)), password_file=True)
    section = {"kafka": {"mode": "external", "settings": settings.model_dump(exclude_defaults=True)}}
    return "\n".join(lines) + "\n" + yaml.safe_dump(section, sort_keys=False)
