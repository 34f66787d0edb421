"""Wiring of the alerts service: one settings object in, running components out.

:class:`AlertsApp` owns the database pool, the change feed, the Kafka sink (its own
thread), the suspender (its own thread, when a licence registry is configured) and the
gRPC server. Tests build it in-process with their own authenticator and registry;
``python -m residuals.alerts`` builds it from the environment (:func:`main`).
"""

from __future__ import annotations

import logging
import threading

import grpc

from residuals.alerts.consumer import AlertIngest, Ingested
from residuals.alerts.feed import ChangeFeed
from residuals.alerts.metrics import AlertMetrics, default_metrics
from residuals.alerts.servicer import AlertServicer, servicer_descriptor
from residuals.alerts.settings import SERVICE_NAME, AlertsSettings
from residuals.alerts.store import RESOLUTION_NAMES, Change, Raised
from residuals.alerts.suspension import GrpcLicenceRegistry, LicenceRegistry, Suspender
from residuals.licensing.directory import PostgresAuthenticator
from residuals.platform.auth import Authenticator, AuthInterceptor
from residuals.platform.grpc_server import (
    GrpcServer,
    Servicer,
    client_credentials,
    make_grpc_server,
)
from residuals.platform.kafka import topic_name
from residuals.platform.postgres import Database
from residuals.platform.quarantine import Pending
from residuals.platform.service import GrpcApp, Workers, run_service
from residuals.platform.sink import KafkaPostgresSink, make_sink_consumer
from residuals.platform.topics import ALERTS
from residuals.v1 import alert_service_pb2_grpc

log = logging.getLogger(__name__)


def licence_registry(settings: AlertsSettings) -> LicenceRegistry | None:
    """The gRPC licence registry client, or None when no address/key is configured."""
    licensing = settings.licensing
    if not licensing.address or not licensing.api_key:
        return None
    if licensing.tls:
        credentials = client_credentials(licensing.tls_ca, licensing.tls_cert, licensing.tls_key)
        channel = grpc.secure_channel(licensing.address, credentials)
    else:
        channel = grpc.insecure_channel(licensing.address)
    return GrpcLicenceRegistry(channel, licensing.api_key, timeout=licensing.timeout_seconds)


class AlertsApp(GrpcApp):
    def __init__(
        self,
        settings: AlertsSettings,
        *,
        authenticator: Authenticator | None = None,
        registry: LicenceRegistry | None = None,
        metrics: AlertMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self.db = Database(settings.postgres, application_name=settings.telemetry.service_name)
        self.authenticator = authenticator
        self.registry = registry if registry is not None else licence_registry(settings)
        self.workers = Workers(on_failure=self._worker_failed)
        self.feed = ChangeFeed(
            self.db,
            capacity=settings.window_size,
            poll_interval=settings.tail_poll_seconds,
            on_changes=self._on_changes,
        )
        self.suspender: Suspender | None = None
        self.server: GrpcServer | None = None
        self.sink: KafkaPostgresSink[Ingested] | None = None
        #: A background worker died: health stays NOT_SERVING (a stall can end, this not).
        self.broken = False

    # --- callbacks -----------------------------------------------------------------------

    def _on_changes(self, changes: list[Change]) -> None:
        self.metrics.stream_head.set(changes[-1].sequence)

    def _on_raised(self, raised: list[Raised]) -> None:
        self.feed.poke()
        if self.suspender is not None and any(r.suspend for r in raised):
            self.suspender.poke()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> AlertsApp:
        settings = self.settings
        self.db.open()
        self.feed.start()
        if self.registry is not None:
            self.suspender = Suspender(
                self.db,
                self.registry,
                self.metrics,
                poll_interval=settings.suspension_poll_seconds,
                on_commit=self.feed.poke,
            )
            self.workers.spawn(self.suspender.run, "alert-suspender")
        else:
            log.warning(
                "no licence registry configured (ALERTS_LICENSING_ADDRESS/API_KEY): automatic "
                "suspensions stay pending"
            )
        quarantine = Pending()
        ingest = AlertIngest(metrics=self.metrics, on_raised=self._on_raised, quarantine=quarantine)
        consumer = make_sink_consumer(
            settings.kafka,
            settings.consumer_group,
            client_id=settings.telemetry.service_name,
            group_instance_id=settings.sink.group_instance_id,
        )
        self.sink = KafkaPostgresSink(
            name="alerts",
            consumer=consumer,
            db=self.db,
            group_id=settings.consumer_group,
            topics=[topic_name(settings.kafka, ALERTS)],
            apply=ingest.apply,
            after_commit=ingest.after_commit,
            batch_size=settings.batch_size,
            poll_timeout=0.05,
            settings=settings.sink,
            on_stalled=self._sink_stalled,
            quarantine=quarantine,
        )
        self._zero_series(topic_name(settings.kafka, ALERTS))
        self.workers.spawn(self._run_sink, "alert-sink")
        authenticator = self.authenticator or PostgresAuthenticator(self.db)
        servicer = AlertServicer(
            self.db, self.feed, self.metrics, heartbeat_seconds=settings.heartbeat_seconds
        )
        self.server = make_grpc_server(
            settings.grpc,
            servicers=[
                Servicer(
                    servicer,
                    alert_service_pb2_grpc.add_AlertServiceServicer_to_server,
                    servicer_descriptor(),
                )
            ],
            interceptors=[AuthInterceptor(authenticator)],
        ).start()
        return self

    def _zero_series(self, topic: str) -> None:
        """Create every labelled counter at 0, so "none yet" is a series, not a gap."""
        assert self.sink is not None
        sink_metrics = self.sink.metrics
        sink_metrics.failures.labels(self.sink.name)
        sink_metrics.batches.labels(self.sink.name)
        sink_metrics.skipped.labels(self.sink.name, topic)
        sink_metrics.records.labels(self.sink.name, topic)
        for resolution in RESOLUTION_NAMES.values():
            self.metrics.resolutions.labels(resolution)
        for outcome in ("suspended", "already", "skipped", "failed"):
            self.metrics.suspensions.labels(outcome)
        for change in ("raised", "acknowledged", "resolved", "licence_suspended"):
            self.metrics.changes.labels(change)
        for phase in ("backlog", "live"):
            self.metrics.delivered.labels(phase)

    def _run_sink(self, stop: threading.Event) -> None:
        assert self.sink is not None
        self.sink.run(stop)  # closes its consumer (leaves the group) however it ends

    def _worker_failed(self, name: str) -> None:
        self.broken = True
        super()._worker_failed(name)

    def _sink_stalled(self, stalled: bool) -> None:
        """A sink that cannot advance is not serving: probes and dashboards see it."""
        if self.server is not None:
            self.server.set_serving(not stalled and not self.broken)

    def stop(self) -> None:
        self.workers.stop_event.set()
        if self.suspender is not None:
            self.suspender.poke()
        if self.server is not None:
            self.server.stop(grace=1.0)
        self.feed.stop()
        self.workers.stop()
        self.db.close()


def main() -> int:
    """``python -m residuals.alerts``: run until SIGTERM/SIGINT."""
    return run_service(
        SERVICE_NAME,
        AlertsSettings,
        lambda settings: AlertsApp(settings).start(),
        describe_running=lambda app: {"grpc_port": app.port},
    )
