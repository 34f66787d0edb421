"""What every gRPC client of the SDK shares: the channel (TLS unless local), the API key
in each call's metadata, a default deadline, and closing."""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

import grpc

from residuals_sdk.errors import ResidualsError
from residuals_sdk.transports.security import grpc_channel_credentials

C = TypeVar("C", bound="ServiceClient")


class RequestRefusedError(ResidualsError):
    """Residuals refused a request; ``code`` is the gRPC status name (``PERMISSION_DENIED``,
    ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``...), ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def refused(error: grpc.RpcError) -> RequestRefusedError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return RequestRefusedError(code.name, details or "")


class ServiceClient:
    """A channel to one Residuals gRPC service, authenticated as one principal."""

    #: ``/residuals.v1.<Service>/``: what method names are appended to.
    service_prefix = ""

    def __init__(
        self,
        *,
        target: str,
        api_key: str,
        credentials: grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required (rsd_<key_id>_<secret>)")
        chosen = grpc_channel_credentials(target, credentials, insecure=insecure)
        self._channel = (
            grpc.secure_channel(target, chosen)
            if chosen is not None
            else grpc.insecure_channel(target)
        )
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.timeout = timeout

    def _unary(self, method: str, request: Any, response_type: Any) -> Any:
        """One unary call of ``method`` with the key and the default deadline; a refusal
        raises :class:`RequestRefusedError`."""
        call = self._channel.unary_unary(
            self.service_prefix + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return call(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise refused(error) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
