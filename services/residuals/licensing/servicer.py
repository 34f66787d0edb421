"""The gRPC ``residuals.v1.LicenceService``: a thin adapter over :class:`Registry`.

Each RPC takes the authenticated caller from :func:`current_principal` (set by the shared
AuthInterceptor), calls the registry, and maps the registry's errors to status codes with
machine-readable details through :func:`residuals.licensing.grpc_errors.handle` (shared
with ApprovalService).
"""

from __future__ import annotations

from typing import Any

import grpc

from residuals.licensing.grpc_errors import handle
from residuals.licensing.registry import Registry
from residuals.platform.grpc_server import Servicer
from residuals.v1 import licence_service_pb2, licence_service_pb2_grpc

SERVICE_NAME = "residuals.v1.LicenceService"


class LicenceService(licence_service_pb2_grpc.LicenceServiceServicer):
    """Every RPC is ``handle(context, registry operation)``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def CreateLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateLicenceResponse(
            licence=handle(context, lambda p: self.registry.create_licence(p, request))
        )

    def AmendLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.AmendLicenceResponse(
            licence=handle(context, lambda p: self.registry.amend_licence(p, request))
        )

    def SuspendLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.SuspendLicenceResponse(
            licence=handle(context, lambda p: self.registry.suspend_licence(p, request))
        )

    def ReinstateLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.ReinstateLicenceResponse(
            licence=handle(context, lambda p: self.registry.reinstate_licence(p, request))
        )

    def RevokeLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RevokeLicenceResponse(
            licence=handle(context, lambda p: self.registry.revoke_licence(p, request))
        )

    def GetLicence(self, request: Any, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda p: self.registry.get_licence(p, request))

    def ListLicences(self, request: Any, context: grpc.ServicerContext) -> Any:
        page = handle(context, lambda p: self.registry.list_licences(p, request))
        return licence_service_pb2.ListLicencesResponse(
            licences=page.licences, next_page_token=page.next_page_token
        )

    def RegisterSigningKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RegisterSigningKeyResponse(
            key=handle(context, lambda p: self.registry.register_signing_key(p, request))
        )

    def RevokeSigningKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RevokeSigningKeyResponse(
            key=handle(context, lambda p: self.registry.revoke_signing_key(p, request))
        )

    def CreateApiKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        key, plaintext = handle(context, lambda p: self.registry.create_api_key(p, request))
        return licence_service_pb2.CreateApiKeyResponse(api_key=key, secret=plaintext)

    def RevokeApiKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.RevokeApiKeyResponse(
            api_key=handle(context, lambda p: self.registry.revoke_api_key(p, request))
        )

    def CreateTalent(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateTalentResponse(
            talent=handle(context, lambda p: self.registry.create_talent(p, request.talent))
        )

    def CreateAvatar(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateAvatarResponse(
            avatar=handle(context, lambda p: self.registry.create_avatar(p, request.avatar))
        )

    def CreateVendor(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreateVendorResponse(
            vendor=handle(context, lambda p: self.registry.create_vendor(p, request.vendor))
        )

    def CreatePayee(self, request: Any, context: grpc.ServicerContext) -> Any:
        return licence_service_pb2.CreatePayeeResponse(
            payee=handle(context, lambda p: self.registry.create_payee(p, request.payee))
        )


def servicer(registry: Registry) -> Servicer:
    """The service ready for :func:`residuals.platform.grpc_server.make_grpc_server`."""
    return Servicer(
        LicenceService(registry),
        licence_service_pb2_grpc.add_LicenceServiceServicer_to_server,
        licence_service_pb2.DESCRIPTOR.services_by_name["LicenceService"],
    )
