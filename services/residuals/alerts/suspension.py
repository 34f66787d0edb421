"""Automatic suspension of a licence on critical misuse, carried out in the licence registry.

docs/ROYALTY-RULES.md §5: unless the licence sets ``auto_suspend_on_critical: false``, the first
FORBIDDEN_CATEGORY or USE_AFTER_REVOCATION suspends the licence until a person reinstates
it. The meter applies that to money at once; this module makes it *take effect in the
registry* (``LicenceService.SuspendLicence`` with ``automatic`` and the alert's id), so
the licence's status, the licences topic and every other service agree, and tells the
talent on the alert stream (an ``ALERT_CHANGE_LICENCE_SUSPENDED`` change of the alert).

The service's API key has the narrow ``suspender`` role: it may call SuspendLicence with
``automatic`` and nothing else (not even GetLicence), so a leaked key cannot read, revoke,
amend or mint keys. The registry therefore decides everything: it records at most one
window per alert, nothing while another window is open, and nothing when the version in
force opts out (``auto_suspend_on_critical: false``); the licence it returns tells which.

Exactly one suspension per alert: the alert's ``alert_suspensions`` row is inserted in
the transaction that stores the alert, then worked here one row per transaction
(``FOR UPDATE SKIP LOCKED``, so replicas share the work). SuspendLicence is idempotent per
alert, so a crash after it and before the row is marked done does not suspend twice.
Failures are retried with exponential back-off.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from residuals.alerts import store
from residuals.alerts.metrics import AlertMetrics
from residuals.alerts.query import kind_name
from residuals.codecs.timestamps import optional_datetime, set_timestamp, to_datetime
from residuals.platform.auth import bearer_metadata
from residuals.platform.postgres import Database
from residuals.platform.telemetry import extract_trace_context_message, inject_grpc_metadata
from residuals.v1 import alerts_pb2, licence_pb2, licence_service_pb2, licence_service_pb2_grpc

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUSPENDED = "suspended"  # the licence has a window for this alert
    ALREADY = "already"  # another window was in force (or open-ended): none added
    SKIPPED = "skipped"  # the licence opted out (auto_suspend_on_critical false)


@dataclass(frozen=True)
class SuspensionResult:
    outcome: Outcome
    suspension_id: str = ""
    suspended_at: datetime | None = None


class LicenceRegistry(Protocol):
    """Carries out the automatic suspension an alert calls for (idempotent per alert)."""

    def suspend_for(self, alert: alerts_pb2.Alert) -> SuspensionResult: ...


def suspension_reason(alert: alerts_pb2.Alert) -> str:
    """The window's reason; names the alert, which is how a retry recognises its window."""
    return f"automatic: {kind_name(alert.kind)} (alert {alert.alert_id})"


def _window_of(licence: licence_pb2.Licence, alert_id: str) -> licence_pb2.SuspensionWindow | None:
    for window in licence.suspensions:
        if window.alert_id == alert_id or f"(alert {alert_id})" in window.reason:
            return window
    return None


def _open_window(
    licence: licence_pb2.Licence, now: datetime
) -> licence_pb2.SuspensionWindow | None:
    """A window in force at ``now`` or open-ended (the registry's reason not to add one)."""
    for window in licence.suspensions:
        start = to_datetime(window.starts_at)
        end = optional_datetime(window, "ends_at")
        if end is None or (start <= now < end):
            return window
    return None


def _result(outcome: Outcome, window: licence_pb2.SuspensionWindow) -> SuspensionResult:
    return SuspensionResult(outcome, window.suspension_id, to_datetime(window.starts_at))


class GrpcLicenceRegistry:
    """:class:`LicenceRegistry` over ``LicenceService`` with a suspender API key.

    One call per alert (``SuspendLicence``, automatic); the returned licence says what
    happened: a window with this alert's id (suspended, now or by an earlier attempt),
    another window in force or open-ended (already suspended), or none (the licence opts
    out). The call metadata carries the current trace context, so the suspension joins
    the trace of the usage that caused it.
    """

    def __init__(self, channel: grpc.Channel, api_key: str, *, timeout: float = 5.0) -> None:
        self.stub = licence_service_pb2_grpc.LicenceServiceStub(channel)
        self.api_key = api_key
        self.timeout = timeout

    def _metadata(self) -> list[tuple[str, str]]:
        return inject_grpc_metadata(list(bearer_metadata(self.api_key)))

    def suspend_for(self, alert: alerts_pb2.Alert) -> SuspensionResult:
        # automatic + alert_id: the registry marks the window automatic (statements then
        # re-derive it from events) and suspends at most once per alert.
        suspend = licence_service_pb2.SuspendLicenceRequest(
            licence_id=alert.licence_id,
            reason=suspension_reason(alert),
            automatic=True,
            alert_id=alert.alert_id,
        )
        response = self.stub.SuspendLicence(
            suspend, metadata=self._metadata(), timeout=self.timeout
        )
        window = _window_of(response.licence, alert.alert_id)
        if window is not None:
            return _result(Outcome.SUSPENDED, window)
        other = _open_window(response.licence, datetime.now(UTC))
        if other is not None:
            return _result(Outcome.ALREADY, other)
        return SuspensionResult(Outcome.SKIPPED)


