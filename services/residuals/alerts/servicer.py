"""gRPC ``residuals.v1.AlertService``: WatchAlerts, ListAlerts, AcknowledgeAlert, ResolveAlert.

WatchAlerts sends changes in sequence order: first those after the request's cursor
(from the database while the cursor is older than the in-memory window, then from the
window), then live ones as the :class:`~residuals.alerts.feed.ChangeFeed` sees them, and
a heartbeat carrying the stream position whenever nothing was sent for a while. The
cursor advances over changes the caller's filter skips too, so a heartbeat's
``latest_sequence`` is a safe resume point: reconnecting with
``after_sequence = max(last alert sequence, last heartbeat latest_sequence)`` gives every
matching change exactly once.

Who may do what (the caller comes from :func:`residuals.platform.auth.current_principal`):
talent see and work their own alerts, vendors see theirs, finance and admin all. Settling
or waiving held money is for the talent (or finance/admin); a vendor may acknowledge and
dispute its alerts but not waive them. An alert the caller may not see is NOT_FOUND.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc

from residuals.alerts import store
from residuals.alerts.consumer import latency_origin
from residuals.alerts.feed import ChangeFeed
from residuals.alerts.metrics import AlertMetrics
from residuals.alerts.query import may_see, scoped_query
from residuals.alerts.store import AlertNotFound, Change, InvalidTransition
from residuals.codecs.timestamps import set_timestamp
from residuals.platform.auth import PermissionDenied, Principal, Role, current_principal
from residuals.platform.errors import InvalidArgument, text_field
from residuals.platform.pipeline_metrics import pipeline_metrics
from residuals.platform.postgres import Database
from residuals.v1 import alert_service_pb2, alert_service_pb2_grpc, alerts_pb2, common_pb2

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
BACKLOG_PAGE = 500
MAX_NOTE_CHARS = 2000

#: Who may apply each resolution (besides finance and admin, who may apply any).
RESOLVERS: dict[int, frozenset[Role]] = {
    alerts_pb2.RESOLUTION_SETTLE: frozenset({Role.TALENT}),
    alerts_pb2.RESOLUTION_WAIVE: frozenset({Role.TALENT}),
    alerts_pb2.RESOLUTION_DISPUTE: frozenset({Role.TALENT, Role.VENDOR}),
}


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc context.abort returned")


class AlertServicer(alert_service_pb2_grpc.AlertServiceServicer):
    def __init__(
        self,
        db: Database,
        feed: ChangeFeed,
        metrics: AlertMetrics,
        *,
        heartbeat_seconds: float = 5.0,
        on_commit: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.feed = feed
        self.metrics = metrics
        self.heartbeat_seconds = heartbeat_seconds
        self.on_commit = on_commit or feed.poke
        self.clock = clock
        self.pipeline = pipeline_metrics()

    # --- WatchAlerts -------------------------------------------------------------------------

    def WatchAlerts(
        self, request: alert_service_pb2.WatchAlertsRequest, context: grpc.ServicerContext
    ) -> Iterator[alert_service_pb2.WatchAlertsResponse]:
        query = scoped_query(request.filter, current_principal())
        if request.after_sequence > store.MAX_SEQUENCE:
            raise InvalidArgument.field(
                "after_sequence", f"is beyond the largest sequence ({store.MAX_SEQUENCE})"
            )
        heartbeat = float(request.heartbeat_seconds) or self.heartbeat_seconds
        cursor = self.feed.head if request.live_only else int(request.after_sequence)
        closed = threading.Event()
        context.add_callback(closed.set)
        self.metrics.watchers.inc()
        last_sent = time.monotonic()
        try:
            while not closed.is_set() and not self.feed.stopped:
                window = self.feed.after(cursor)
                if window is None:
                    # Older than the in-memory window: catch up from the database.
                    with self.db.connection() as conn:
                        changes, cursor = store.changes_after(
                            conn, cursor, query, limit=BACKLOG_PAGE
                        )
                    for change in changes:
                        self.metrics.delivered.labels("backlog").inc()
                        yield self._response(change)
                    if changes:
                        last_sent = time.monotonic()
                    continue
                if not window:
                    wait = max(0.0, min(1.0, heartbeat - (time.monotonic() - last_sent)))
                    window = self.feed.wait_after(cursor, wait)
                    if window is None:
                        continue
                for change in window:
                    cursor = change.sequence
                    if query.matches(change.key):
                        self._observe_live(change)
                        yield self._response(change)
                        last_sent = time.monotonic()
                if time.monotonic() - last_sent >= heartbeat:
                    self.metrics.heartbeats.inc()
                    yield self._heartbeat(cursor)
                    last_sent = time.monotonic()
        finally:
            self.metrics.watchers.dec()

    def _response(self, change: Change) -> alert_service_pb2.WatchAlertsResponse:
        return alert_service_pb2.WatchAlertsResponse(alert=change.alert())

    def _heartbeat(self, cursor: int) -> alert_service_pb2.WatchAlertsResponse:
        beat = common_pb2.Heartbeat(latest_sequence=cursor)
        set_timestamp(beat.server_time, datetime.now(UTC))
        return alert_service_pb2.WatchAlertsResponse(heartbeat=beat)

    def _observe_live(self, change: Change) -> None:
        self.metrics.delivered.labels("live").inc()
        if change.change != "raised":
            return
        now = self.clock()
        origin, started = latency_origin(change.published_at, change.alert())
        self.metrics.delivery_latency.labels(origin).observe(max(0.0, now - started))
        if change.published_at is not None:
            self.pipeline.latency.labels("alert_delivered").observe(max(0.0, now - started))

    # --- ListAlerts ----------------------------------------------------------------------------

    def ListAlerts(
        self, request: alert_service_pb2.ListAlertsRequest, context: grpc.ServicerContext
    ) -> alert_service_pb2.ListAlertsResponse:
        query = scoped_query(request.filter, current_principal())
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"is at most {MAX_PAGE_SIZE}")
        try:
            before = store.parse_page_token(request.page_token)
        except ValueError as error:
            raise InvalidArgument.field("page_token", str(error)) from None
        with self.db.connection() as conn:
            rows = store.list_current(conn, query, before_raised=before, limit=size + 1)
        page = rows[:size]
        response = alert_service_pb2.ListAlertsResponse(alerts=[c.alert() for _, c in page])
        if len(rows) > size:
            response.next_page_token = store.page_token(page[-1][0])
        return response

    # --- AcknowledgeAlert / ResolveAlert -------------------------------------------------------

    def AcknowledgeAlert(
        self, request: alert_service_pb2.AcknowledgeAlertRequest, context: grpc.ServicerContext
    ) -> alert_service_pb2.AcknowledgeAlertResponse:
        principal = current_principal()
        # The note is logged with the change (the Alert has no acknowledgement note field).
        note = self._note(request.note, context)
        now = datetime.now(UTC)

        def acknowledge(alert: alerts_pb2.Alert) -> str:
            if alert.state == alerts_pb2.ALERT_STATE_ACKNOWLEDGED:
                return ""  # idempotent repeat
            if alert.state == alerts_pb2.ALERT_STATE_RESOLVED:
                raise InvalidTransition(f"alert {alert.alert_id} is already resolved")
            alert.state = alerts_pb2.ALERT_STATE_ACKNOWLEDGED
            set_timestamp(alert.acknowledged_at, now)
            alert.acknowledged_by = principal.principal_id
            return "acknowledged"

        alert = self._change(
            context, principal, request.alert_id, acknowledge, "acknowledged", note
        )
        return alert_service_pb2.AcknowledgeAlertResponse(alert=alert)

    def ResolveAlert(
        self, request: alert_service_pb2.ResolveAlertRequest, context: grpc.ServicerContext
    ) -> alert_service_pb2.ResolveAlertResponse:
        principal = current_principal()
        resolution = request.resolution
        if resolution not in store.RESOLUTION_NAMES:
            raise InvalidArgument.field(
                "resolution", "must be RESOLUTION_SETTLE, RESOLUTION_WAIVE or RESOLUTION_DISPUTE"
            )
        if principal.role not in frozenset({Role.FINANCE, Role.ADMIN}) | RESOLVERS[resolution]:
            raise PermissionDenied(
                f"{principal.describe()} may not {store.RESOLUTION_NAMES[resolution]} alerts"
            )
        note = self._note(request.note, context)
        now = datetime.now(UTC)

        def resolve(alert: alerts_pb2.Alert) -> str:
            if alert.state == alerts_pb2.ALERT_STATE_RESOLVED:
                if alert.resolution == resolution:
                    return ""  # idempotent repeat
                if alert.resolution != alerts_pb2.RESOLUTION_DISPUTE:
                    current = store.RESOLUTION_NAMES.get(alert.resolution, "resolved")
                    raise InvalidTransition(
                        f"alert {alert.alert_id} is already resolved ({current}); only a "
                        "disputed alert may be resolved again"
                    )
            alert.state = alerts_pb2.ALERT_STATE_RESOLVED
            alert.resolution = resolution
            alert.resolution_note = note
            set_timestamp(alert.resolved_at, now)
            alert.resolved_by = principal.principal_id
            return "resolved"

        alert = self._change(context, principal, request.alert_id, resolve, "resolved", note)
        return alert_service_pb2.ResolveAlertResponse(alert=alert)

    def _note(self, note: str, context: grpc.ServicerContext) -> str:
        # Stored in a text column and shown to other parties: printable text, bounded.
        return text_field("note", note, MAX_NOTE_CHARS)

    def _change(
        self,
        context: grpc.ServicerContext,
        principal: Principal,
        alert_id: str,
        mutate: Callable[[alerts_pb2.Alert], str],
        change_name: str,
        note: str,
    ) -> alerts_pb2.Alert:
        if not alert_id:
            raise InvalidArgument.field("alert_id", "is required")
        text_field("alert_id", alert_id)
        not_found = f"no alert {alert_id}"

        def guarded(alert: alerts_pb2.Alert) -> str:
            if not may_see(principal, alert.talent_id, alert.vendor_id):
                raise AlertNotFound(alert_id)
            return mutate(alert)

        try:
            with self.db.connection() as conn:
                change = store.append_change(conn, alert_id, guarded)
                if change is not None and change_name == "resolved":
                    store.record_resolution(conn, change.alert())
                latest = change or store.current(conn, alert_id)
        except AlertNotFound:
            _abort(context, grpc.StatusCode.NOT_FOUND, not_found)
        except InvalidTransition as error:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(error))
        if latest is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, not_found)
        alert = latest.alert()
        if change is not None:
            self.metrics.changes.labels(change_name).inc()
            if change_name == "resolved":
                self.metrics.resolutions.labels(store.RESOLUTION_NAMES[alert.resolution]).inc()
            log.info(
                f"alert {change_name}",
                extra={
                    "alert_id": alert_id,
                    "by": principal.principal_id,
                    "sequence": alert.sequence,
                    "note": note,
                },
            )
            self.on_commit()
        return alert


def servicer_descriptor() -> Any:
    return alert_service_pb2.DESCRIPTOR.services_by_name["AlertService"]
