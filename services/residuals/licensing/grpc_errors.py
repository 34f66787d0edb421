"""Registry errors as gRPC status codes, shared by the licensing service's servicers.

:func:`handle` runs one use case with the authenticated caller and maps its expected
failures to status codes with machine-readable details (``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer), so LicenceService and ApprovalService answer the
same way:

* :class:`InvalidArgument` -> INVALID_ARGUMENT + ``google.rpc.BadRequest`` field violations,
  the message repeating them as ``field: description``;
* :class:`FailedPrecondition` -> FAILED_PRECONDITION + ``google.rpc.PreconditionFailure``;
* NOT_FOUND, ALREADY_EXISTS, ABORTED and PERMISSION_DENIED with their messages;
* a database that cannot be reached -> UNAVAILABLE (clients may retry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn, TypeVar

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
from residuals.platform.auth import PermissionDenied, Principal, current_principal

log = logging.getLogger(__name__)

R = TypeVar("R")


def abort(
    context: grpc.ServicerContext, code: int, message: str, details: Message | None = None
) -> NoReturn:
    """Abort with a ``google.rpc.Status`` (code, message and optional detail)."""
    status = status_pb2.Status(code=code, message=message)
    if details is not None:
        status.details.add().Pack(details)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


def handle(context: grpc.ServicerContext, action: Callable[[Principal], R]) -> R:
    """``action(caller)``, its expected failures turned into status codes (abort raises)."""
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
