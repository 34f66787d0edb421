"""Wiring of the ingest gateway: one settings object in, a running server out.

:class:`IngestApp` owns the database pool (API keys, signing keys, licence identities),
the acknowledging Kafka producer and the gRPC server. Tests build it in-process (with
their own directory or authenticator when they need to); ``python -m residuals.ingest``
and ``residuals ingest run`` build it from the environment (:func:`main`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from residuals.ingest.admission import Admission
from residuals.ingest.dedupe import RecentEvents
from residuals.ingest.directory import LicenceIdentities, PostgresDirectory, SigningKeys
from residuals.ingest.metrics import IngestMetrics
from residuals.ingest.ratelimit import VendorRateLimiter
from residuals.ingest.servicer import SERVICE, IngestService, Limits, register
from residuals.ingest.settings import SERVICE_NAME, IngestSettings
from residuals.licensing.directory import PostgresAuthenticator
from residuals.platform.auth import Authenticator, AuthInterceptor
from residuals.platform.grpc_server import GrpcServer, Servicer, make_grpc_server
from residuals.platform.kafka import AcknowledgedProducer, topic_name
from residuals.platform.postgres import Database
from residuals.platform.service import GrpcApp, run_service
from residuals.platform.topics import USAGE, USAGE_DLQ
from residuals.v1 import ingest_pb2

log = logging.getLogger(__name__)

# Room for the request framing around a batch of max_batch_bytes.
_FRAME_SLACK = 64 * 1024


class IngestApp(GrpcApp):
    def __init__(
        self,
        settings: IngestSettings,
        *,
        authenticator: Authenticator | None = None,
        keys: SigningKeys | None = None,
        licences: LicenceIdentities | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.db = Database(settings.postgres, application_name=settings.telemetry.service_name)
        directory = PostgresDirectory(self.db, key_ttl_seconds=settings.key_cache_seconds)
        self.keys: SigningKeys = keys or directory
        self.licences: LicenceIdentities | None = None
        if settings.check_licences:
            self.licences = licences or directory
        self.authenticator = authenticator
        self.metrics = metrics
        self.producer: AcknowledgedProducer | None = None
        self.server: GrpcServer | None = None
        self.service: IngestService | None = None

    def start(self) -> IngestApp:
        settings = self.settings
        self.db.open()
        tuning: dict[str, Any] = {
            # Give up (and answer UNAVAILABLE) instead of holding a request for minutes.
            "message.timeout.ms": max(1000, int(settings.ack_timeout_seconds * 1000)),
            "linger.ms": 5,
        }
        self.producer = AcknowledgedProducer(
            settings.kafka,
            client_id=settings.telemetry.service_name,
            report_successes=True,
            background_poll=True,
            **tuning,
        )
        admission = Admission(
            self.keys,
            self.licences,
            RecentEvents(settings.dedupe_cache_events),
            max_event_bytes=settings.max_event_bytes,
        )
        self.service = IngestService(
            admission=admission,
            producer=self.producer,
            limiter=VendorRateLimiter(settings.vendor_rate, settings.vendor_burst),
            limits=Limits(
                max_batch_events=settings.max_batch_events,
                max_batch_bytes=settings.max_batch_bytes,
                stream_max_wait_seconds=settings.stream_max_wait_seconds,
                ack_timeout_seconds=settings.ack_timeout_seconds,
            ),
            usage_topic=topic_name(settings.kafka, USAGE),
            dlq_topic=topic_name(settings.kafka, USAGE_DLQ),
            metrics=self.metrics,
            receipt_key=settings.receipt.key(),
        )
        # gRPC must let a full batch through so that the gateway, not the transport,
        # refuses an oversized one (with a message saying what to do).
        grpc_settings = settings.grpc
        wanted = settings.max_batch_bytes + _FRAME_SLACK
        if grpc_settings.max_message_bytes < wanted:
            grpc_settings = dataclasses.replace(grpc_settings, max_message_bytes=wanted)
        authenticator = self.authenticator or PostgresAuthenticator(
            self.db, ttl_seconds=settings.key_cache_seconds
        )
        self.server = make_grpc_server(
            grpc_settings,
            servicers=[
                Servicer(
                    self.service,
                    register,
                    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
                )
            ],
            interceptors=[AuthInterceptor(authenticator)],
        )
        if not self.producer.ready(timeout=settings.ack_timeout_seconds):
            log.warning("Kafka is not reachable yet; publishes fail UNAVAILABLE until it is")
        self.server.start()
        log.info("ingest gateway serving", extra={"grpc_port": self.server.port})
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.producer is not None:
            self.producer.close()
        self.db.close()


def main() -> int:
    """``python -m residuals.ingest``: run until SIGTERM/SIGINT."""
    return run_service(
        SERVICE_NAME,
        IngestSettings,
        lambda settings: IngestApp(settings).start(),
        describe_running=lambda app: {"grpc_port": app.port, "service": SERVICE},
    )
