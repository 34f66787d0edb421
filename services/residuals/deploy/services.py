"""The services a deployment runs, and what each may do on Kafka.

The names are the same everywhere: package ``residuals.<name>``, compose service,
Kubernetes workload (Deployment, or StatefulSet for a static consumer-group member) and
Service, Helm values key and ``OTEL_SERVICE_NAME``.

Kafka access is least privilege and written once, here: the chart's KafkaUser ACLs and
the ACL script for clusters without Strimzi are both generated from it, and a unit test
checks that every catalogue topic a service's code references is covered. A service
without Kafka access (``kafka=None``: the HTTP gateway) has no principal at all.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType
from typing import Any

from residuals.platform import topics
from residuals.platform.config import TelemetrySettings
from residuals.platform.topics import Topic

#: Port every gRPC service listens on inside its container (GrpcSettings default).
GRPC_PORT = 50051
#: Prometheus /metrics port inside every container (METRICS_PORT).
METRICS_PORT = 9464


class Kind(StrEnum):
    """``grpc``: serves an API to callers. ``worker``: a stream processor that serves only
    gRPC health (for probes) and metrics; it scales with topic partitions. ``http``: serves
    an HTTP API, with ``/healthz`` (alive) and ``/readyz`` (ready) for probes; no gRPC
    server of its own (it may call the gRPC services)."""

    GRPC = "grpc"
    WORKER = "worker"
    HTTP = "http"


@dataclass(frozen=True)
class Group:
    """A consumer-group id prefix, granted as a *prefixed* ACL (``ledger-writer`` also
    covers ``ledger-writer-replay``). ``prefixed``: the service puts
    ``RESIDUALS_TOPIC_PREFIX`` in front of it (most do; the alerts service does not)."""

    name: str
    prefixed: bool = True


@dataclass(frozen=True)
class KafkaAccess:
    """What a service's Kafka principal may do.

    ``internal`` is the faust app id: faust names its consumer group and the topics it
    creates itself (``<app id>-<table>-changelog``, ``<app id>-__assignor-__leader``)
    after it. ``transactional`` is a transactional-id prefix (topic prefix applied).
    ``mentions`` are topics the code only names (a record's source position), without
    reading or writing them: no ACL.
    """

    reads: tuple[Topic, ...] = ()
    writes: tuple[Topic, ...] = ()
    groups: tuple[Group, ...] = ()
    internal: str | None = None
    transactional: str | None = None
    mentions: tuple[Topic, ...] = ()


@dataclass(frozen=True)
class Service:
    """One service. ``member_id``: the variable that makes it a *static* member of its
    consumer group (``group.instance.id``); each replica needs its own value, stable across
    its restarts and rollouts, so the chart runs such a service as a StatefulSet and takes
    the value from the pod name. ``receipt_key``: it stamps or verifies the gateway's
    receipt times, so it gets the shared ``RESIDUALS_RECEIPT_KEY`` from a Secret.
    ``kafka`` None: no Kafka client at all (no principal, no KafkaUser, no Kafka settings
    or egress). ``port_env``: the variable the port it serves is set by (``GRPC_PORT``
    for the gRPC and worker kinds, the HTTP server's own for :attr:`Kind.HTTP`).
    ``residuals deploy check`` compares these flags with the settings the code reads."""

    name: str
    kind: Kind
    summary: str
    kafka: KafkaAccess | None
    database: bool = True
    member_id: str | None = None
    receipt_key: bool = False
    port_env: str = "GRPC_PORT"

    def __post_init__(self) -> None:
        if (self.kind is Kind.HTTP) == (self.port_env == "GRPC_PORT"):
            raise ValueError(
                f"{self.name}: an HTTP service names its own port variable (port_env); "
                "the gRPC and worker kinds serve on GRPC_PORT"
            )

    @property
    def module(self) -> str:
        """What ``python -m`` runs."""
        return f"residuals.{self.name}"

    @property
    def principal(self) -> str | None:
        """Kafka principal (SASL/SCRAM user) of the service; None without Kafka access."""
        return None if self.kafka is None else f"residuals-{self.name}"


SERVICES: tuple[Service, ...] = (
    Service(
        "licensing",
        Kind.GRPC,
        "LicenceService (licence registry), ApprovalService (review before use) and the "
        "outbox relay to the compacted topics",
        KafkaAccess(
            # The relay reads the topics' tails to recover the last published outbox id.
            reads=(topics.LICENCES, topics.SIGNING_KEYS, topics.APPROVALS),
            writes=(topics.LICENCES, topics.SIGNING_KEYS, topics.APPROVALS),
            groups=(Group("residuals-licensing"),),
            transactional="residuals-licensing",
        ),
    ),
    Service(
        "ingest",
        Kind.GRPC,
        "IngestService: the gRPC gateway for vendors without Kafka",
        KafkaAccess(writes=(topics.USAGE, topics.USAGE_DLQ)),
        receipt_key=True,
    ),
    Service(
        "meter",
        Kind.WORKER,
        "faust-streaming worker: validate, de-duplicate, scope, quota and price each event",
        KafkaAccess(
            reads=(topics.USAGE, topics.LICENCES, topics.SIGNING_KEYS, topics.APPROVALS),
            writes=(topics.USAGE_RATED, topics.ALERTS, topics.USAGE_DLQ, topics.QUARANTINE),
            # Licence and key replicas assign partitions themselves; their group ids are
            # required by the client but never join or commit.
            groups=(Group("replica-meter"),),
            internal="meter",
        ),
        database=False,
        member_id="METER_INSTANCE_ID",
        receipt_key=True,
    ),
    Service(
        "ledger",
        Kind.WORKER,
        "Kafka -> PostgreSQL writer: rated events and dead letters, offsets in the same "
        "transaction",
        KafkaAccess(
            reads=(topics.USAGE_RATED, topics.USAGE_DLQ, topics.QUARANTINE),
            groups=(Group("ledger-writer"),),
            mentions=(topics.USAGE,),
        ),
        member_id="SINK_GROUP_INSTANCE_ID",
    ),
    Service(
        "payouts",
        Kind.GRPC,
        "PayoutService: period close, statements, payouts and their event stream",
        KafkaAccess(writes=(topics.PAYOUTS,)),
    ),
    Service(
        "alerts",
        Kind.GRPC,
        "AlertService: stores alerts, streams them (WatchAlerts), suspends licences",
        KafkaAccess(reads=(topics.ALERTS,), groups=(Group("residuals-alerts", prefixed=False),)),
        member_id="SINK_GROUP_INSTANCE_ID",
    ),
    Service(
        "notify",
        Kind.GRPC,
        "NotificationService: signed webhooks (Standard Webhooks) for alerts, licence "
        "changes, approvals, statements, payouts and rejected usage; WatchRejections",
        KafkaAccess(
            reads=(
                topics.ALERTS,
                topics.LICENCES,
                topics.APPROVALS,
                topics.PAYOUTS,
                topics.USAGE_DLQ,
            ),
            groups=(Group("residuals-notify"),),
        ),
        member_id="SINK_GROUP_INSTANCE_ID",
    ),
    Service(
        "gateway",
        Kind.HTTP,
        "HTTP/JSON gateway: the gRPC APIs as JSON routes (and Watch streams as server-sent "
        "events), forwarded with the caller's API key",
        # It only calls the gRPC services: no Kafka client, no principal, no database.
        kafka=None,
        database=False,
        port_env="GATEWAY_PORT",
    ),
)

#: What a vendor's own principal may do: publish usage, nothing else (see acl_rules).
VENDOR_WRITES: tuple[Topic, ...] = (topics.USAGE,)


def by_name(name: str) -> Service:
    for service in SERVICES:
        if service.name == name:
            return service
    raise KeyError(f"unknown service {name!r}")


SETTINGS_MODULES = ("config", "settings")


class SettingsDiscoveryError(RuntimeError):
    """A service package exists but its settings class cannot be identified."""


def _is_settings_class(obj: Any, module: str) -> bool:
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        return False
    if obj.__module__ != module:
        return False
    hints = typing.get_type_hints(obj)
    return any(
        f.metadata.get("group") and hints.get(f.name) is TelemetrySettings
        for f in dataclasses.fields(obj)
    )


def settings_class(name: str) -> type[Any] | None:
    """The service's one settings dataclass, or None while its package has not landed.

    Convention (every service follows it): ``residuals.<name>.config`` or
    ``residuals.<name>.settings`` defines exactly one dataclass with a
    :class:`TelemetrySettings` group - the object its ``__main__`` loads.
    """
    for leaf in SETTINGS_MODULES:
        module_name = f"residuals.{name}.{leaf}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name in (f"residuals.{name}", module_name):
                continue
            raise
        break
    else:
        return None
    return find_settings(module)


def find_settings(module: ModuleType) -> type[Any]:
    """The one settings dataclass defined in ``module``; SettingsDiscoveryError otherwise."""
    found = [obj for obj in vars(module).values() if _is_settings_class(obj, module.__name__)]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise SettingsDiscoveryError(
            f"{module.__name__} must define exactly one settings dataclass with a telemetry "
            f"group; found {names}"
        )
    settings: type[Any] = found[0]
    return settings
