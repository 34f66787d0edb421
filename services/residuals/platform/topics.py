"""The one catalogue of Kafka topics.

Services, the local stack (`residuals stack up`) and deployment code all read topic
names and settings from here, so a topic is renamed or re-tuned in exactly one place.
Names carry a ``.vN`` suffix: an incompatible change to a topic's records gets a new
topic rather than a rewrite of an existing one.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class Topic:
    """A topic's name and the settings it is created with.

    ``compacted`` topics keep the latest record per key forever (they are tables, e.g.
    licences); the others are time-retained logs, ``retention_ms`` of -1 meaning forever.
    Partition counts are not here: they depend on the environment (local stack, cluster).
    """

    name: str
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    description: str = ""
    #: ``LogAppendTime`` where the record timestamp must be the broker's, not the
    #: producer's: on the usage topic it decides TOO_LATE / IN_FUTURE, and vendors produce.
    timestamp_type: str = "CreateTime"

    def qualified(self, prefix: str = "") -> str:
        """The name with ``prefix`` (``RESIDUALS_TOPIC_PREFIX``, used to isolate tests)."""
        return f"{prefix}{self.name}"

    def config(self) -> dict[str, str]:
        """Topic-level configuration as passed to Kafka's CreateTopics."""
        config = (
            {"cleanup.policy": "compact"}
            if self.compacted
            else {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}
        )
        if self.timestamp_type != "CreateTime":
            config["message.timestamp.type"] = self.timestamp_type
        return config


USAGE = Topic(
    "residuals.usage.v1",
    retention_ms=7 * DAY_MS,
    description="raw usage events as accepted by the ingest API (broker-stamped: the "
    "record timestamp is the broker's append time, which vendors cannot set)",
    timestamp_type="LogAppendTime",
)
USAGE_RATED = Topic(
    "residuals.usage.rated.v1",
    retention_ms=30 * DAY_MS,
    description="usage events priced against their licence",
)
ALERTS = Topic(
    "residuals.alerts.v1",
    retention_ms=30 * DAY_MS,
    description="scope violations, quota breaches and other alerts",
)
USAGE_DLQ = Topic(
    "residuals.usage.dlq.v1",
    retention_ms=30 * DAY_MS,
    description="usage events that could not be processed, with the reason",
)
LICENCES = Topic(
    "residuals.licences.v1",
    compacted=True,
    description="current licence terms keyed by licence id (compacted table)",
)
SIGNING_KEYS = Topic(
    "residuals.signing-keys.v1",
    compacted=True,
    description="vendor Ed25519 public keys keyed by key id (compacted table; revoked keys "
    "carry revoked_at)",
)
APPROVALS = Topic(
    "residuals.approvals.v1",
    compacted=True,
    description="approval requests and the talent's decisions keyed by approval id "
    "(compacted table; each record the request's full state)",
)
PAYOUTS = Topic(
    "residuals.payouts.v1",
    retention_ms=90 * DAY_MS,
    description="payout statements per licence and period",
)
QUARANTINE = Topic(
    "residuals.quarantine.v1",
    retention_ms=30 * DAY_MS,
    description="records a consumer without a database could not process (QuarantinedRecord), "
    "stored by the ledger writer in the quarantine table for inspection and re-drive",
)

ALL: tuple[Topic, ...] = (
    USAGE,
    USAGE_RATED,
    ALERTS,
    USAGE_DLQ,
    LICENCES,
    SIGNING_KEYS,
    APPROVALS,
    PAYOUTS,
    QUARANTINE,
)


def by_name(name: str) -> Topic:
    """Look a topic up by its unprefixed name; KeyError names the unknown topic."""
    for topic in ALL:
        if topic.name == name:
            return topic
    raise KeyError(f"unknown topic {name!r}")
