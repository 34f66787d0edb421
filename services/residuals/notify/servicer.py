"""gRPC ``residuals.v1.NotificationService``: endpoints, deliveries, WatchRejections.

Who may do what (the caller comes from :func:`residuals.platform.auth.current_principal`):
a vendor manages its own endpoints (owner ``vendor`` + its vendor id), a talent theirs
(``talent`` + talent id), finance and admin see and manage every endpoint. An endpoint
(or a delivery of one) the caller may not see is NOT_FOUND. What an endpoint may
subscribe to is the domain's rule (:func:`residuals.domain.notifications.filter_problem`):
a talent cannot receive ``usage.rejected``, a vendor no ``payout.*``.

Signing secrets are stored sealed and returned in plain text only by CreateEndpoint and
RotateEndpointSecret; they are never logged.

WatchRejections sends a vendor's rejections in sequence order: the backlog after the
request's cursor from PostgreSQL in pages, then live ones (woken by this process's
intake and by ``pg_notify`` from any replica), and a heartbeat carrying the cursor
whenever nothing was sent for a while. The cursor advances over other vendors'
rejections too (sequences commit in order, :mod:`residuals.notify.rejections`), so
resuming after ``max(last rejection sequence, last heartbeat latest_sequence)`` loses
nothing and repeats nothing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import grpc

from residuals.codecs.timestamps import set_timestamp
from residuals.domain import notifications as n
from residuals.domain.notifications import Audience, Owner
from residuals.notify import endpoints, rejections, ssrf
from residuals.notify.endpoints import DeliveryRow, EndpointRow, Scope
from residuals.notify.events import NewEvent
from residuals.notify.metrics import NotifyMetrics
from residuals.notify.rejections import Signal, StoredRejection
from residuals.notify.secrets import SecretBox
from residuals.notify.settings import DeliverySettings
from residuals.notify.store import NOTIFY_CHANNEL, queue_for_endpoint
from residuals.platform.auth import PermissionDenied, Principal, Role, current_principal
from residuals.platform.errors import InvalidArgument, enum_filters, text_field, text_fields
from residuals.platform.postgres import Database
from residuals.v1 import (
    common_pb2,
    notification_service_pb2,
    notification_service_pb2_grpc,
    notifications_pb2,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
BACKLOG_PAGE = 500
MAX_URL_CHARS = 2048
MIN_URL_CHARS = 8
MAX_DESCRIPTION_CHARS = 500
MAX_EVENT_TYPES = 64
DEFAULT_PREVIOUS_SECONDS = 86_400
MAX_PREVIOUS_SECONDS = 604_800
MAX_SEQUENCE = 2**63 - 1
MAX_HEARTBEAT_SECONDS = 3600
#: Longest wait between looks at the rejections table without a wake-up.
POLL_SECONDS = 2.0

_ENDPOINT_ID = re.compile(r"ep_[a-z2-7]{26}")
_STATE_NAMES = {
    notifications_pb2.DELIVERY_STATE_PENDING: "pending",
    notifications_pb2.DELIVERY_STATE_DELIVERED: "delivered",
    notifications_pb2.DELIVERY_STATE_FAILED: "failed",
}
_STATE_NUMBERS = {name: number for number, name in _STATE_NAMES.items()}

UrlCheck = Callable[[str], str | None]
Poke = Callable[[Iterable[str]], None]


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc context.abort returned")


def owner_of(principal: Principal) -> Owner:
    """The endpoint owner a principal acts as; PermissionDenied for service roles."""
    if principal.role is Role.VENDOR:
        return Owner(n.VENDOR, vendor_id=principal.vendor_id or "")
    if principal.role is Role.TALENT:
        return Owner(n.TALENT, talent_id=principal.talent_id or "")
    if principal.role is Role.FINANCE:
        return Owner(n.FINANCE)
    if principal.role is Role.ADMIN:
        return Owner(n.ADMIN)
    raise PermissionDenied(f"{principal.describe()} may not manage webhook endpoints")


def delivery_url_check(settings: DeliverySettings) -> UrlCheck:
    """Where an endpoint URL may point (notify/ssrf.py): resolving the host here refuses a
    private destination at registration; the sender checks again at every attempt."""

    def check(url: str) -> str | None:
        problem = ssrf.url_problem(url, allow_http=settings.allow_http)
        if problem is not None:
            return problem
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return ssrf.resolve_problem(parts.hostname or "", port, settings.allow_networks)

    return check


def _page_token(prefix: str, value: str | int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{value}".encode()).decode("ascii").rstrip("=")


def _parse_token(token: str, prefix: str) -> str:
    """The value of a token made by :func:`_page_token`; InvalidArgument otherwise."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "is not a page token of this list") from None
    found, _, value = text.partition(":")
    if found != prefix or not value:
        raise InvalidArgument.field("page_token", "is not a page token of this list")
    return value


