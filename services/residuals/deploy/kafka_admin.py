"""Kafka set-up for clusters without an operator: topics through the admin API, and the
SASL/SCRAM principals and ACLs as a ``kafka-acls.sh`` script.

With Strimzi the chart declares the same things as ``KafkaTopic``/``KafkaUser`` resources
(from the same catalogue), so this module is what docker-compose and plain clusters use.

Partitions are never added to an existing topic here. Records are placed by key
(``licence_id``), and the meter's faust tables are co-partitioned with the usage topic:
growing a topic would move keys between partitions under a running table. Choose the
partition count up front (it caps the meter's and the ledger's parallelism); a topic with
fewer partitions than asked is reported, and growing it is a planned operation.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from residuals.deploy.catalogue import AclRule, service_acls, vendor_acls, vendor_principal
from residuals.deploy.services import SERVICES
from residuals.platform import topics
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin, topic_name
from residuals.platform.topics import Topic

Log = Callable[[str], None]


@dataclass(frozen=True)
class TopicState:
    """An existing topic as the broker reports it."""

    partitions: int
    config: Mapping[str, str]


@dataclass(frozen=True)
class TopicPlan:
    create: list[str] = field(default_factory=list)
    alter: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def desired_config(topic: Topic, min_insync_replicas: int | None) -> dict[str, str]:
    config = dict(topic.config())
    if min_insync_replicas is not None:
        config["min.insync.replicas"] = str(min_insync_replicas)
    return config


def plan_topics(
    wanted: Sequence[Topic],
    existing: Mapping[str, TopicState],
    *,
    prefix: str,
    partitions: int,
    min_insync_replicas: int | None = None,
) -> TopicPlan:
    """What to create and which configs to change so the cluster matches the catalogue."""
    plan = TopicPlan()
    for topic in wanted:
        name = topic.qualified(prefix)
        state = existing.get(name)
        if state is None:
            plan.create.append(name)
            continue
        if state.partitions < partitions:
            plan.warnings.append(
                f"{name} has {state.partitions} partitions, fewer than the {partitions} asked "
                "for; not grown (it would move keys between partitions: plan it)"
            )
        changes = {
            key: value
            for key, value in desired_config(topic, min_insync_replicas).items()
            if state.config.get(key) != value
        }
        if changes:
            plan.alter[name] = changes
    return plan


def _existing(admin: Any, names: Iterable[str], timeout: float) -> dict[str, TopicState]:
    # confluent-kafka re-exports these without __all__; mypy strict sees no export.
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    metadata = admin.list_topics(timeout=timeout)
    present = [n for n in names if n in metadata.topics]
    if not present:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in present]
    states: dict[str, TopicState] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        entries = future.result()
        states[resource.name] = TopicState(
            partitions=len(metadata.topics[resource.name].partitions),
            config={key: str(entry.value) for key, entry in entries.items()},
        )
    return states


def ensure_topics(
    kafka: KafkaSettings,
    *,
    replication_factor: int,
    min_insync_replicas: int | None = None,
    log: Log = print,
    timeout: float = 30.0,
    admin: Any = None,
) -> TopicPlan:
    """Create missing catalogue topics and align the configs of existing ones (idempotent)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
        ResourceType,
    )

    client = admin if admin is not None else make_admin(kafka)
    by_name = {topic_name(kafka, t): t for t in topics.ALL}
    plan = plan_topics(
        topics.ALL,
        _existing(client, by_name, timeout),
        prefix=kafka.topic_prefix,
        partitions=kafka.topic_partitions,
        min_insync_replicas=min_insync_replicas,
    )
    if plan.create:
        new = [
            NewTopic(
                name,
                num_partitions=kafka.topic_partitions,
                replication_factor=replication_factor,
                config=desired_config(by_name[name], min_insync_replicas),
            )
            for name in plan.create
        ]
        for name, future in client.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result()
                log(f"created topic {name} ({kafka.topic_partitions} partitions)")
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                log(f"topic {name} was created concurrently")
    for name, changes in plan.alter.items():
        entries = [
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            for key, value in sorted(changes.items())
        ]
        resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
        for future in client.incremental_alter_configs([resource]).values():
            future.result()
        log(f"topic {name}: set {', '.join(f'{k}={v}' for k, v in sorted(changes.items()))}")
    for warning in plan.warnings:
        log(f"warning: {warning}")
    if not plan.create and not plan.alter:
        log(f"all {len(topics.ALL)} topics present with the catalogue's settings")
    return plan


