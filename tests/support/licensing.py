"""Shared set-up of the licensing integration tests (imported by their modules).

Each module gets an empty registry (licensing tables truncated) and its own topic prefix,
with the relay's compacted topics created under it, so modules never see each other's
records. API keys are written straight into PostgreSQL, as `bootstrap-admin` does.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import yaml
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from residuals.codecs import licences as licence_codec
from residuals.domain.licence_spec import parse_licence
from residuals.domain.licences import Licence
from residuals.licensing import registry
from residuals.licensing.app import LicensingApp
from residuals.licensing.metrics import RelayMetrics
from residuals.licensing.outbox import RELAY_TOPICS
from residuals.licensing.registry import Registry
from residuals.licensing.settings import LicensingSettings, RelaySettings
from residuals.platform.auth import Principal, Role, bearer_metadata
from residuals.platform.config import KafkaSettings, PostgresSettings, TelemetrySettings
from residuals.platform.grpc_server import GrpcMetrics, GrpcSettings
from residuals.platform.roles import database_role
from residuals.stack.settings import StackSettings
from residuals.v1 import licence_pb2, licence_service_pb2, licence_service_pb2_grpc

TABLES = (
    "outbox, api_keys, principals, vendor_signing_keys, licence_suspensions, licence_splits,"
    " licence_versions, licences, payee_talents, payees, avatars, vendors, talents, audit_log"
)
CASES = Path(__file__).parents[1] / "data" / "royalty-cases"


def case_licence(name: str, index: int = 0) -> Licence:
    spec = yaml.safe_load((CASES / name).read_text())["licences"][index]
    return parse_licence(spec)


BASE = case_licence("01-render-tiers.yaml")


def variant(licence_id: str, *, tenant: str = "A") -> Licence:
    """The render-tiers licence for tenant A or B under another id."""
    return dataclasses.replace(
        BASE,
        licence_id=licence_id,
        talent_id=f"TAL-{tenant}",
        avatar_id=f"AVA-{tenant}",
        vendor_id=f"VEN-{tenant}",
        versions=tuple(
            dataclasses.replace(v, splits=((f"TAL-{tenant}", v.splits[0][1] + v.splits[1][1]),))
            for v in BASE.versions
        ),
    )


def reset_registry(dsn: str) -> None:
    """Empty every licensing table (TRUNCATE bypasses the append-only triggers)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")


