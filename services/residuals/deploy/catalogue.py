"""Topics and Kafka ACLs as data, generated from the code's catalogues.

``helm/residuals/files/catalogue.json`` is the output of :func:`catalogue_json`; the
chart renders Strimzi ``KafkaTopic`` and ``KafkaUser`` resources from it, and CI fails
when the committed file differs from what the code generates (``residuals deploy
generate --check``). The same rules produce the ``kafka-acls.sh`` script for clusters
without Strimzi (:mod:`.kafka_admin`), so the two paths cannot disagree.

Names are *base* names; the deployment's topic prefix (``RESIDUALS_TOPIC_PREFIX``) is
applied where ``prefixed`` is true, mirroring what each service does at run time (topics,
faust app ids, most group and transactional ids carry it; the alerts group does not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from residuals.deploy.services import SERVICES, VENDOR_WRITES, Service
from residuals.platform import topics
from residuals.platform.roles import database_role
from residuals.platform.topics import Topic

CATALOGUE_PATH = "helm/residuals/files/catalogue.json"

#: Vendor ids become Kubernetes names (KafkaUser ``vendor-<id>``) and SCRAM user names.
VENDOR_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")


@dataclass(frozen=True)
class AclRule:
    """One Kafka ACL: ``operations`` allowed on a resource.

    ``resource`` is ``topic``, ``group``, ``transactionalId`` or ``cluster`` (Strimzi's
    spelling); ``pattern`` is ``literal`` or ``prefix``; ``prefixed`` says whether the
    deployment's topic prefix goes in front of ``name``.
    """

    resource: str
    name: str
    pattern: str
    operations: tuple[str, ...]
    prefixed: bool = False

    def full_name(self, topic_prefix: str) -> str:
        return f"{topic_prefix}{self.name}" if self.prefixed else self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "name": self.name,
            "pattern": self.pattern,
            "operations": list(self.operations),
            "prefixed": self.prefixed,
        }


_READ = ("Read", "Describe", "DescribeConfigs")
_WRITE = ("Write", "Describe")
_IDEMPOTENT = AclRule("cluster", "", "literal", ("IdempotentWrite",))


def service_acls(service: Service) -> list[AclRule]:
    """Least-privilege ACLs of a service's principal (none: no Kafka access)."""
    access = service.kafka
    rules: list[AclRule] = []
    if access is None:
        return rules
    writes = {t.name for t in access.writes}
    reads = {t.name for t in access.reads}
    for name in sorted(reads | writes):
        ops: list[str] = []
        if name in reads:
            ops += _READ
        if name in writes:
            ops += [op for op in _WRITE if op not in ops]
        rules.append(AclRule("topic", name, "literal", tuple(ops), prefixed=True))
    for group in access.groups:
        rules.append(
            AclRule("group", group.name, "prefix", ("Read", "Describe"), prefixed=group.prefixed)
        )
    if access.internal:
        # faust: changelog/repartition/leader topics and the consumer group, all named
        # after the (prefixed) app id; it creates its internal topics itself.
        rules.append(
            AclRule(
                "topic",
                access.internal,
                "prefix",
                ("Create", "Read", "Write", "Describe", "DescribeConfigs", "AlterConfigs"),
                prefixed=True,
            )
        )
        rules.append(
            AclRule("group", access.internal, "prefix", ("Read", "Describe"), prefixed=True)
        )
    if access.transactional:
        rules.append(
            AclRule(
                "transactionalId",
                access.transactional,
                "prefix",
                ("Write", "Describe"),
                prefixed=True,
            )
        )
    if writes or access.internal:
        rules.append(_IDEMPOTENT)
    return rules


def vendor_principal(vendor_id: str) -> str:
    if not VENDOR_ID.match(vendor_id):
        raise ValueError(
            f"vendor id {vendor_id!r} must be lower-case letters, digits and '-' (at most "
            "42 characters, no leading or trailing '-'): it names a Kafka principal"
        )
    return f"vendor-{vendor_id}"


def vendor_acls(vendor_id: str) -> list[AclRule]:
    """A vendor publishes usage and nothing else.

    The usage topic is granted *literally*: a prefixed grant on ``residuals.usage.``
    would also cover ``residuals.usage.rated.v1`` and the DLQ. What is prefixed is the
    vendor's own namespace, ``vendor-<id>``, for transactional ids, so one vendor can
    never fence another's producer.
    """
    principal = vendor_principal(vendor_id)
    rules = [AclRule("topic", t.name, "literal", _WRITE, prefixed=True) for t in VENDOR_WRITES]
    rules.append(AclRule("transactionalId", principal, "prefix", ("Write", "Describe")))
    rules.append(_IDEMPOTENT)
    return rules


