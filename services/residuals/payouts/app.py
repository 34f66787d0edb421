"""Wiring of the payouts service: one settings object in, running components out.

:class:`PayoutsApp` owns the database pool, the payment rail, the payout-event relay
(its own thread), the scheduler (automatic close and payment, when enabled) and the gRPC
server. Tests build it in-process with their own authenticator, sources and rail;
``python -m residuals.payouts`` builds it from the environment (:func:`main`).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from residuals.domain.closing import closable_at
from residuals.domain.period import Period
from residuals.licensing.directory import PostgresAuthenticator
from residuals.payouts import store
from residuals.payouts.close import ClosePolicy, close_period
from residuals.payouts.metrics import PayoutMetrics, default_metrics
from residuals.payouts.paying import pay_payouts
from residuals.payouts.rails import PaymentRail, make_rail
from residuals.payouts.relay import PayoutRelay
from residuals.payouts.servicer import PayoutServicer, servicer_descriptor
from residuals.payouts.settings import SERVICE_NAME, PayoutsSettings
from residuals.payouts.sources import Sources
from residuals.platform.auth import Authenticator, AuthInterceptor
from residuals.platform.grpc_server import GrpcServer, Servicer, make_grpc_server
from residuals.platform.postgres import Database
from residuals.platform.service import GrpcApp, Workers, load_service_settings, run_service
from residuals.v1 import payout_service_pb2_grpc

log = logging.getLogger(__name__)


def policy_of(settings: PayoutsSettings) -> ClosePolicy:
    return ClosePolicy(grace=settings.grace, thresholds=settings.thresholds)


def default_sources() -> Sources:
    """Licences from the licensing tables, events from the ledger writer's tables."""
    from residuals.payouts.adapters import stored_sources

    return stored_sources()


class PayoutsApp(GrpcApp):
    def __init__(
        self,
        settings: PayoutsSettings,
        *,
        sources: Sources | None = None,
        rail: PaymentRail | None = None,
        authenticator: Authenticator | None = None,
        metrics: PayoutMetrics | None = None,
        relay: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self.db = Database(settings.postgres, application_name=settings.telemetry.service_name)
        self.sources = sources or default_sources()
        self.rail = rail or make_rail(settings.rail, settings.rail_dir)
        self.authenticator = authenticator
        self.policy = policy_of(settings)
        self.with_relay = relay
        self.workers = Workers(on_failure=self._worker_failed)
        self.server: GrpcServer | None = None

    def start(self) -> PayoutsApp:
        settings = self.settings
        self.db.open()
        self.metrics.refresh_states(self.db)
        if self.with_relay:
            relay = PayoutRelay(self.db, settings.kafka)
            self.workers.spawn(lambda stop: relay.run(stop, settings.poll_seconds), "payout-relay")
        if settings.auto_close or settings.auto_pay:
            self.workers.spawn(self._schedule, "payout-scheduler")
        servicer = PayoutServicer(
            self.db,
            self.sources,
            self.rail,
            self.policy,
            self.metrics,
            heartbeat_seconds=settings.heartbeat_seconds,
            poll_seconds=settings.poll_seconds,
            stopping=self.workers.stop_event,
        )
        self.server = make_grpc_server(
            settings.grpc,
            servicers=[
                Servicer(
                    servicer,
                    payout_service_pb2_grpc.add_PayoutServiceServicer_to_server,
                    servicer_descriptor(),
                )
            ],
            interceptors=[AuthInterceptor(self.authenticator or PostgresAuthenticator(self.db))],
        ).start()
        return self

    def _schedule(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick(datetime.now(UTC))
            except Exception:
                log.exception("payout scheduler failed; retrying")
            stop.wait(self.settings.scheduler_seconds)

    def tick(self, now: datetime) -> None:
        """One scheduler round: close the next period once its grace has passed; pay."""
        settings = self.settings
        if settings.auto_close:
            with self.db.connection() as conn:
                closed = store.closed_periods(conn)
            candidate = (
                Period.parse(closed[-1]).next()
                if closed
                else (Period.parse(settings.first_period) if settings.first_period else None)
            )
            if candidate is not None and now >= closable_at(candidate, settings.grace):
                with self.db.connection() as conn:
                    result = close_period(
                        conn, self.sources, candidate, policy=self.policy, closed_by="scheduler"
                    )
                if not result.already_closed:
                    self.metrics.closed(result)
        if settings.auto_pay:
            pay_payouts(self.db, self.rail)
            self.metrics.refresh_states(self.db)

    def stop(self) -> None:
        self.workers.stop_event.set()
        if self.server is not None:
            self.server.stop(grace=1.0)
        self.workers.stop()
        self.db.close()


def settings_from_env() -> PayoutsSettings:
    return load_service_settings(PayoutsSettings, SERVICE_NAME)


def main() -> int:
    """``python -m residuals.payouts``: run until SIGTERM/SIGINT."""
    return run_service(
        SERVICE_NAME,
        PayoutsSettings,
        lambda settings: PayoutsApp(settings).start(),
        describe_running=lambda app: {"grpc_port": app.port},
    )
