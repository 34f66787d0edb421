"""``NotificationsClient``: your webhook endpoints and your stream of rejected events.

Residuals signs webhooks (Standard Webhooks) for alerts, licence changes, approvals,
statements and rejected usage. With this client a vendor registers and manages its
endpoints (:meth:`~NotificationsClient.create_endpoint` returns the signing secret, once),
looks at deliveries and asks for one again, and follows its rejected usage events live
(:meth:`~NotificationsClient.watch_rejections`, which resumes by itself after a dropped
connection). Receivers check signatures with :func:`residuals_sdk.webhooks.verify_webhook`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from residuals_sdk._proto import common_pb2, notification_service_pb2, notifications_pb2
from residuals_sdk._service import RequestRefusedError, ServiceClient, refused

_SERVICE = "/residuals.v1.NotificationService/"
#: Stream errors after which watching resumes from the cursor.
_RESUMABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)

__all__ = ["CreatedEndpoint", "NotificationsClient", "RequestRefusedError"]


@dataclass(frozen=True)
class CreatedEndpoint:
    """An endpoint and its signing secret (``whsec_...``): store the secret now, it is
    not shown again (RotateEndpointSecret makes a new one)."""

    endpoint: notifications_pb2.WebhookEndpoint
    secret: str


class NotificationsClient(ServiceClient):
    """Manages one principal's webhook endpoints (its API key) over gRPC."""

    service_prefix = _SERVICE

    def __init__(
        self,
        *,
        target: str,
        api_key: str,
        credentials: grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        timeout: float = 10.0,
        reconnect_delay: float = 1.0,
    ) -> None:
        super().__init__(
            target=target,
            api_key=api_key,
            credentials=credentials,
            insecure=insecure,
            timeout=timeout,
        )
        self.reconnect_delay = reconnect_delay

    # --- endpoints --------------------------------------------------------------------

    def create_endpoint(
        self,
        url: str,
        *,
        description: str = "",
        event_types: Iterable[str] = (),
        min_severity: int = 0,
    ) -> CreatedEndpoint:
        """Register ``url``; empty ``event_types`` = every type you may receive."""
        request = notification_service_pb2.CreateEndpointRequest(
            url=url,
            description=description,
            event_types=list(event_types),
            min_severity=min_severity,  # type: ignore[arg-type]
        )
        response = self._unary_named("CreateEndpoint", request)
        return CreatedEndpoint(response.endpoint, response.secret)

    def get_endpoint(self, endpoint_id: str) -> notifications_pb2.WebhookEndpoint:
        request = notification_service_pb2.GetEndpointRequest(endpoint_id=endpoint_id)
        return self._unary_named("GetEndpoint", request).endpoint  # type: ignore[no-any-return]

    def list_endpoints(self, *, page_size: int = 0) -> Iterator[notifications_pb2.WebhookEndpoint]:
        """Every endpoint you may see, page by page."""
        token = ""
        while True:
            request = notification_service_pb2.ListEndpointsRequest(
                page_size=page_size, page_token=token
            )
            response = self._unary_named("ListEndpoints", request)
            yield from response.endpoints
            token = response.next_page_token
            if not token:
                return

    def update_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: Iterable[str] | None = None,
        min_severity: int | None = None,
        enabled: bool | None = None,
    ) -> notifications_pb2.WebhookEndpoint:
        """Change what is given; ``event_types=[]`` subscribes to every type."""
        request = notification_service_pb2.UpdateEndpointRequest(endpoint_id=endpoint_id)
        if url is not None:
            request.url = url
        if description is not None:
            request.description = description
        if event_types is not None:
            request.replace_event_types = True
            request.event_types.extend(event_types)
        if min_severity is not None:
            request.min_severity = min_severity  # type: ignore[assignment]
        if enabled is not None:
            request.enabled = enabled
        return self._unary_named("UpdateEndpoint", request).endpoint  # type: ignore[no-any-return]

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._unary_named(
            "DeleteEndpoint",
            notification_service_pb2.DeleteEndpointRequest(endpoint_id=endpoint_id),
        )

    def rotate_secret(
        self, endpoint_id: str, *, previous_secret_seconds: int = 0
    ) -> CreatedEndpoint:
        """A new secret; the old one keeps signing for ``previous_secret_seconds`` (0 = a day)."""
        request = notification_service_pb2.RotateEndpointSecretRequest(
            endpoint_id=endpoint_id, previous_secret_seconds=previous_secret_seconds
        )
        response = self._unary_named("RotateEndpointSecret", request)
        return CreatedEndpoint(response.endpoint, response.secret)

    def send_test_event(self, endpoint_id: str) -> notifications_pb2.Delivery:
        request = notification_service_pb2.SendTestEventRequest(endpoint_id=endpoint_id)
        return self._unary_named("SendTestEvent", request).delivery  # type: ignore[no-any-return]

    # --- deliveries -------------------------------------------------------------------

    def list_deliveries(
        self, endpoint_id: str, *, states: Iterable[int] = (), page_size: int = 0
    ) -> Iterator[notifications_pb2.Delivery]:
        """An endpoint's deliveries, newest first, page by page."""
        token = ""
        while True:
            request = notification_service_pb2.ListDeliveriesRequest(
                endpoint_id=endpoint_id,
                states=list(states),  # type: ignore[arg-type]
                page_size=page_size,
                page_token=token,
            )
            response = self._unary_named("ListDeliveries", request)
            yield from response.deliveries
            token = response.next_page_token
            if not token:
                return

    def redeliver(self, delivery_id: int) -> notifications_pb2.Delivery:
        request = notification_service_pb2.RedeliverRequest(delivery_id=delivery_id)
        return self._unary_named("Redeliver", request).delivery  # type: ignore[no-any-return]

    def list_event_types(self) -> list[notifications_pb2.EventType]:
        response = self._unary_named(
            "ListEventTypes", notification_service_pb2.ListEventTypesRequest()
        )
        return list(response.event_types)

    # --- rejections -------------------------------------------------------------------

    def watch_rejections(
        self,
        after_sequence: int = 0,
        *,
        vendor_id: str = "",
        heartbeat_seconds: int = 0,
        max_reconnects: int | None = None,
    ) -> Iterator[notifications_pb2.Rejection]:
        """Your rejected usage events in order, from after ``after_sequence``, then live,
        forever. A dropped stream is reopened from ``max(last rejection, last heartbeat)``
        (nothing lost, nothing repeated); refusals (PERMISSION_DENIED, ...) raise
        :class:`RequestRefusedError`. Keep the last ``sequence`` to resume after a restart.
        """
        cursor = after_sequence
        failures = 0
        while True:
            request = notification_service_pb2.WatchRejectionsRequest(
                after_sequence=cursor, heartbeat_seconds=heartbeat_seconds, vendor_id=vendor_id
            )
            call = self._channel.unary_stream(
                _SERVICE + "WatchRejections",
                request_serializer=notification_service_pb2.WatchRejectionsRequest.SerializeToString,
                response_deserializer=notification_service_pb2.WatchRejectionsResponse.FromString,
            )
            stream = call(request, metadata=self._metadata)
            try:
                for item in stream:
                    failures = 0
                    if item.HasField("rejection"):
                        if item.rejection.sequence > cursor:
                            cursor = item.rejection.sequence
                            yield item.rejection
                    elif item.HasField("heartbeat"):
                        cursor = max(cursor, _latest(item.heartbeat))
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
                if code not in _RESUMABLE:
                    raise refused(error) from None
                failures += 1
                if max_reconnects is not None and failures > max_reconnects:
                    raise refused(error) from None
            finally:
                stream.cancel()
            time.sleep(min(30.0, self.reconnect_delay * 2 ** max(0, failures - 1)))

    # --- lifecycle --------------------------------------------------------------------

    def _unary_named(self, method: str, request: Any) -> Any:
        response_type = getattr(notification_service_pb2, f"{method}Response")
        return self._unary(method, request, response_type)


def _latest(beat: common_pb2.Heartbeat) -> int:
    return int(beat.latest_sequence)