def topic_json(topic: Topic) -> dict[str, Any]:
    return {
        "name": topic.name,
        "compacted": topic.compacted,
        "retentionMs": topic.retention_ms,
        "config": topic.config(),
        "description": topic.description,
    }


def catalogue(services: Iterable[Service] = SERVICES) -> dict[str, Any]:
    """Everything the chart needs to know about topics and Kafka access."""
    vendor_template = vendor_acls("example")
    return {
        "generatedBy": "residuals deploy generate (from residuals.platform.topics and "
        "residuals.deploy.services); do not edit",
        "topics": [topic_json(t) for t in topics.ALL],
        "services": {
            s.name: {
                "kind": s.kind.value,
                "module": s.module,
                "portEnv": s.port_env,
                "summary": s.summary,
                "database": s.database,
                "databaseRole": database_role(s.name) if s.database else None,
                # Without Kafka access: no principal (no KafkaUser, no Kafka settings).
                "kafka": s.kafka is not None,
                "principal": s.principal,
                "memberIdEnv": s.member_id,
                "receiptKey": s.receipt_key,
                "acls": [rule.to_json() for rule in service_acls(s)],
            }
            for s in services
        },
        # The chart substitutes each vendor's id for "example".
        "vendor": {
            "principalTemplate": "vendor-{id}",
            "acls": [
                {**rule.to_json(), "name": rule.name.replace("vendor-example", "vendor-{id}")}
                for rule in vendor_template
            ],
        },
    }


def catalogue_json() -> str:
    return json.dumps(catalogue(), indent=2, sort_keys=False) + "\n"


# --- topic manifests ---------------------------------------------------------------------


def strimzi_topic(
    topic: Topic,
    *,
    partitions: int,
    replicas: int,
    cluster: str,
    prefix: str = "",
    min_insync_replicas: int | None = None,
) -> dict[str, Any]:
    """A Strimzi ``KafkaTopic`` (``kafka.strimzi.io/v1beta2``) for ``topic``."""
    config: dict[str, Any] = dict(topic.config())
    if min_insync_replicas is not None:
        config["min.insync.replicas"] = str(min_insync_replicas)
    name = topic.qualified(prefix)
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {
            "name": kubernetes_name(name),
            "labels": {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "residuals"},
            "annotations": {"residuals.io/description": topic.description},
        },
        "spec": {
            "topicName": name,
            "partitions": partitions,
            "replicas": replicas,
            "config": config,
        },
    }


def kubernetes_name(name: str) -> str:
    """A DNS-1123 subdomain for a topic name (``_`` is legal in Kafka, not in Kubernetes)."""
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip(".-")
    if not cleaned:
        raise ValueError(f"cannot make a Kubernetes name from {name!r}")
    return cleaned[:253]


# --- the principals table of deploy/k8s/README.md ----------------------------------------

PRINCIPALS_BEGIN = "<!-- principals:begin (generated by `residuals deploy generate`) -->"
PRINCIPALS_END = "<!-- principals:end -->"


def _names(items: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in items) or "-"


def principals_markdown() -> str:
    """The table of Kafka principals and what each may do, from the same rules, and the
    services that have none."""
    lines = [
        "| principal | reads | writes | consumer groups (prefix) | also |",
        "|---|---|---|---|---|",
    ]
    for s in SERVICES:
        access = s.kafka
        if access is None:
            continue
        also = []
        if access.internal:
            also.append(f"faust app `{access.internal}`: its group and the topics it creates")
        if access.transactional:
            also.append(f"transactional ids `{access.transactional}*`")
        if access.writes or access.internal:
            also.append("IdempotentWrite")
        lines.append(
            f"| `{s.principal}` | {_names(t.name for t in access.reads)} "
            f"| {_names(t.name for t in access.writes)} "
            f"| {_names(g.name for g in access.groups)} | {'; '.join(also) or '-'} |"
        )
    lines.append(
        f"| `vendor-<id>` | - | {_names(t.name for t in VENDOR_WRITES)} | - "
        "| transactional ids `vendor-<id>*`; IdempotentWrite; optional produce quota |"
    )
    without = [s.name for s in SERVICES if s.kafka is None]
    if without:
        lines.append("")
        lines.append(
            f"No Kafka access (no principal, no KafkaUser, no Kafka settings or egress): "
            f"{_names(without)}."
        )
    return "\n".join(lines)


def with_principals(readme: str) -> str:
    """``readme`` with the block between the principals markers regenerated."""
    start = readme.find(PRINCIPALS_BEGIN)
    end = readme.find(PRINCIPALS_END)
    if start < 0 or end < start:
        raise ValueError("deploy/k8s/README.md lacks the principals markers")
    head = readme[: start + len(PRINCIPALS_BEGIN)]
    return f"{head}\n{principals_markdown()}\n{readme[end:]}"