# --- SASL/SCRAM principals and ACLs as a script -----------------------------------------

_RESOURCE_FLAG = {
    "topic": "--topic",
    "group": "--group",
    "transactionalId": "--transactional-id",
}
_PATTERN = {"literal": "literal", "prefix": "prefixed"}


def _acl_lines(principal: str, rules: Sequence[AclRule], topic_prefix: str) -> list[str]:
    lines = []
    for rule in rules:
        ops = " ".join(f"--operation {op}" for op in rule.operations)
        if rule.resource == "cluster":
            target = "--cluster"
        else:
            name = shlex.quote(rule.full_name(topic_prefix))
            target = (
                f"{_RESOURCE_FLAG[rule.resource]} {name} --resource-pattern-type "
                + (_PATTERN[rule.pattern])
            )
        lines.append(f"acl --allow-principal User:{principal} {ops} {target}")
    return lines


def acl_script(
    vendors: Sequence[str],
    *,
    topic_prefix: str = "",
    mechanism: str = "SCRAM-SHA-512",
    vendor_producer_byte_rate: int | None = None,
) -> str:
    """A bash script that creates every principal with its SCRAM credential and ACLs."""
    for vendor in vendors:
        vendor_principal(vendor)  # validates the id
    out = [
        "#!/usr/bin/env bash",
        "# Kafka SASL/SCRAM principals and ACLs for Residuals, generated by",
        "# `residuals deploy acls` from residuals.deploy.services: do not edit, regenerate.",
        "#",
        "# BOOTSTRAP     an admin listener, host:port",
        "# ADMIN_CONFIG  client properties of a super user (security.protocol, sasl.*)",
        "# PASSWORD_DIR  one file per principal, named after it, holding its password",
        "#               (the same value goes into that service's KAFKA_SASL_PASSWORD)",
        "# KAFKA_BIN     directory of kafka-acls.sh / kafka-configs.sh (default: on PATH)",
        "set -euo pipefail",
        ': "${BOOTSTRAP:?set BOOTSTRAP}" "${ADMIN_CONFIG:?set ADMIN_CONFIG}"',
        ': "${PASSWORD_DIR:?set PASSWORD_DIR}"',
        'bin="${KAFKA_BIN:+$KAFKA_BIN/}"',
        "acl() {",
        '  "${bin}kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" '
        '--command-config "$ADMIN_CONFIG" --add --force "$@" >/dev/null',
        "}",
        "user() {",
        '  local password; password="$(cat "$PASSWORD_DIR/$1")"',
        '  "${bin}kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" '
        '--command-config "$ADMIN_CONFIG" \\',
        '    --alter --entity-type users --entity-name "$1" \\',
        f'    --add-config "{mechanism}=[iterations=8192,password=$password]" >/dev/null',
        '  echo "principal $1"',
        "}",
        "quota() {",
        '  "${bin}kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" '
        '--command-config "$ADMIN_CONFIG" \\',
        '    --alter --entity-type users --entity-name "$1" --add-config "$2" >/dev/null',
        "}",
    ]
    for service in SERVICES:
        if service.principal is None:
            continue  # no Kafka access: no principal
        out.append("")
        out.append(f"# {service.name}: {service.summary}")
        out.append(f"user {service.principal}")
        out += _acl_lines(service.principal, service_acls(service), topic_prefix)
    for vendor in vendors:
        principal = vendor_principal(vendor)
        out.append("")
        out.append(f"# vendor {vendor}: publishes usage events only")
        out.append(f"user {principal}")
        if vendor_producer_byte_rate:
            out.append(f"quota {principal} producer_byte_rate={vendor_producer_byte_rate}")
        out += _acl_lines(principal, vendor_acls(vendor), topic_prefix)
    return "\n".join(out) + "\n"