# New alerts first: a fresh critical misuse must not queue behind a licence whose
# suspension keeps failing (those wait for their back-off anyway).
_PENDING = """
SELECT alert_id, attempts FROM alert_suspensions
WHERE state = 'pending' AND next_attempt_at <= now()
ORDER BY attempts = 0 DESC, next_attempt_at
LIMIT 1
FOR UPDATE SKIP LOCKED
"""


class Suspender:
    """Works pending automatic suspensions, one per transaction, until stopped."""

    def __init__(
        self,
        db: Database,
        registry: LicenceRegistry,
        metrics: AlertMetrics,
        *,
        poll_interval: float = 2.0,
        max_backoff: float = 60.0,
        on_commit: Any = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.on_commit = on_commit
        self.tracer = tracer or trace.get_tracer(__name__)
        self._wake = threading.Event()

    def poke(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                while not stop.is_set() and self.work_one():
                    pass
                self._refresh_pending()
            except Exception:
                log.exception("automatic suspension loop failed; retrying")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _refresh_pending(self) -> None:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM alert_suspensions WHERE state = 'pending'"
            ).fetchone()
        self.metrics.suspensions_pending.set(int(row[0]) if row else 0)

    def work_one(self) -> bool:
        """Work the next due suspension; False when none is due."""
        with self.db.connection() as conn:
            row = conn.execute(_PENDING).fetchone()
            if row is None:
                return False
            alert_id, attempts = str(row[0]), int(row[1])
            latest = store.current(conn, alert_id)
            if latest is None:
                raise store.AlertNotFound(alert_id)
            alert = latest.alert()
            parent = extract_trace_context_message(alert.trace)
            with self.tracer.start_as_current_span(
                "alerts auto-suspend",
                context=parent,
                kind=SpanKind.CLIENT,
                attributes={
                    "residuals.alert_id": alert_id,
                    "residuals.licence_id": alert.licence_id,
                },
            ) as span:
                try:
                    result = self.registry.suspend_for(alert)
                except Exception as error:
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                    self._failed(conn, alert_id, attempts, error)
                    return True
                self._done(conn, alert, result)
        if self.on_commit is not None:
            self.on_commit()
        return True

    def _failed(self, conn: Any, alert_id: str, attempts: int, error: Exception) -> None:
        delay = min(self.max_backoff, 2.0 ** min(attempts, 16))
        message = error.details() if isinstance(error, grpc.RpcError) else str(error)
        conn.execute(
            "UPDATE alert_suspensions SET attempts = attempts + 1, last_error = %s, "
            "next_attempt_at = now() + make_interval(secs => %s) WHERE alert_id = %s",
            (str(message)[:1000], delay, alert_id),
        )
        self.metrics.suspensions.labels("failed").inc()
        log.warning(
            "automatic suspension failed; will retry",
            extra={
                "alert_id": alert_id,
                "attempt": attempts + 1,
                "retry_in": delay,
                "error": str(message),
            },
        )

    def _done(self, conn: Any, alert: alerts_pb2.Alert, result: SuspensionResult) -> None:
        state = "skipped" if result.outcome is Outcome.SKIPPED else "done"
        conn.execute(
            "UPDATE alert_suspensions SET state = %s, attempts = attempts + 1, "
            "suspension_id = %s, suspended_at = %s, last_error = '' WHERE alert_id = %s",
            (state, result.suspension_id, result.suspended_at, alert.alert_id),
        )
        self.metrics.suspensions.labels(result.outcome.value).inc()
        log.info(
            "automatic suspension " + result.outcome.value,
            extra={
                "alert_id": alert.alert_id,
                "licence_id": alert.licence_id,
                "suspension_id": result.suspension_id,
            },
        )
        if result.outcome is Outcome.SKIPPED:
            return
        suspended_at = result.suspended_at or datetime.now(UTC)

        def mark(snapshot: alerts_pb2.Alert) -> str:
            if snapshot.HasField("licence_suspended_at"):
                return ""
            snapshot.suspended_licence = True
            set_timestamp(snapshot.licence_suspended_at, suspended_at)
            snapshot.suspension_id = result.suspension_id
            return "licence_suspended"

        if store.append_change(conn, alert.alert_id, mark) is not None:
            self.metrics.changes.labels("licence_suspended").inc()