def _page_size(size: int) -> int:
    if size > MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"is at most {MAX_PAGE_SIZE}")
    return size or DEFAULT_PAGE_SIZE


class NotificationServicer(notification_service_pb2_grpc.NotificationServiceServicer):
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        metrics: NotifyMetrics,
        *,
        url_check: UrlCheck,
        signal: Signal,
        poke: Poke | None = None,
        heartbeat_seconds: float = 5.0,
        poll_seconds: float = POLL_SECONDS,
        max_endpoints: int = 50,
    ) -> None:
        self.db = db
        #: Endpoints one owner (a vendor, a talent, all finance, all admin) may have:
        #: each costs a lane, a lease and deliveries, so a tenant cannot make unbounded work.
        self.max_endpoints = max_endpoints
        self.box = box
        self.metrics = metrics
        self.url_check = url_check
        self.signal = signal
        self.poke = poke or (lambda _ids: None)
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds

    # --- validation ------------------------------------------------------------------------

    def _url(self, url: str) -> str:
        if not url:
            raise InvalidArgument.field("url", "is required")
        text_field("url", url, MAX_URL_CHARS)
        if len(url) < MIN_URL_CHARS:
            raise InvalidArgument.field("url", f"is shorter than {MIN_URL_CHARS} characters")
        problem = self.url_check(url)
        if problem is not None:
            raise InvalidArgument.field("url", problem)
        return url

    @staticmethod
    def _event_types(owner: Owner, names: Iterable[str]) -> list[str]:
        values = list(names)
        if len(values) > MAX_EVENT_TYPES:
            raise InvalidArgument.field("event_types", f"lists more than {MAX_EVENT_TYPES}")
        text_fields("event_types", values, 64)
        problem = n.filter_problem(owner.role, values)
        if problem is not None:
            raise InvalidArgument.field("event_types", problem)
        return values

    @staticmethod
    def _severity(value: int) -> int:
        if value not in common_pb2.Severity.values():
            raise InvalidArgument.field("min_severity", f"{value} is not a known Severity")
        return int(value)

    @staticmethod
    def _endpoint_id(value: str) -> str:
        if not value:
            raise InvalidArgument.field("endpoint_id", "is required")
        text_field("endpoint_id", value)
        return value

    def _found(
        self, context: grpc.ServicerContext, row: EndpointRow | None, endpoint_id: str
    ) -> EndpointRow:
        if row is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no endpoint {endpoint_id}")
        return row

    # --- endpoints -------------------------------------------------------------------------

    def CreateEndpoint(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.CreateEndpointResponse:
        principal = current_principal()
        owner = owner_of(principal)
        description = text_field("description", request.description, MAX_DESCRIPTION_CHARS)
        event_types = self._event_types(owner, request.event_types)
        severity = self._severity(request.min_severity)
        url = self._url(request.url)
        secret = n.new_secret()
        with self.db.connection() as conn:
            held = endpoints.count_owned(conn, owner)
            if held >= self.max_endpoints:
                _abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{principal.describe()} already has {held} webhook endpoints, the most"
                    f" one owner may have ({self.max_endpoints}); delete one first",
                )
            row = endpoints.create(
                conn,
                endpoint_id=n.new_endpoint_id(),
                url=url,
                description=description,
                event_types=event_types,
                min_severity=severity,
                owner=owner,
                sealed_secret=self.box.seal(secret),
                created_by=principal.principal_id,
            )
        log.info(
            "webhook endpoint created",
            extra={"endpoint_id": row.endpoint_id, "by": principal.principal_id},
        )
        return notification_service_pb2.CreateEndpointResponse(
            endpoint=endpoint_message(row), secret=secret
        )

    def GetEndpoint(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.GetEndpointResponse:
        scope = Scope(owner_of(current_principal()))
        endpoint_id = self._endpoint_id(request.endpoint_id)
        with self.db.connection() as conn:
            row = endpoints.get(conn, scope, endpoint_id)
        row = self._found(context, row, endpoint_id)
        return notification_service_pb2.GetEndpointResponse(endpoint=endpoint_message(row))

    def ListEndpoints(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.ListEndpointsResponse:
        scope = Scope(owner_of(current_principal()))
        size = _page_size(request.page_size)
        after = ""
        if request.page_token:
            after = _parse_token(request.page_token, "ep")
            if not _ENDPOINT_ID.fullmatch(after):
                raise InvalidArgument.field("page_token", "is not a page token of this list")
        with self.db.connection() as conn:
            rows = endpoints.listing(conn, scope, after=after, limit=size + 1)
        page = rows[:size]
        response = notification_service_pb2.ListEndpointsResponse(
            endpoints=[endpoint_message(r) for r in page]
        )
        if len(rows) > size:
            response.next_page_token = _page_token("ep", page[-1].endpoint_id)
        return response

    def UpdateEndpoint(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.UpdateEndpointResponse:
        principal = current_principal()
        owner = owner_of(principal)
        scope = Scope(owner)
        endpoint_id = self._endpoint_id(request.endpoint_id)
        changes: dict[str, Any] = {}
        if request.HasField("description"):
            changes["description"] = text_field(
                "description", request.description, MAX_DESCRIPTION_CHARS
            )
        if request.replace_event_types:
            changes["event_types"] = None  # checked against the endpoint's owner below
        elif request.event_types:
            raise InvalidArgument.field(
                "event_types", "set replace_event_types to replace the endpoint's filter"
            )
        if request.HasField("min_severity"):
            changes["min_severity"] = self._severity(request.min_severity)
        if request.HasField("url"):
            changes["url"] = self._url(request.url)
        woken = False
        with self.db.connection() as conn:
            row = self._found(
                context, endpoints.get(conn, scope, endpoint_id, lock=True), endpoint_id
            )
            if "event_types" in changes:
                endpoint_owner = Owner(row.owner_role, row.vendor_id, row.talent_id)
                changes["event_types"] = self._event_types(endpoint_owner, request.event_types)
            endpoints.update(conn, endpoint_id, changes)
            if request.HasField("enabled"):
                if request.enabled and row.state != "enabled":
                    endpoints.enable(conn, endpoint_id)
                    conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
                    woken = True
                elif not request.enabled:
                    endpoints.disable_by_owner(conn, endpoint_id)
            updated = endpoints.get(conn, scope, endpoint_id)
        updated = self._found(context, updated, endpoint_id)
        log.info(
            "webhook endpoint updated",
            extra={
                "endpoint_id": endpoint_id,
                "by": principal.principal_id,
                "fields": sorted(changes) + (["enabled"] if request.HasField("enabled") else []),
                "state": updated.state,
            },
        )
        if woken:
            self.poke([endpoint_id])
        return notification_service_pb2.UpdateEndpointResponse(endpoint=endpoint_message(updated))

    def DeleteEndpoint(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.DeleteEndpointResponse:
        principal = current_principal()
        scope = Scope(owner_of(principal))
        endpoint_id = self._endpoint_id(request.endpoint_id)
        with self.db.connection() as conn:
            deleted = endpoints.delete(conn, scope, endpoint_id)
        if not deleted:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no endpoint {endpoint_id}")
        log.info(
            "webhook endpoint deleted",
            extra={"endpoint_id": endpoint_id, "by": principal.principal_id},
        )
        return notification_service_pb2.DeleteEndpointResponse()

    def RotateEndpointSecret(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.RotateEndpointSecretResponse:
        principal = current_principal()
        scope = Scope(owner_of(principal))
        endpoint_id = self._endpoint_id(request.endpoint_id)
        previous = request.previous_secret_seconds or DEFAULT_PREVIOUS_SECONDS
        if previous > MAX_PREVIOUS_SECONDS:
            raise InvalidArgument.field(
                "previous_secret_seconds", f"is at most {MAX_PREVIOUS_SECONDS:,} (7 days)"
            )
        secret = n.new_secret()
        with self.db.connection() as conn:
            self._found(context, endpoints.get(conn, scope, endpoint_id, lock=True), endpoint_id)
            endpoints.rotate(conn, endpoint_id, self.box.seal(secret), previous)
            row = endpoints.get(conn, scope, endpoint_id)
        row = self._found(context, row, endpoint_id)
        log.info(
            "webhook endpoint secret rotated",
            extra={
                "endpoint_id": endpoint_id,
                "by": principal.principal_id,
                "previous_secret_seconds": previous,
            },
        )
        return notification_service_pb2.RotateEndpointSecretResponse(
            endpoint=endpoint_message(row), secret=secret
        )

    # --- deliveries ------------------------------------------------------------------------

    def SendTestEvent(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.SendTestEventResponse:
        principal = current_principal()
        scope = Scope(owner_of(principal))
        endpoint_id = self._endpoint_id(request.endpoint_id)
        with self.db.connection() as conn:
            row = self._found(context, endpoints.get(conn, scope, endpoint_id), endpoint_id)
            event = NewEvent(
                n.WEBHOOK_TEST,
                str(uuid.uuid4()),
                datetime.now(UTC),
                {"endpoint_id": endpoint_id, "message": "test event"},
                Audience(row.vendor_id, (row.talent_id,) if row.talent_id else ()),
            )
            delivery_id = queue_for_endpoint(conn, event, endpoint_id)
            queued = endpoints.delivery(conn, scope, delivery_id)
        assert queued is not None
        self.metrics.events.labels(n.WEBHOOK_TEST).inc()
        self.metrics.queued.inc()
        self.poke([endpoint_id])
        return notification_service_pb2.SendTestEventResponse(delivery=delivery_message(queued))

    def ListDeliveries(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.ListDeliveriesResponse:
        scope = Scope(owner_of(current_principal()))
        endpoint_id = self._endpoint_id(request.endpoint_id)
        states = [
            _STATE_NAMES[s] for s in enum_filters("states", list(request.states), _STATE_NAMES)
        ]
        size = _page_size(request.page_size)
        before: int | None = None
        if request.page_token:
            value = _parse_token(request.page_token, "d")
            if not value.isdigit() or len(value) > 19:
                raise InvalidArgument.field("page_token", "is not a page token of this list")
            before = int(value)
        with self.db.connection() as conn:
            self._found(context, endpoints.get(conn, scope, endpoint_id), endpoint_id)
            rows = endpoints.deliveries(
                conn, endpoint_id, states=states, before=before, limit=size + 1
            )
        page = rows[:size]
        response = notification_service_pb2.ListDeliveriesResponse(
            deliveries=[delivery_message(r) for r in page]
        )
        if len(rows) > size:
            response.next_page_token = _page_token("d", page[-1].delivery_id)
        return response

    def Redeliver(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.RedeliverResponse:
        principal = current_principal()
        scope = Scope(owner_of(principal))
        if not request.delivery_id:
            raise InvalidArgument.field("delivery_id", "is required")
        if request.delivery_id > MAX_SEQUENCE:
            raise InvalidArgument.field("delivery_id", "is not a delivery id")
        with self.db.connection() as conn:
            original = endpoints.delivery(conn, scope, request.delivery_id)
            if original is None:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"no delivery {request.delivery_id}")
            new_id = endpoints.redeliver(conn, original.delivery_id)
            conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            queued = endpoints.delivery(conn, scope, new_id)
        assert queued is not None
        self.metrics.queued.inc()
        log.info(
            "delivery queued again",
            extra={
                "delivery_id": new_id,
                "redelivery_of": original.delivery_id,
                "endpoint_id": original.endpoint_id,
                "by": principal.principal_id,
            },
        )
        self.poke([original.endpoint_id])
        return notification_service_pb2.RedeliverResponse(delivery=delivery_message(queued))

    def ListEventTypes(
        self, request: Any, context: grpc.ServicerContext
    ) -> notification_service_pb2.ListEventTypesResponse:
        owner = owner_of(current_principal())
        return notification_service_pb2.ListEventTypesResponse(
            event_types=[
                notifications_pb2.EventType(
                    name=t.name,
                    description=t.description,
                    available=n.may_receive(owner.role, t.name),
                )
                for t in n.EVENT_TYPES
            ]
        )

    # --- WatchRejections -------------------------------------------------------------------

    def WatchRejections(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[notification_service_pb2.WatchRejectionsResponse]:
        principal = current_principal()
        vendor = self._rejections_scope(principal, request.vendor_id)
        if request.after_sequence > MAX_SEQUENCE:
            raise InvalidArgument.field(
                "after_sequence", f"is beyond the largest sequence ({MAX_SEQUENCE})"
            )
        if request.heartbeat_seconds > MAX_HEARTBEAT_SECONDS:
            raise InvalidArgument.field("heartbeat_seconds", f"is at most {MAX_HEARTBEAT_SECONDS}")
        heartbeat = float(request.heartbeat_seconds) or self.heartbeat_seconds
        if request.live_only:
            with self.db.connection() as conn:
                cursor = rejections.head(conn)
        else:
            cursor = int(request.after_sequence)
        closed = threading.Event()
        context.add_callback(closed.set)
        context.add_callback(self.signal.poke)  # wake this stream's wait at once
        self.metrics.watchers.inc()
        last_sent = time.monotonic()
        try:
            while not closed.is_set() and not self.signal.stopped:
                generation = self.signal.generation
                with self.db.connection() as conn:
                    found, cursor = rejections.after(
                        conn, cursor, vendor_id=vendor, limit=BACKLOG_PAGE
                    )
                for stored in found:
                    yield notification_service_pb2.WatchRejectionsResponse(
                        rejection=rejection_message(stored)
                    )
                if found:
                    last_sent = time.monotonic()
                    if len(found) >= BACKLOG_PAGE:
                        continue  # more backlog: no wait
                idle = time.monotonic() - last_sent
                if idle >= heartbeat:
                    beat = common_pb2.Heartbeat(latest_sequence=cursor)
                    set_timestamp(beat.server_time, datetime.now(UTC))
                    yield notification_service_pb2.WatchRejectionsResponse(heartbeat=beat)
                    last_sent = time.monotonic()
                    idle = 0.0
                self.signal.wait(generation, max(0.01, min(self.poll_seconds, heartbeat - idle)))
        finally:
            self.metrics.watchers.dec()

    @staticmethod
    def _rejections_scope(principal: Principal, requested: str) -> str | None:
        """The vendor whose rejections the caller reads (None: every vendor's)."""
        if requested:
            text_field("vendor_id", requested)
        if principal.role in (Role.FINANCE, Role.ADMIN):
            return requested or None
        if principal.role is Role.VENDOR:
            if requested and requested != principal.vendor_id:
                raise PermissionDenied(f"{principal.describe()} may watch only its own rejections")
            return principal.vendor_id or ""
        raise PermissionDenied(f"{principal.describe()} may not watch vendors' rejections")


# --- messages ----------------------------------------------------------------------------


def endpoint_message(row: EndpointRow) -> notifications_pb2.WebhookEndpoint:
    message = notifications_pb2.WebhookEndpoint(
        endpoint_id=row.endpoint_id,
        url=row.url,
        description=row.description,
        event_types=row.event_types,
        min_severity=row.min_severity,  # type: ignore[arg-type]
        owner_role=row.owner_role,
        vendor_id=row.vendor_id,
        talent_id=row.talent_id,
        state=(
            notifications_pb2.ENDPOINT_STATE_ENABLED
            if row.state == "enabled"
            else notifications_pb2.ENDPOINT_STATE_DISABLED
        ),
        disabled_reason=row.disabled_reason,
        created_by=row.created_by,
        pending_deliveries=row.pending,
    )
    set_timestamp(message.created_at, row.created_at)
    for field, value in (
        ("disabled_at", row.disabled_at),
        ("secret_rotated_at", row.secret_rotated_at),
        ("failing_since", row.failing_since),
    ):
        if value is not None:
            set_timestamp(getattr(message, field), value)
    return message


def delivery_message(row: DeliveryRow) -> notifications_pb2.Delivery:
    message = notifications_pb2.Delivery(
        delivery_id=row.delivery_id,
        endpoint_id=row.endpoint_id,
        message_id=row.message_id,
        event_type=row.event_type,
        state=_STATE_NUMBERS.get(row.state, 0),  # type: ignore[arg-type]
        attempts=row.attempts,
        last_status_code=max(0, row.last_status),
        last_error=row.last_error,
        body=row.body.decode("utf-8", "replace"),
        redelivery_of=row.redelivery_of or 0,
    )
    set_timestamp(message.created_at, row.created_at)
    if row.state == "pending" and row.next_attempt_at is not None:
        set_timestamp(message.next_attempt_at, row.next_attempt_at)
    if row.last_attempt_at is not None:
        set_timestamp(message.last_attempt_at, row.last_attempt_at)
    if row.delivered_at is not None:
        set_timestamp(message.delivered_at, row.delivered_at)
    return message


def rejection_message(row: StoredRejection) -> notifications_pb2.Rejection:
    message = notifications_pb2.Rejection(
        sequence=row.sequence,
        vendor_id=row.vendor_id,
        event_id=row.event_id,
        reason=row.reason,  # type: ignore[arg-type]
        detail=row.detail,
        licence_id=row.licence_id,
        source_topic=row.source_topic,
        source_partition=row.source_partition,
        source_offset=row.source_offset,
        original_bytes=row.original_bytes,
        original_sha256=row.original_sha256,
        message_id=row.message_id,
    )
    if row.received_at is not None:
        set_timestamp(message.received_at, row.received_at)
    return message


def servicer_descriptor() -> Any:
    return notification_service_pb2.DESCRIPTOR.services_by_name["NotificationService"]
