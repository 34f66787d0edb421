"""The gRPC ``residuals.v1.LicenceService``: a thin adapter over :class:`Registry`.

Each RPC takes the authenticated caller from :func:`current_principal` (set by the shared
AuthInterceptor), calls the registry, and maps the registry's errors to status codes with
machine-readable details (``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer):

* :class:`InvalidArgument` -> INVALID_ARGUMENT + ``google.rpc.BadRequest`` field violations,
  the message repeating them as ``field: description``;
* :class:`FailedPrecondition` -> FAILED_PRECONDITION + ``google.rpc.PreconditionFailure``;
* NOT_FOUND, ALREADY_EXISTS, ABORTED and PERMISSION_DENIED with their messages;
* a database that cannot be reached -> UNAVAILABLE (clients may retry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
import psycopg
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from psycopg_pool import PoolTimeout

from residuals.licensing.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from residuals.licensing.registry import Registry
from residuals.platform.auth import PermissionDenied, Principal, current_principal
from residuals.platform.grpc_server import Servicer
from residuals.v1 import licence_service_pb2, licence_service_pb2_grpc

log = logging.getLogger(__name__)

R = TypeVar("R")

SERVICE_NAME = "residuals.v1.LicenceService"


def abort(
    context: grpc.ServicerContext, code: int, message: str, details: Message | None = None
) -> NoReturn:
    """Abort with a ``google.rpc.Status`` (code, message and optional detail)."""
    status = status_pb2.Status(code=code, message=message)
    if details is not None:
        status.details.add().Pack(details)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


def _handle(context: grpc.ServicerContext, action: Callable[[Principal], R]) -> R:
    try:
        return action(current_principal())
    except InvalidArgument as error:
        context.abort_with_status(error.status())
        raise AssertionError("abort_with_status returned") from None
    except FailedPrecondition as error:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="STATE", subject=error.subject or error.field, description=str(error)
                )
            ]
        )
        abort(context, code_pb2.FAILED_PRECONDITION, str(error), failure)
    except NotFound as error:
        abort(context, code_pb2.NOT_FOUND, str(error))
    except (AlreadyExists, psycopg.errors.UniqueViolation) as error:
        message = str(error) if isinstance(error, AlreadyExists) else "already exists"
        abort(context, code_pb2.ALREADY_EXISTS, message)
    except Aborted as error:
        abort(context, code_pb2.ABORTED, str(error))
    except PermissionDenied as error:
        abort(context, code_pb2.PERMISSION_DENIED, str(error))
    except (psycopg.OperationalError, PoolTimeout):
        log.exception("database unavailable")
        abort(context, code_pb2.UNAVAILABLE, "the licence registry database is unavailable")


class LicenceService(licence_service_pb2_grpc.LicenceServiceServicer):
    """Every RPC is ``_handle(context, registry operation)``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def CreateLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateLicenceResponse(
            licence=_handle(context, lambda p: self.registry.create_licence(p, request))
        )

    def AmendLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.AmendLicenceResponse(
            licence=_handle(context, lambda p: self.registry.amend_licence(p, request))
        )

    def SuspendLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.SuspendLicenceResponse(
            licence=_handle(context, lambda p: self.registry.suspend_licence(p, request))
        )

    def ReinstateLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.ReinstateLicenceResponse(
            licence=_handle(context, lambda p: self.registry.reinstate_licence(p, request))
        )

    def RevokeLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RevokeLicenceResponse(
            licence=_handle(context, lambda p: self.registry.revoke_licence(p, request))
        )

    def GetLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _handle(context, lambda p: self.registry.get_licence(p, request))

    def ListLicences(self, request: Any, context: grpc.ServicerContext) -> Any:
        page = _handle(context, lambda p: self.registry.list_licences(p, request))
        return licence_service_pb2.ListLicencesResponse(
            licences=page.licences, next_page_token=page.next_page_token
        )

    def RegisterSigningKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RegisterSigningKeyResponse(
            key=_handle(context, lambda p: self.registry.register_signing_key(p, request))
        )

    def RevokeSigningKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RevokeSigningKeyResponse(
            key=_handle(context, lambda p: self.registry.revoke_signing_key(p, request))
        )

    def CreateApiKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        key, plaintext = _handle(context, lambda p: self.registry.create_api_key(p, request))
        return licence_service_pb2.CreateApiKeyResponse(api_key=key, secret=plaintext)

    def RevokeApiKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RevokeApiKeyResponse(
            api_key=_handle(context, lambda p: self.registry.revoke_api_key(p, request))
        )

    def CreateTalent(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateTalentResponse(
            talent=_handle(context, lambda p: self.registry.create_talent(p, request.talent))
        )

    def CreateAvatar(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateAvatarResponse(
            avatar=_handle(context, lambda p: self.registry.create_avatar(p, request.avatar))
        )

    def CreateVendor(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateVendorResponse(
            vendor=_handle(context, lambda p: self.registry.create_vendor(p, request.vendor))
        )

    def CreatePayee(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreatePayeeResponse(
            payee=_handle(context, lambda p: self.registry.create_payee(p, request.payee))
        )


def servicer(registry: Registry) -> Servicer:
    """The service ready for :func:`residuals.platform.grpc_server.make_grpc_server`."""
    return Servicer(
        LicenceService(registry),
        licence_service_pb2_grpc.add_LicenceServiceServicer_to_server,
        licence_service_pb2.DESCRIPTOR.services_by_name["LicenceService"],
    )
