"""The gRPC ``residuals.v1.ApprovalService``: a thin adapter over :class:`Approvals`,
:class:`ApprovalWatch` and the pre-flight check.

Errors map to status codes exactly as LicenceService's do
(:func:`residuals.licensing.grpc_errors.handle`). A watch stream is opened (caller,
request and database checked) before the first item, so its refusals are status codes too;
the stream then ends when the client goes away or the service stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from residuals.licensing.approval_watch import ApprovalWatch, Item, WatchRequest
from residuals.licensing.approvals import Approvals
from residuals.licensing.grpc_errors import handle
from residuals.platform.auth import Principal
from residuals.platform.grpc_server import Servicer
from residuals.v1 import approval_service_pb2, approval_service_pb2_grpc, approvals_pb2

SERVICE_NAME = "residuals.v1.ApprovalService"


class UseChecker(Protocol):
    """The pre-flight check (:class:`residuals.licensing.preflight.Preflight`)."""

    def check_use(
        self, principal: Principal, request: approval_service_pb2.CheckUseRequest
    ) -> approval_service_pb2.CheckUseResponse: ...

    def forget_approval(self, approval_id: str) -> None:
        """An approval this process just changed (the next check must not see it as it was)."""


class ApprovalService(approval_service_pb2_grpc.ApprovalServiceServicer):
    def __init__(self, approvals: Approvals, watch: ApprovalWatch, preflight: UseChecker) -> None:
        self.approvals = approvals
        self.watch = watch
        self.preflight = preflight

    def RequestApproval(self, request: Any, context: grpc.ServicerContext) -> Any:
        return approval_service_pb2.RequestApprovalResponse(
            approval=handle(context, lambda p: self.approvals.request_approval(p, request))
        )

    def ApproveUse(self, request: Any, context: grpc.ServicerContext) -> Any:
        approval = handle(context, lambda p: self.approvals.approve_use(p, request))
        self.preflight.forget_approval(approval.approval_id)
        return approval_service_pb2.ApproveUseResponse(approval=approval)

    def DenyUse(self, request: Any, context: grpc.ServicerContext) -> Any:
        approval = handle(context, lambda p: self.approvals.deny_use(p, request))
        self.preflight.forget_approval(approval.approval_id)
        return approval_service_pb2.DenyUseResponse(approval=approval)

    def GetApproval(self, request: Any, context: grpc.ServicerContext) -> Any:
        return approval_service_pb2.GetApprovalResponse(
            approval=handle(context, lambda p: self.approvals.get_approval(p, request.approval_id))
        )

    def ListApprovals(self, request: Any, context: grpc.ServicerContext) -> Any:
        page = handle(context, lambda p: self.approvals.list_approvals(p, request))
        return approval_service_pb2.ListApprovalsResponse(
            approvals=page.approvals, next_page_token=page.next_page_token
        )

    def WatchApprovalRequests(self, request: Any, context: grpc.ServicerContext) -> Any:
        watch = WatchRequest(
            request.licence_id,
            request.after_sequence,
            request.live_only,
            request.heartbeat_seconds,
            pending_only=request.pending_only,
        )
        stream = handle(context, lambda p: self.watch.open(p, watch, inbox=True))
        return _responses(
            stream.items(context.is_active), approval_service_pb2.WatchApprovalRequestsResponse
        )

    def WatchApprovals(self, request: Any, context: grpc.ServicerContext) -> Any:
        watch = WatchRequest(
            request.licence_id, request.after_sequence, request.live_only, request.heartbeat_seconds
        )
        stream = handle(context, lambda p: self.watch.open(p, watch, inbox=False))
        return _responses(
            stream.items(context.is_active), approval_service_pb2.WatchApprovalsResponse
        )

    def CheckUse(self, request: Any, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda p: self.preflight.check_use(p, request))


def _responses(items: Iterator[Item], wrap: Callable[..., Any]) -> Iterator[Any]:
    for item in items:
        if isinstance(item, approvals_pb2.Approval):
            yield wrap(approval=item)
        else:
            yield wrap(heartbeat=item)


def servicer(approvals: Approvals, watch: ApprovalWatch, preflight: UseChecker) -> Servicer:
    """The service ready for :func:`residuals.platform.grpc_server.make_grpc_server`."""
    return Servicer(
        ApprovalService(approvals, watch, preflight),
        approval_service_pb2_grpc.add_ApprovalServiceServicer_to_server,
        approval_service_pb2.DESCRIPTOR.services_by_name["ApprovalService"],
    )
