"""Helpers for the alerts-service tests: isolated topics, alert builders, a producer, a
fake licence registry served over a real gRPC socket, and a stream reader thread."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from confluent_kafka.admin import NewTopic

from residuals.codecs.timestamps import set_timestamp
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin, make_producer, topic_name
from residuals.platform.telemetry import extract_grpc_metadata
from residuals.platform.topics import ALERTS
from residuals.stack.settings import StackSettings
from residuals.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    alerts_pb2,
    common_pb2,
    licence_pb2,
    licence_service_pb2,
    licence_service_pb2_grpc,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def isolated_kafka(stack: StackSettings, label: str) -> KafkaSettings:
    """Kafka settings with a fresh topic prefix, and the alerts topic created under it."""
    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers,
        topic_prefix=f"{unique(label)}.",
        topic_partitions=3,
    )
    name = topic_name(kafka, ALERTS)
    admin = make_admin(kafka)
    admin.create_topics([NewTopic(name, num_partitions=3)], operation_timeout=30)[name].result(60)
    return kafka


def delete_topics(kafka: KafkaSettings) -> None:
    admin = make_admin(kafka)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(kafka.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)


def alert_id(vendor_id: str, event_id: str, kind: int) -> str:
    """Deterministic like the meter's: hash of (vendor, event, kind)."""
    text = f"{vendor_id}\x1f{event_id}\x1f{common_pb2.ViolationKind.Name(kind)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Tenant:
    """One talent/vendor/licence triple unique to a test."""

    talent_id: str = field(default_factory=lambda: unique("TAL"))
    vendor_id: str = field(default_factory=lambda: unique("VEN"))
    licence_id: str = field(default_factory=lambda: unique("LIC"))
    avatar_id: str = field(default_factory=lambda: unique("AVA"))

    def alert(
        self,
        event_id: str | None = None,
        kind: int = common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY,
        severity: int = common_pb2.SEVERITY_UNSPECIFIED,
        held_amount: str = "1.00",
        suspended_licence: bool = False,
    ) -> alerts_pb2.Alert:
        event_id = event_id or unique("EVT")
        alert = alerts_pb2.Alert(
            alert_id=alert_id(self.vendor_id, event_id, kind),
            kind=kind,
            severity=severity,
            licence_id=self.licence_id,
            licence_version=1,
            talent_id=self.talent_id,
            vendor_id=self.vendor_id,
            avatar_id=self.avatar_id,
            event_ids=[event_id],
            held_units=1,
            held_amount=held_amount,
            currency_code="USD",
            detail="category political is forbidden",
            suspended_licence=suspended_licence,
        )
        now = datetime.now(UTC)
        set_timestamp(alert.occurred_at, now)
        set_timestamp(alert.raised_at, now)
        return alert


class AlertProducer:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.topic = topic_name(kafka, ALERTS)
        self.producer = make_producer(kafka, **{"linger.ms": 1})

    def send(
        self,
        *alerts: alerts_pb2.Alert,
        headers: list[tuple[str, bytes]] | None = None,
        flush: bool = True,
    ) -> None:
        for alert in alerts:
            self.producer.produce(
                self.topic,
                key=alert.licence_id.encode(),
                value=alert.SerializeToString(),
                headers=list(headers or []),
            )
            self.producer.poll(0)
        if flush:
            assert self.producer.flush(30) == 0, "alerts not delivered to Kafka"


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


class StreamReader:
    """Reads a WatchAlerts stream on a thread into a queue (items or the final error)."""

    def __init__(
        self,
        channel: grpc.Channel,
        key: str,
        request: alert_service_pb2.WatchAlertsRequest,
    ) -> None:
        stub = alert_service_pb2_grpc.AlertServiceStub(channel)
        self.call = stub.WatchAlerts(request, metadata=bearer(key))
        self.items: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.call:
                self.items.put((time.monotonic(), item))
        except grpc.RpcError as error:
            self.items.put((time.monotonic(), error))

    def next(self, timeout: float = 10.0) -> tuple[float, Any]:
        return self.items.get(timeout=timeout)

    def alerts(self, count: int, timeout: float = 15.0) -> list[alerts_pb2.Alert]:
        """The next ``count`` alerts (heartbeats skipped)."""
        found: list[alerts_pb2.Alert] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(found)} of {count} alerts arrived"
            _, item = self.items.get(timeout=remaining)
            if isinstance(item, grpc.RpcError):
                raise item
            if item.HasField("alert"):
                found.append(item.alert)
        return found

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=5)


class FakeLicenceService(licence_service_pb2_grpc.LicenceServiceServicer):
    """SuspendLicence (automatic) over in-memory licences, recording every call.

    Like the registry: an unknown licence is NOT_FOUND; a licence that opts out
    (``auto_suspend=False``), already has this alert's window or an open one is returned
    unchanged. It serves nothing else, as the suspender role may call nothing else.
    """

    def __init__(self) -> None:
        self.licences: dict[str, licence_pb2.Licence] = {}
        self.auto_suspend: dict[str, bool | None] = {}
        self.suspend_calls: list[tuple[licence_service_pb2.SuspendLicenceRequest, int, str]] = []
        self.lock = threading.Lock()

    def add(self, tenant: Tenant, auto_suspend: bool | None = None) -> None:
        self.licences[tenant.licence_id] = licence_pb2.Licence(
            licence_id=tenant.licence_id,
            talent_id=tenant.talent_id,
            vendor_id=tenant.vendor_id,
            avatar_id=tenant.avatar_id,
            currency_code="USD",
        )
        self.auto_suspend[tenant.licence_id] = auto_suspend

    def SuspendLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        from opentelemetry import trace

        metadata = context.invocation_metadata()
        span = trace.get_current_span(extract_grpc_metadata(metadata))
        trace_id = span.get_span_context().trace_id
        auth = next((v for k, v in metadata if k == "authorization"), "")
        with self.lock:
            licence = self.licences.get(request.licence_id)
            if licence is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "no such licence")
            self.suspend_calls.append((request, trace_id, str(auth)))
            unchanged = self.auto_suspend[request.licence_id] is False or any(
                w.alert_id == request.alert_id or not w.HasField("ends_at")
                for w in licence.suspensions
            )
            if not unchanged:
                window = licence.suspensions.add(
                    suspension_id=unique("SUS"),
                    reason=request.reason,
                    automatic=True,
                    alert_id=request.alert_id,
                )
                set_timestamp(window.starts_at, datetime.now(UTC))
                licence.status = licence_pb2.LICENCE_STATUS_SUSPENDED
        return licence_service_pb2.SuspendLicenceResponse(licence=licence)


@contextlib.contextmanager
def fake_licence_service() -> Iterator[tuple[FakeLicenceService, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fake = FakeLicenceService()
    licence_service_pb2_grpc.add_LicenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, port
    finally:
        server.stop(0)
