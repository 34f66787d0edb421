"""Helpers for the ingestion tests: isolated topics, registered vendors, reading topics back,
and the gateway's callers (raw gRPC calls with exact bytes, signed SDK events).

Vendors, signing keys, API keys and licence identities are inserted straight into the
licensing tables of migration 0002 with SQL: the licensing service has no functions for
keys yet. API keys use the platform's own format and hash
(:func:`residuals.platform.auth.generate_api_key`), signing keys the SDK's
:class:`~residuals_sdk.SigningKey`. Ids carry a per-run suffix, so runs never collide.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
from confluent_kafka.admin import NewTopic
from residuals_sdk import SigningKey, uuid7
from residuals_sdk import events as build
from residuals_sdk.signing import sign_event
from residuals_sdk.transports.grpc import encode_batch

from residuals.platform.auth import generate_api_key
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin, make_consumer, topic_name
from residuals.platform.topics import USAGE, USAGE_DLQ
from residuals.stack.settings import StackSettings
from residuals.v1 import ingest_pb2, usage_pb2


@dataclass
class Tenant:
    vendor_id: str
    api_key: str
    signing_key: SigningKey
    #: licence id -> (avatar id, currency)
    licences: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def licence_id(self) -> str:
        return next(iter(self.licences))

    @property
    def avatar_id(self) -> str:
        return self.licences[self.licence_id][0]


class Registry:
    """Inserts licensing rows for tests (one talent per run)."""

    def __init__(self, dsn: str, run_id: str) -> None:
        self.dsn = dsn
        self.run_id = run_id
        self.talent_id = f"TAL-{run_id}"
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO talents (talent_id, created_by) VALUES (%s, 'test')"
                " ON CONFLICT DO NOTHING",
                (self.talent_id,),
            )

    def vendor(self, name: str, *, currencies: tuple[str, ...] = ("USD",)) -> Tenant:
        vendor_id = f"VEN-{name}-{self.run_id}"
        key_id, api_key, secret_hash = generate_api_key()
        signing = SigningKey.generate(f"sk-{name}-{self.run_id}")
        principal_id = f"P-{name}-{self.run_id}"
        tenant = Tenant(vendor_id, api_key, signing)
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "INSERT INTO vendors (vendor_id, created_by) VALUES (%s, 'test')", (vendor_id,)
            )
            conn.execute(
                "INSERT INTO principals (principal_id, role, vendor_id, created_by)"
                " VALUES (%s, 'vendor', %s, 'test')",
                (principal_id, vendor_id),
            )
            conn.execute(
                "INSERT INTO api_keys (key_id, principal_id, secret_sha256, prefix, created_by)"
                " VALUES (%s, %s, %s, 'rsd', 'test')",
                (key_id, principal_id, secret_hash),
            )
            self._signing_key(conn, signing, vendor_id)
            for index, currency in enumerate(currencies):
                avatar_id = f"AVA-{name}-{index}-{self.run_id}"
                licence_id = f"LIC-{name}-{index}-{self.run_id}"
                conn.execute(
                    "INSERT INTO avatars (avatar_id, talent_id, created_by)"
                    " VALUES (%s, %s, 'test')",
                    (avatar_id, self.talent_id),
                )
                conn.execute(
                    "INSERT INTO licences (licence_id, talent_id, avatar_id, vendor_id,"
                    " currency_code, created_by) VALUES (%s, %s, %s, %s, %s, 'test')",
                    (licence_id, self.talent_id, avatar_id, vendor_id, currency),
                )
                tenant.licences[licence_id] = (avatar_id, currency)
        return tenant

    @staticmethod
    def _signing_key(conn: Any, key: SigningKey, vendor_id: str) -> None:
        conn.execute(
            "INSERT INTO vendor_signing_keys (key_id, vendor_id, public_key, created_by)"
            " VALUES (%s, %s, %s, 'test')",
            (key.key_id, vendor_id, key.public_key_bytes()),
        )

    def add_signing_key(self, tenant: Tenant, key: SigningKey) -> None:
        with psycopg.connect(self.dsn) as conn:
            self._signing_key(conn, key, tenant.vendor_id)

    def revoke_signing_key(self, key_id: str) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "UPDATE vendor_signing_keys SET revoked_at = now() - interval '1 second',"
                " revoked_by = 'test' WHERE key_id = %s",
                (key_id,),
            )

    def finance_api_key(self) -> str:
        key_id, api_key, secret_hash = generate_api_key()
        principal_id = f"P-finance-{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "INSERT INTO principals (principal_id, role, created_by)"
                " VALUES (%s, 'finance', 'test')",
                (principal_id,),
            )
            conn.execute(
                "INSERT INTO api_keys (key_id, principal_id, secret_sha256, prefix, created_by)"
                " VALUES (%s, %s, %s, 'rsd', 'test')",
                (key_id, principal_id, secret_hash),
            )
        return api_key


class Topics:
    """The usage and dead-letter topics under a fresh prefix."""

    def __init__(self, stack: StackSettings, prefix: str) -> None:
        self.kafka = KafkaSettings(
            bootstrap_servers=stack.bootstrap_servers,
            topic_prefix=prefix,
            topic_partitions=stack.topic_partitions,
        )
        self.usage = topic_name(self.kafka, USAGE)
        self.dlq = topic_name(self.kafka, USAGE_DLQ)

    def create(self) -> Topics:
        admin = make_admin(self.kafka)
        futures = admin.create_topics(
            [
                NewTopic(t, num_partitions=self.kafka.topic_partitions)
                for t in (self.usage, self.dlq)
            ],
            operation_timeout=30,
        )
        for future in futures.values():
            future.result(timeout=60)
        return self

    def delete(self) -> None:
        admin = make_admin(self.kafka)
        with contextlib.suppress(Exception):
            for future in admin.delete_topics(
                [self.usage, self.dlq], operation_timeout=30
            ).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=60)

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "RESIDUALS_TOPIC_PREFIX": self.kafka.topic_prefix,
        }


def start_ingest(stack: StackSettings, topics: Topics, **env: str) -> Any:
    """A real ingest service (in-process, its own role, an ephemeral gRPC port) publishing
    to ``topics``; ``env`` adds or overrides settings (limits, timeouts)."""
    from residuals.ingest.app import IngestApp
    from residuals.ingest.settings import IngestSettings
    from residuals.platform.config import load
    from residuals.platform.roles import role_env

    settings = {
        **topics.env(),
        "DATABASE_URL": stack.dsn,
        **role_env("ingest"),
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "INGEST_ACK_TIMEOUT_SECONDS": "10",
        **env,
    }
    return IngestApp(load(IngestSettings, settings)).start()


def read_topic(
    kafka: KafkaSettings, topic: str, *, expect: int, timeout: float = 60.0, settle: float = 1.0
) -> list[Any]:
    """Every record of ``topic`` from the beginning: at least ``expect``, waiting up to
    ``timeout``; then ``settle`` more seconds so that extra (duplicate) records show up."""
    consumer = make_consumer(kafka, f"test-read-{uuid.uuid4().hex[:10]}")
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while True:
            now = time.monotonic()
            if settle_until is None and len(records) >= expect:
                settle_until = now + settle
            if settle_until is not None and now >= settle_until:
                break
            if now >= deadline:
                break
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            records.append(message)
    finally:
        consumer.close()
    return records


def headers_of(message: Any) -> dict[str, bytes]:
    return {k: v for k, v in (message.headers() or [])}


# --- the gateway's callers ---------------------------------------------------------------------

BATCH = "/residuals.v1.IngestService/PublishBatch"
STREAM = "/residuals.v1.IngestService/PublishStream"


class Gateway:
    """Raw calls with exact bytes (what a broken or malicious client could send)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.batch = self.channel.unary_unary(
            BATCH,
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.PublishBatchResponse.FromString,
        )
        self.stream = self.channel.stream_unary(
            STREAM,
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.PublishStreamResponse.FromString,
        )

    def publish(self, api_key: str, envelopes: list[bytes]) -> list[ingest_pb2.PublishResult]:
        return self.publish_raw(api_key, encode_batch(envelopes))

    def publish_raw(self, api_key: str, request: bytes) -> list[ingest_pb2.PublishResult]:
        response = self.batch(request, metadata=auth(api_key), timeout=30)
        return list(response.results)


def auth(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")]


def render(tenant: Tenant, **overrides: Any) -> usage_pb2.UsageEvent:
    fields: dict[str, Any] = {
        "event_id": uuid7(),
        "vendor_id": tenant.vendor_id,
        "licence_id": tenant.licence_id,
        "avatar_id": tenant.avatar_id,
        "render_id": f"vid-{uuid.uuid4().hex[:6]}",
        "category": "product_demo",
        "territory": "GB",
    }
    fields.update(overrides)
    return build.render(**fields)


def mutate(event: usage_pb2.UsageEvent, **fields: Any) -> usage_pb2.UsageEvent:
    """The event with fields set directly (bypassing the SDK's call-site checks)."""
    for name, value in fields.items():
        setattr(event, name, value)
    return event


def envelope(event: usage_pb2.UsageEvent, key: SigningKey) -> bytes:
    return sign_event(event, key).SerializeToString()


def signed_payload(payload: bytes, key: SigningKey) -> bytes:
    """An envelope around arbitrary payload bytes, validly signed."""
    return usage_pb2.SignedUsageEvent(
        payload=payload, signature=key.sign(payload), key_id=key.key_id
    ).SerializeToString()
