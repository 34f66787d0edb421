"""confluent-kafka clients configured the one way money-carrying code needs them.

Producers are idempotent with ``acks=all``: a retried send can neither be lost nor
duplicated inside a partition, which is what lets every sink de-duplicate by
``(vendor_id, event_id)`` alone. Consumers never auto-commit and read only committed
records: sinks store their offsets in PostgreSQL in the same transaction as their rows
(docs/ARCHITECTURE.md), and must never see records of an aborted transaction.

The ``*_config`` functions are pure (tested without a broker); ``make_*`` build clients.
Extra librdkafka properties (SASL, tuning) go in ``**overrides`` with their dotted names,
e.g. ``make_producer(kafka, **{"linger.ms": 50})``; overrides win over the defaults.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from residuals.platform.config import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    from residuals.platform.topics import Topic

ConfigValue = str | int | float | bool
KafkaConfig = dict[str, Any]

log = logging.getLogger(__name__)

# Throughput defaults, sized for tens of thousands of small (~300 byte) events per second:
# wait a few ms to fill batches and allow large ones. Latency stays far below the 1-2 s
# publish->alert/ledger targets. No compression: the meter reads these topics with faust
# (aiokafka), which can only decode lz4/zstd/snappy when the optional `cramjam` package is
# installed, and it is not a dependency. Override per producer if the consumers can.
PRODUCER_DEFAULTS: dict[str, ConfigValue] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 10,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 500_000,
    "message.timeout.ms": 120_000,
}

CONSUMER_DEFAULTS: dict[str, ConfigValue] = {
    "enable.auto.commit": False,
    # Sinks call store_offsets/commit themselves (after their transaction commits).
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": 100,
    "max.poll.interval.ms": 300_000,
    "session.timeout.ms": 45_000,
}


def topic_name(kafka: KafkaSettings, topic: Topic | str) -> str:
    """The physical topic name: ``RESIDUALS_TOPIC_PREFIX`` + the catalogue name.

    Accepts a :class:`residuals.platform.topics.Topic` or a plain base name, so tests can
    use throw-away topics and every service resolves catalogue topics the same way.
    """
    base = topic if isinstance(topic, str) else topic.name
    if not base:
        raise ValueError("empty topic name")
    return f"{kafka.topic_prefix}{base}"


def _base(kafka: KafkaSettings, client_id: str | None) -> KafkaConfig:
    config: KafkaConfig = {"bootstrap.servers": kafka.bootstrap_servers}
    if client_id:
        config["client.id"] = client_id
    return config | security_config(kafka)


def security_config(kafka: KafkaSettings) -> KafkaConfig:
    """librdkafka's security settings (SASL/SCRAM principals in production, ACLs per vendor)."""
    config: KafkaConfig = {}
    if kafka.security_protocol != "PLAINTEXT":
        config["security.protocol"] = kafka.security_protocol.lower()
    if kafka.uses_sasl:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = kafka.sasl_password or ""
    if kafka.uses_ssl and kafka.ssl_ca_location:
        config["ssl.ca.location"] = kafka.ssl_ca_location
    return config


def producer_config(
    kafka: KafkaSettings,
    *,
    transactional_id: str | None = None,
    client_id: str | None = None,
    **overrides: Any,
) -> KafkaConfig:
    """librdkafka configuration of an idempotent (optionally transactional) producer."""
    config = _base(kafka, client_id) | PRODUCER_DEFAULTS
    if transactional_id:
        config["transactional.id"] = transactional_id
    config.update(overrides)
    if config.get("transactional.id") and not config.get("enable.idempotence"):
        raise ValueError("a transactional producer must be idempotent")
    return config


def consumer_config(
    kafka: KafkaSettings,
    group_id: str,
    *,
    read_committed: bool = True,
    client_id: str | None = None,
    **overrides: Any,
) -> KafkaConfig:
    """librdkafka configuration of a manually committing consumer in ``group_id``."""
    if not group_id:
        raise ValueError("a consumer needs a group id")
    config = _base(kafka, client_id) | CONSUMER_DEFAULTS
    config["group.id"] = group_id
    config["isolation.level"] = "read_committed" if read_committed else "read_uncommitted"
    config.update(overrides)
    return config


def admin_config(kafka: KafkaSettings, **overrides: Any) -> KafkaConfig:
    """librdkafka configuration of an admin client."""
    return _base(kafka, None) | overrides


def make_producer(
    kafka: KafkaSettings,
    *,
    transactional_id: str | None = None,
    client_id: str | None = None,
    **overrides: Any,
) -> Producer:
    """An idempotent producer (``acks=all``); transactional when given an id.

    A transactional producer still needs ``init_transactions()`` before use. Call
    ``poll()`` regularly (or ``flush()``) so delivery reports and logs are served.
    """
    from confluent_kafka import Producer

    config = producer_config(
        kafka, transactional_id=transactional_id, client_id=client_id, **overrides
    )
    config.setdefault("logger", logging.getLogger("residuals.kafka.producer"))
    return Producer(config)


def make_consumer(
    kafka: KafkaSettings,
    group_id: str,
    *,
    read_committed: bool = True,
    client_id: str | None = None,
    **overrides: Any,
) -> Consumer:
    """A consumer with auto-commit off and ``isolation.level=read_committed``."""
    from confluent_kafka import Consumer

    config = consumer_config(
        kafka, group_id, read_committed=read_committed, client_id=client_id, **overrides
    )
    config.setdefault("logger", logging.getLogger("residuals.kafka.consumer"))
    return Consumer(config)


def make_admin(kafka: KafkaSettings, **overrides: Any) -> AdminClient:
    """An admin client (topic creation, metadata, offsets)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(admin_config(kafka, **overrides))
