"""How to reach any Kafka: client settings with the project's delivery semantics, and topics.

:class:`KafkaSettings` describes a cluster (bootstrap servers plus SSL / SASL settings) and
builds kafka-python clients (``acks=all``, idempotent producer, manual commits);
:func:`create_topics` makes topics and waits for their leaders; :class:`AccessGrant` and
:func:`grant_access` write the ACLs of a least-privilege principal. Passwords may be named by an
environment variable or a file (``*_env`` / ``*_file``), read only when a client is built, so
settings shipped to Ray actors carry the reference, not the secret. The embedded broker for
laptops, tests and the demo is :mod:`cluster.local_kafka`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.errors import TopicAlreadyExistsError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.secrets import SecretError, read_secret

#: Largest record the clients and the embedded brokers accept; frames are images.
MAX_MESSAGE_BYTES = 20 * 1024 * 1024


class KafkaError(RuntimeError):
    """Kafka could not be fetched, started, reached or stopped; the message says why."""


#: SASL mechanisms kafka-python knows but this project cannot configure, and why.
UNSUPPORTED_MECHANISMS = {
    "OAUTHBEARER": "it needs a token provider object in the client, which a config cannot carry",
    "GSSAPI": "Kerberos (a keytab, kinit and the gssapi package) is not wired into the clients",
}


class KafkaSettings(BaseModel):
    """How to reach a Kafka cluster: the embedded one or an external one."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = Field(..., description="comma-separated host:port list")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = Field(None, repr=False, description="the client key's password; prefer "
                                     "ssl_password_env or ssl_password_file")
    ssl_password_env: str | None = Field(None, description="environment variable holding ssl_password")
    ssl_password_file: str | None = Field(None, description="file holding ssl_password (first line)")
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = Field(None, repr=False, description="the SASL password inline; prefer "
                                            "sasl_plain_password_env or sasl_plain_password_file")
    sasl_plain_password_env: str | None = Field(None, description="environment variable holding the SASL password, "
                                                "read where each client is built (every node needs it)")
    sasl_plain_password_file: str | None = Field(None, description="file holding the SASL password (first line), "
                                                 "read where each client is built (every node needs it)")
    client_id: str = "judo-inspect"
    request_timeout_ms: int = 30_000

    @model_validator(mode="after")
    def _workable_security(self) -> "KafkaSettings":
        if self.sasl_mechanism in UNSUPPORTED_MECHANISMS:
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} is not supported: "
                             f"{UNSUPPORTED_MECHANISMS[self.sasl_mechanism]}; use SCRAM-SHA-512 over SASL_SSL")
        if "SASL" in self.security_protocol:
            if self.sasl_mechanism is None:
                raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism "
                                 "(SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN)")
            if not self.sasl_plain_username:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_plain_username")
        for name in ("sasl_plain_password", "ssl_password"):
            sources = [s for s in (name, f"{name}_env", f"{name}_file") if getattr(self, s)]
            if len(sources) > 1:
                raise ValueError(f"give {name} one way only (got {', '.join(sources)})")
        return self

    def secret(self, name: Literal["sasl_plain_password", "ssl_password"]) -> str | None:
        """The password ``name``, from its inline value, environment variable or file."""
        try:
            return read_secret(value=getattr(self, name), env=getattr(self, f"{name}_env"),
                               file=getattr(self, f"{name}_file"), what=f"kafka {name}")
        except SecretError as exc:
            raise KafkaError(str(exc)) from None

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
                ssl_password=self.secret("ssl_password"),
                ssl_check_hostname=self.ssl_check_hostname,
            )
        if "SASL" in self.security_protocol:
            if self.sasl_mechanism is None:
                raise KafkaError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_plain_username,
                sasl_plain_password=self.secret("sasl_plain_password"),
            )
        return kwargs

    def producer(self, **overrides: Any) -> KafkaProducer:
        """A durable producer: every write acknowledged by all in-sync replicas, no duplicates on retry."""
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

    def consumer(self, *topics: str, group_id: str | None, **overrides: Any) -> KafkaConsumer:
        """A consumer that commits only when told to: offsets follow durable results."""
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

    def admin(self, **overrides: Any) -> KafkaAdminClient:
        return KafkaAdminClient(**{**self.client_kwargs(), **overrides})


@dataclass(frozen=True)
class AccessGrant:
    """What one principal may do: read ``read`` topics (as a member of ``groups``), write ``write`` topics.

    The pipeline's grant is :func:`pipeline_grant`; anything not granted is refused by the broker's
    authorizer. Describe is implied by read and write, and idempotent writes by write (Kafka >= 3.0).
    """

    user: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def acls(self) -> list[ACL]:
        principal = f"User:{self.user}"

        def allow(operation: ACLOperation, kind: ResourceType, name: str) -> ACL:
            return ACL(principal, "*", operation, ACLPermissionType.ALLOW,
                       ResourcePattern(kind, name, ACLResourcePatternType.LITERAL))

        return ([allow(ACLOperation.READ, ResourceType.TOPIC, t) for t in self.read]
                + [allow(ACLOperation.WRITE, ResourceType.TOPIC, t) for t in self.write]
                + [allow(ACLOperation.READ, ResourceType.GROUP, g) for g in self.groups])


def pipeline_grant(user: str, *, frames: str, verdicts: str, dead_letters: str, feedback: str,
                   group_id: str) -> AccessGrant:
    """The pipeline's least privilege: read the frames (in its consumer group), write verdicts,
    dead letters and feedback, nothing else (no topic creation, no reading its own output)."""
    return AccessGrant(user, read=(frames,), write=(verdicts, dead_letters, feedback), groups=(group_id,))


def grant_access(admin_settings: "KafkaSettings", *grants: AccessGrant) -> None:
    """Write the grants' ACLs with a principal allowed to alter them (a super user)."""
    acls = [acl for grant in grants for acl in grant.acls()]
    admin = admin_settings.admin()
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    if result.get("failed"):
        raise KafkaError(f"ACLs not created: {[(str(acl), str(err)) for acl, err in result['failed']]}")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


def create_topics(settings: KafkaSettings, topics: list[TopicSpec], timeout_s: float = 60.0) -> None:
    """Create the topics that do not exist yet and wait until every partition has a leader."""
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
