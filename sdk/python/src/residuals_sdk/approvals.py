"""``ApprovalsClient``: ask before you render.

Some licences require the talent's approval of each use in sensitive categories (political
or insurance ads, say). A use without one is held, not paid for, and the talent is
alerted. So before rendering, a vendor:

1. checks the use (:meth:`ApprovalsClient.check_use`): ``ALLOW``, ``DENY`` (with the
   violation the meter would record) or ``NEEDS_APPROVAL``;
2. if it needs approval, asks (:meth:`~ApprovalsClient.request_approval`, idempotent on
   your ``request_id``) and waits for the talent's decision
   (:meth:`~ApprovalsClient.wait_for_approval`, a resumable server stream);
3. renders inside the approved window, up to ``max_renders``, naming the approval:
   ``client.render(..., approval_id=approval.approval_id)``.

The client talks to Residuals' licensing service (``residuals.v1.ApprovalService``) with
your API key; like the gateway transport it encrypts unless the peer is on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from residuals_sdk._proto import approval_service_pb2, approvals_pb2, common_pb2
from residuals_sdk._service import ServiceClient, refused

_SERVICE = "/residuals.v1.ApprovalService/"
_KINDS = ("RENDER", "VIEW", "AD_IMPRESSION")
#: Stream errors after which waiting resumes from the last change seen.
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)


@dataclass(frozen=True)
class UseCheck:
    """What the meter would do with a use now."""

    #: ``ALLOW``, ``DENY`` or ``NEEDS_APPROVAL``.
    verdict: str
    #: The violation the held part would be recorded as (``UNAPPROVED_USE``, ...), or None.
    violation: str | None
    #: Units of the use's kind left under the licence's quota this period (an estimate:
    #: uses in flight are not counted yet); None when the licence has no quota for it.
    quota_remaining: int | None
    #: Renders the named approval still covers; None when the use names no live approval.
    approved_renders_remaining: int | None
    licence_version: int
    explanation: str

    @property
    def allowed(self) -> bool:
        return self.verdict == "ALLOW"


@dataclass(frozen=True)
class Approval:
    """A request for approval and, once decided, the talent's decision."""

    approval_id: str
    licence_id: str
    category: str
    #: ``PENDING``, ``APPROVED`` or ``DENIED``.
    status: str
    renders_requested: int
    #: The approved window [valid_from, valid_until) and renders (APPROVED only).
    valid_from: datetime | None
    valid_until: datetime | None
    max_renders: int
    #: The talent's note, or the reason of a denial.
    reason: str
    request_id: str
    sequence: int

    @property
    def approved(self) -> bool:
        return self.status == "APPROVED"

    @property
    def decided(self) -> bool:
        return self.status != "PENDING"

    @classmethod
    def from_proto(cls, message: Any) -> Approval:
        return cls(
            approval_id=message.approval_id,
            licence_id=message.licence_id,
            category=message.category,
            status=approvals_pb2.ApprovalStatus.Name(message.status).removeprefix(
                "APPROVAL_STATUS_"
            ),
            renders_requested=message.renders_requested,
            valid_from=_time(message, "valid_from"),
            valid_until=_time(message, "valid_until"),
            max_renders=message.max_renders,
            reason=message.reason,
            request_id=message.request_id,
            sequence=message.sequence,
        )


