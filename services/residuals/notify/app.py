"""Wiring of the notify service: one settings object in, running components out.

:class:`NotifyApp` owns the database pool, the intake sink (Kafka topics -> events and
deliveries, its own thread), the statement watcher, the dispatcher (its own asyncio
thread) and the gRPC server. Tests build it in-process; ``python -m residuals.notify``
builds it from the environment (:func:`main`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from residuals.domain.notifications import EVENT_TYPES, WEBHOOK_TEST, Outcome
from residuals.licensing.directory import PostgresAuthenticator
from residuals.notify.dispatcher import Dispatcher
from residuals.notify.intake import CONSUMER, NotifyIntake, Taken, source_topics
from residuals.notify.metrics import NotifyMetrics, default_metrics
from residuals.notify.rejections import Signal
from residuals.notify.secrets import SecretBox
from residuals.notify.servicer import (
    NotificationServicer,
    delivery_url_check,
    servicer_descriptor,
)
from residuals.notify.settings import SERVICE_NAME, NotifySettings
from residuals.notify.sources import DEAD_LETTER, LICENCE, reason_names
from residuals.notify.statements import StatementWatcher
from residuals.platform.auth import Authenticator, AuthInterceptor
from residuals.platform.grpc_server import GrpcServer, Servicer, make_grpc_server
from residuals.platform.postgres import Database
from residuals.platform.quarantine import Pending
from residuals.platform.service import GrpcApp, Workers, run_service
from residuals.platform.sink import KafkaPostgresSink, make_sink_consumer
from residuals.v1 import notification_service_pb2_grpc

log = logging.getLogger(__name__)


class NotifyApp(GrpcApp):
    def __init__(
        self,
        settings: NotifySettings,
        *,
        authenticator: Authenticator | None = None,
        metrics: NotifyMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self.db = Database(settings.postgres, application_name=settings.telemetry.service_name)
        self.box = SecretBox.from_setting(settings.secrets_key)
        self.authenticator = authenticator
        self.workers = Workers(on_failure=self._worker_failed)
        self.signal = Signal(self.db)
        self.statements = StatementWatcher(
            self.db,
            self.metrics,
            poll_seconds=settings.statements_poll_seconds,
            on_queued=self.poke,
        )
        self.sink: KafkaPostgresSink[Taken] | None = None
        self.dispatcher: Dispatcher | None = None
        self.server: GrpcServer | None = None
        #: A background worker died: health stays NOT_SERVING (a stall can end, this not).
        self.broken = False

    # --- callbacks -----------------------------------------------------------------------

    def poke(self, endpoint_ids: Iterable[str]) -> None:
        """Deliveries were queued for these endpoints: the dispatcher sends them now."""
        if self.dispatcher is not None:
            try:
                self.dispatcher.poke(set(endpoint_ids))
            except Exception:
                log.exception("poking the dispatcher failed (it polls anyway)")

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> NotifyApp:
        settings = self.settings
        self.db.open()
        self.signal.start()
        self._start_dispatcher()
        quarantine = Pending()
        topics = source_topics(settings.kafka)
        intake = NotifyIntake(
            topics,
            metrics=self.metrics,
            quarantine=quarantine,
            on_queued=self.poke,
            on_rejections=self.signal.poke,
        )
        group = settings.kafka.topic_prefix + settings.consumer_group
        consumer = make_sink_consumer(
            settings.kafka,
            group,
            client_id=settings.telemetry.service_name,
            group_instance_id=settings.sink.group_instance_id,
        )
        self.sink = KafkaPostgresSink(
            name=CONSUMER,
            consumer=consumer,
            db=self.db,
            group_id=group,
            topics=sorted(topics),
            apply=intake.apply,
            after_commit=intake.after_commit,
            batch_size=settings.batch_size,
            poll_timeout=0.05,
            settings=settings.sink,
            on_stalled=self._sink_stalled,
            quarantine=quarantine,
        )
        self._zero_series(sorted(topics))
        self.workers.spawn(self._run_sink, "notify-sink")
        self.workers.spawn(self.statements.run, "notify-statements")
        authenticator = self.authenticator or PostgresAuthenticator(self.db)
        servicer = NotificationServicer(
            self.db,
            self.box,
            self.metrics,
            url_check=delivery_url_check(settings.delivery),
            signal=self.signal,
            poke=self.poke,
            heartbeat_seconds=settings.heartbeat_seconds,
            max_endpoints=settings.max_endpoints_per_owner,
        )
        self.server = make_grpc_server(
            settings.grpc,
            servicers=[
                Servicer(
                    servicer,
                    notification_service_pb2_grpc.add_NotificationServiceServicer_to_server,
                    servicer_descriptor(),
                )
            ],
            interceptors=[AuthInterceptor(authenticator)],
        ).start()
        self.workers.spawn(self._watch_health, "notify-health")
        return self

    def _start_dispatcher(self) -> None:
        """The delivery engine: its own asyncio thread, woken by intake and the API."""
        self.dispatcher = Dispatcher(
            self.db,
            self.settings.delivery,
            self.metrics,
            open_secret=self.box.open,
            owner=self.settings.sink.group_instance_id,
        )
        self.dispatcher.start()

    def _zero_series(self, topics: list[str]) -> None:
        """Create every labelled series at 0, so "none yet" is a series, not a gap."""
        assert self.sink is not None
        sink_metrics = self.sink.metrics
        sink_metrics.failures.labels(self.sink.name)
        sink_metrics.batches.labels(self.sink.name)
        for topic in topics:
            sink_metrics.skipped.labels(self.sink.name, topic)
            sink_metrics.records.labels(self.sink.name, topic)
        for event_type in [*(t.name for t in EVENT_TYPES), WEBHOOK_TEST]:
            self.metrics.events.labels(event_type)
        for reason in reason_names():
            self.metrics.rejections.labels(reason)
        for state in ("enabled", "disabled"):
            self.metrics.endpoints.labels(state)
        for source in (LICENCE, DEAD_LETTER):
            self.metrics.skipped.labels(source)
        for outcome in Outcome:
            self.metrics.attempts.labels(outcome.value)
            self.metrics.attempt_seconds.labels(outcome.value)
        for attempt in ("first", "retry"):
            self.metrics.lag.labels(attempt)
        for reason in ("gone", "failing"):
            self.metrics.disabled.labels(reason)

    def _run_sink(self, stop: threading.Event) -> None:
        assert self.sink is not None
        self.sink.run(stop)  # closes its consumer (leaves the group) however it ends

    @property
    def healthy(self) -> bool:
        """Serving: no worker died, the sink advances, the dispatcher (if any) is well."""
        if self.broken or (self.sink is not None and self.sink.stalled):
            return False
        return self.dispatcher is None or bool(getattr(self.dispatcher, "healthy", True))

    def _watch_health(self, stop: threading.Event) -> None:
        """Follow the dispatcher's health (it has no callback), once a second."""
        serving = True
        while not stop.wait(1.0):
            healthy = self.healthy
            if healthy != serving and self.server is not None:
                self.server.set_serving(healthy)
                serving = healthy

    def _worker_failed(self, name: str) -> None:
        self.broken = True
        super()._worker_failed(name)

    def _sink_stalled(self, stalled: bool) -> None:
        """A sink that cannot advance is not serving: probes and dashboards see it."""
        if self.server is not None:
            self.server.set_serving(not stalled and self.healthy)

    def stop(self) -> None:
        self.workers.stop_event.set()
        self.statements.stop()
        if self.server is not None:
            self.server.stop(grace=1.0)
        self.signal.stop()
        if self.dispatcher is not None:
            try:
                self.dispatcher.stop()
            except Exception:
                log.exception("stopping the dispatcher failed")
        self.workers.stop()
        self.db.close()


def main() -> int:
    """``python -m residuals.notify``: run until SIGTERM/SIGINT."""
    return run_service(
        SERVICE_NAME,
        NotifySettings,
        lambda settings: NotifyApp(settings).start(),
        describe_running=lambda app: {"grpc_port": app.port},
    )