def create_topics(stack: StackSettings, prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    futures = admin.create_topics(
        [
            NewTopic(
                topic.qualified(prefix),
                num_partitions=stack.topic_partitions,
                replication_factor=1,
                config=topic.config(),
            )
            for topic in RELAY_TOPICS
        ]
    )
    for future in futures.values():
        future.result(30)


def kafka_settings(stack: StackSettings, prefix: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=stack.bootstrap_servers, topic_prefix=prefix)


def make_settings(stack: StackSettings, prefix: str, *, relay: bool) -> LicensingSettings:
    return LicensingSettings(
        grpc=GrpcSettings(host="127.0.0.1", port=0, max_workers=8, shutdown_grace_seconds=1),
        postgres=PostgresSettings(
            dsn=stack.dsn, pool_min=1, pool_max=4, user=database_role("licensing")
        ),
        kafka=kafka_settings(stack, prefix),
        telemetry=TelemetrySettings(service_name="licensing"),
        relay=RelaySettings(enabled=relay, batch_size=50, poll_seconds=0.2),
        auth_cache_seconds=30.0,
    )


def api_key(dsn: str, principal: Principal) -> str:
    """A fresh key for ``principal`` (its vendor/talent must exist)."""
    with psycopg.connect(dsn) as conn:
        _, plaintext = registry.create_api_key(conn, principal, "test", "test", registry.utc_now())
    return plaintext


@dataclass
class Service:
    """A running LicensingApp with a stub and keys per role."""

    app: LicensingApp
    channel: grpc.Channel
    stub: Any
    prefix: str
    dsn: str
    grpc_metrics: GrpcMetrics
    relay_metrics: RelayMetrics
    grpc_registry: CollectorRegistry
    relay_registry: CollectorRegistry
    spans: InMemorySpanExporter

    def call(self, method: str, request: Any, key: str | None) -> Any:
        metadata = bearer_metadata(key) if key else ()
        return getattr(self.stub, method)(request, metadata=metadata, timeout=10)


@dataclass
class Started:
    service: Service

    def close(self) -> None:
        self.service.channel.close()
        self.service.app.stop()


def start_service(stack: StackSettings, prefix: str, *, relay: bool) -> Started:
    grpc_registry, relay_registry = CollectorRegistry(), CollectorRegistry()
    grpc_metrics, relay_metrics = GrpcMetrics(grpc_registry), RelayMetrics(relay_registry)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = LicensingApp(
        make_settings(stack, prefix, relay=relay),
        grpc_metrics=grpc_metrics,
        relay_metrics=relay_metrics,
        tracer=provider.get_tracer("test"),
    ).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = licence_service_pb2_grpc.LicenceServiceStub(channel)
    return Started(
        Service(
            app,
            channel,
            stub,
            prefix,
            stack.dsn,
            grpc_metrics,
            relay_metrics,
            grpc_registry,
            relay_registry,
            spans,
        )
    )


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


# --- building requests from case licences ------------------------------------------------


def ensure_parties(service: Service, key: str, licence: Licence) -> None:
    for method, request in party_requests(licence):
        try:
            service.call(method, request, key)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise


def party_requests(licence: Licence) -> list[tuple[str, Any]]:
    requests: list[tuple[str, Any]] = [
        (
            "CreateTalent",
            licence_service_pb2.CreateTalentRequest(
                talent=licence_pb2.Talent(talent_id=licence.talent_id)
            ),
        ),
        (
            "CreateAvatar",
            licence_service_pb2.CreateAvatarRequest(
                avatar=licence_pb2.Avatar(avatar_id=licence.avatar_id, talent_id=licence.talent_id)
            ),
        ),
        (
            "CreateVendor",
            licence_service_pb2.CreateVendorRequest(
                vendor=licence_pb2.Vendor(vendor_id=licence.vendor_id)
            ),
        ),
    ]
    for payee in sorted({p for v in licence.versions for p, _ in v.splits}):
        requests.append(
            (
                "CreatePayee",
                licence_service_pb2.CreatePayeeRequest(payee=licence_pb2.Payee(payee_id=payee)),
            )
        )
    return requests


_PARTY_CALLS = {
    "CreateTalent": ("create_talent", "talent"),
    "CreateAvatar": ("create_avatar", "avatar"),
    "CreateVendor": ("create_vendor", "vendor"),
    "CreatePayee": ("create_payee", "payee"),
}


def register_licences(registry: Registry, principal: Principal, *licences: Licence) -> None:
    """The licences' parties and the licences, through the registry's own code (no gRPC).
    A party created again with the same content is a no-op, so licences may share them."""
    for licence in licences:
        for method, request in party_requests(licence):
            call, field = _PARTY_CALLS[method]
            getattr(registry, call)(principal, getattr(request, field))
        registry.create_licence(principal, create_request(licence))


def create_request(licence: Licence) -> licence_service_pb2.CreateLicenceRequest:
    message = licence_codec.to_proto(licence)
    return licence_service_pb2.CreateLicenceRequest(
        licence_id=licence.licence_id,
        talent_id=licence.talent_id,
        avatar_id=licence.avatar_id,
        vendor_id=licence.vendor_id,
        currency_code=licence.currency,
        terms=message.versions[0],
    )


# --- reading topics --------------------------------------------------------------------------


def consume_all(
    stack: StackSettings, topic: str, *, expect: int, timeout: float = 60.0
) -> list[Any]:
    """Every committed record of ``topic`` (from the beginning) once ``expect`` arrived."""

    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                if len(records) >= expect:
                    # drain a little longer: anything extra would be a duplicate
                    quiet_until = time.monotonic() + 2.0
                    while time.monotonic() < quiet_until:
                        extra = consumer.poll(0.2)
                        if extra is not None and not extra.error():
                            records.append(extra)
                    break
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(str(message.error()))
            records.append(message)
    finally:
        consumer.close()
    return records


def header(message: Any, name: str) -> str | None:
    for key, value in message.headers() or ():
        if key == name:
            return bytes(value).decode()
    return None


def keys_for_roles(dsn: str, *, vendor: str, talent: str) -> dict[str, str]:
    return {
        "admin": api_key(dsn, Principal("p-admin", Role.ADMIN)),
        "finance": api_key(dsn, Principal("p-finance", Role.FINANCE)),
        "vendor": api_key(dsn, Principal(f"p-{vendor}", Role.VENDOR, vendor_id=vendor)),
        "talent": api_key(dsn, Principal(f"p-{talent}", Role.TALENT, talent_id=talent)),
        "suspender": api_key(dsn, Principal("p-suspender", Role.SUSPENDER)),
    }


# --- the outbox tests' licence and parties -------------------------------------

ADMIN = Principal("p-admin", Role.ADMIN)
CASE = {
    "licence_id": "LIC-OUT",
    "talent_id": "TAL-OUT",
    "avatar_id": "AVA-OUT",
    "vendor_id": "VEN-OUT",
    "currency": "USD",
    "starts_at": "2026-01-01T00:00:00Z",
    "scope": {
        "categories_allowed": ["product_demo"],
        "territories_allowed": ["*"],
        "channels_allowed": ["web"],
    },
    "rates": {"render_tiers": [{"up_to": None, "unit_price": "0.50"}], "view_cpm": "4.00"},
    "splits": {"TAL-OUT": "1"},
}


def licence_with_id(licence_id: str) -> Any:
    return parse_licence({**CASE, "licence_id": licence_id})


def parties(registry: Registry) -> None:
    licence = licence_with_id("LIC-OUT")
    registry.create_talent(ADMIN, licence_pb2.Talent(talent_id=licence.talent_id))
    registry.create_avatar(
        ADMIN, licence_pb2.Avatar(avatar_id=licence.avatar_id, talent_id=licence.talent_id)
    )
    registry.create_vendor(ADMIN, licence_pb2.Vendor(vendor_id=licence.vendor_id))
    registry.create_payee(ADMIN, licence_pb2.Payee(payee_id="TAL-OUT"))


def outbox_counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(published_at) FROM outbox").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