class ApprovalsClient(ServiceClient):
    """Checks uses and asks for approvals, as one vendor (its API key)."""

    service_prefix = _SERVICE

    # --- calls ----------------------------------------------------------------------

    def check_use(
        self,
        *,
        licence_id: str,
        avatar_id: str,
        category: str,
        territory: str,
        kind: str = "RENDER",
        channel: str | None = None,
        occurred_at: datetime | None = None,
        approval_id: str | None = None,
        quantity: int = 1,
    ) -> UseCheck:
        """The verdict the use would get now (changes nothing)."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}")
        request = approval_service_pb2.CheckUseRequest(
            licence_id=licence_id,
            avatar_id=avatar_id,
            kind=common_pb2.UsageKind.Value(f"USAGE_KIND_{kind}"),
            category=category,
            territory=territory,
            channel=channel or "",
            approval_id=approval_id or "",
            quantity=quantity,
        )
        if occurred_at is not None:
            _set(request.occurred_at, occurred_at)
        response = self._unary("CheckUse", request, approval_service_pb2.CheckUseResponse)
        return UseCheck(
            verdict=approval_service_pb2.UseVerdict.Name(response.verdict).removeprefix(
                "USE_VERDICT_"
            ),
            violation=(
                common_pb2.ViolationKind.Name(response.violation).removeprefix("VIOLATION_KIND_")
                if response.violation
                else None
            ),
            quota_remaining=(
                response.quota_remaining if response.HasField("quota_remaining") else None
            ),
            approved_renders_remaining=(
                response.approved_renders_remaining
                if response.HasField("approved_renders_remaining")
                else None
            ),
            licence_version=response.licence_version,
            explanation=response.explanation,
        )

    def request_approval(
        self,
        *,
        request_id: str,
        licence_id: str,
        category: str,
        brief: str,
        renders: int = 1,
        script_sha256: str = "",
        media_sha256: str = "",
        territories: Iterable[str] = (),
        channels: Iterable[str] = (),
        window_from: datetime | None = None,
        window_until: datetime | None = None,
    ) -> Approval:
        """Ask the talent to approve a use. ``request_id`` is yours: asking again with it
        (a retry) returns the same request instead of making a second one."""
        request = approval_service_pb2.RequestApprovalRequest(
            request_id=request_id,
            licence_id=licence_id,
            category=category,
            use=approvals_pb2.UseDescription(
                brief=brief,
                script_sha256=script_sha256,
                media_sha256=media_sha256,
                territories=list(territories),
                channels=list(channels),
            ),
            renders_requested=renders,
        )
        if window_from is not None:
            _set(request.requested_from, window_from)
        if window_until is not None:
            _set(request.requested_until, window_until)
        response = self._unary(
            "RequestApproval", request, approval_service_pb2.RequestApprovalResponse
        )
        return Approval.from_proto(response.approval)

    def get_approval(self, approval_id: str) -> Approval:
        request = approval_service_pb2.GetApprovalRequest(approval_id=approval_id)
        response = self._unary("GetApproval", request, approval_service_pb2.GetApprovalResponse)
        return Approval.from_proto(response.approval)

    def wait_for_approval(self, approval_id: str, *, timeout: float = 3600.0) -> Approval:
        """Block until the talent decides (APPROVED or DENIED) and return the decision;
        ``TimeoutError`` after ``timeout`` seconds. Follows the server's change stream and
        resumes it where it stopped after a dropped connection."""
        deadline = time.monotonic() + timeout
        current = self.get_approval(approval_id)
        cursor = current.sequence - 1 if current.sequence else 0
        while not current.decided:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{approval_id} was not decided within {timeout:g}s")
            try:
                for change in self._changes(current.licence_id, cursor, left):
                    cursor = max(cursor, change.sequence)
                    if change.approval_id == approval_id:
                        current = change
                        if current.decided:
                            break
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(
                        f"{approval_id} was not decided within {timeout:g}s"
                    ) from None
                if error.code() not in _RESUMABLE:
                    raise refused(error) from None
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return current

    # --- plumbing -------------------------------------------------------------------

    def _changes(self, licence_id: str, after: int, timeout: float) -> Iterator[Approval]:
        request = approval_service_pb2.WatchApprovalsRequest(
            licence_id=licence_id, after_sequence=after
        )
        call = self._channel.unary_stream(
            _SERVICE + "WatchApprovals",
            request_serializer=approval_service_pb2.WatchApprovalsRequest.SerializeToString,
            response_deserializer=approval_service_pb2.WatchApprovalsResponse.FromString,
        )
        stream = call(request, metadata=self._metadata, timeout=timeout)
        try:
            for item in stream:
                if item.HasField("approval"):
                    yield Approval.from_proto(item.approval)
        finally:
            stream.cancel()


def _set(target: Timestamp, value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware (UTC)")
    target.FromDatetime(value.astimezone(UTC))


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)
