"""Wiring of the licensing service: one settings object in, running components out.

:class:`LicensingApp` owns the database pool, the gRPC server (LicenceService and
ApprovalService behind the shared AuthInterceptor, with health, reflection, metrics and
tracing), the outbox relay thread (restarted after a failure) and a readiness probe thread
that reports NOT_SERVING while PostgreSQL is unreachable. Tests build it in-process;
``python -m residuals.licensing`` builds it from the environment (:func:`main`).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from opentelemetry import trace

from residuals.licensing import approval_servicer
from residuals.licensing.approval_watch import ApprovalWatch
from residuals.licensing.approvals import Approvals
from residuals.licensing.directory import PostgresAuthenticator
from residuals.licensing.metrics import RelayMetrics
from residuals.licensing.outbox import OutboxRelay
from residuals.licensing.preflight import Preflight
from residuals.licensing.preflight_cache import StateCache
from residuals.licensing.registry import Registry
from residuals.licensing.servicer import SERVICE_NAME as GRPC_SERVICE
from residuals.licensing.servicer import servicer
from residuals.licensing.settings import SERVICE_NAME, LicensingSettings
from residuals.platform.auth import Authenticator, AuthInterceptor
from residuals.platform.grpc_server import GrpcMetrics, GrpcServer, make_grpc_server
from residuals.platform.postgres import Database
from residuals.platform.service import GrpcApp, Workers, load_service_settings, run_service

log = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 5.0
RELAY_RESTART_SECONDS = 2.0


class LicensingApp(GrpcApp):
    def __init__(
        self,
        settings: LicensingSettings,
        *,
        authenticator: Authenticator | None = None,
        grpc_metrics: GrpcMetrics | None = None,
        relay_metrics: RelayMetrics | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.db = Database(settings.postgres, application_name=settings.telemetry.service_name)
        self.cache: PostgresAuthenticator | None = None
        if authenticator is None:
            self.cache = PostgresAuthenticator(self.db, ttl_seconds=settings.auth_cache_seconds)
            authenticator = self.cache
        self.authenticator = authenticator
        self.registry = Registry(
            self.db,
            on_api_key_revoked=self._forget_key,
            backdate_skew=timedelta(seconds=settings.backdate_skew_seconds),
        )
        self.grpc_metrics = grpc_metrics
        self.relay_metrics = relay_metrics
        self.tracer = tracer
        self.workers = Workers()
        self.approvals = Approvals(self.db, backdate_skew=self.registry.backdate_skew)
        # Watch streams end when the service stops (before the server's grace period).
        self.approval_watch = ApprovalWatch(self.approvals, stop=self.workers.stop_event)
        cached = settings.preflight_cache_licences
        self.preflight = Preflight(
            self.db, cache=StateCache(self.db.connect, licences=cached) if cached else None
        )
        self.server: GrpcServer | None = None
        self.relay: OutboxRelay | None = None

    def _forget_key(self, key_id: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(key_id)

    def start(self) -> LicensingApp:
        self.db.open()
        if self.preflight.cache is not None:
            self.preflight.cache.start()
        self.server = make_grpc_server(
            self.settings.grpc,
            servicers=[
                servicer(self.registry),
                approval_servicer.servicer(self.approvals, self.approval_watch, self.preflight),
            ],
            interceptors=[AuthInterceptor(self.authenticator)],
            metrics=self.grpc_metrics,
            tracer=self.tracer,
        ).start()
        if self.settings.relay.enabled:
            self.workers.spawn(self._run_relay, "outbox-relay")
        self.workers.spawn(self._probe, "licensing-health")
        return self

    def _run_relay(self, stop: threading.Event) -> None:
        """Run the relay; after a failure start a fresh one (it recovers from Kafka)."""
        relay_settings = self.settings.relay
        while not stop.is_set():
            self.relay = OutboxRelay(
                self.settings.postgres.dsn,
                self.settings.kafka,
                batch_size=relay_settings.batch_size,
                poll_interval=relay_settings.poll_seconds,
                metrics=self.relay_metrics,
            )
            try:
                self.relay.run(stop)
            except Exception:
                log.exception("outbox relay failed; restarting")
                self.relay.close()
                stop.wait(RELAY_RESTART_SECONDS)

    def _probe(self, stop: threading.Event) -> None:
        serving = True
        while not stop.wait(HEALTH_INTERVAL_SECONDS):
            try:
                healthy = self.db.check(timeout=HEALTH_INTERVAL_SECONDS)
            except Exception:
                healthy = False
            if healthy != serving and self.server is not None:
                log.warning("licence registry database %s", "back" if healthy else "unreachable")
                self.server.set_serving(healthy, GRPC_SERVICE)
                serving = healthy

    def stop(self) -> None:
        self.workers.stop_event.set()
        if self.server is not None:
            self.server.stop()
        self.workers.stop()
        self.preflight.close()
        self.db.close()


def settings_from_env() -> LicensingSettings:
    """The settings, with OTEL_SERVICE_NAME defaulting to the service folder's name."""
    return load_service_settings(LicensingSettings, SERVICE_NAME)


def main() -> int:
    """``python -m residuals.licensing``: serve LicenceService (and relay) until signalled."""
    return run_service(
        SERVICE_NAME,
        LicensingSettings,
        lambda settings: LicensingApp(settings).start(),
        describe_running=lambda app: {"grpc_port": app.port},
    )


class RelayOnly:
    """Just the outbox relay (PostgreSQL -> Kafka), e.g. as its own deployment."""

    def __init__(self, settings: LicensingSettings) -> None:
        relay = OutboxRelay(
            settings.postgres.dsn,
            settings.kafka,
            batch_size=settings.relay.batch_size,
            poll_interval=settings.relay.poll_seconds,
        )
        self.workers = Workers()
        self.workers.spawn(relay.run, "outbox-relay")

    def stop(self) -> None:
        self.workers.stop()


def relay_main() -> int:
    """``residuals licensing relay``: only the outbox relay."""
    return run_service(SERVICE_NAME, LicensingSettings, RelayOnly)
