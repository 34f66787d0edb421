"""Hostile request values and how to read a precise refusal (shared by the services' tests).

Printable injection strings must be harmless: bound as query parameters and compared with
``=``, they match nothing (or are refused as malformed ids). What PostgreSQL cannot hold
(NUL), what a terminal would interpret (escapes) and what is merely huge must be refused
with INVALID_ARGUMENT naming the field, never UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from residuals.codecs.timestamps import set_timestamp

#: Printable: a parameterised query treats them as plain text.
INJECTIONS = ("' OR 1=1 --", "%", "_", "x' UNION SELECT secret_sha256 FROM api_keys --", "*")
#: Refused as malformed wherever an id or filter text goes.
UNSTORABLE = ("a\x00b", "x" * 10_000, "\x1b]0;pwned\x07", "line\nbreak")


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The error ``call`` raises (a stream is read to its end)."""
    with pytest.raises(grpc.RpcError) as failed:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    return failed.value


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """``(field, description)`` of the ``google.rpc.BadRequest`` in the error's details."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            found += [(v.field, v.description) for v in request.field_violations]
    return found


def bad_field(call: Callable[[], Any]) -> str:
    """The one field an INVALID_ARGUMENT names; the message carries no raw control text."""
    error = rpc_error(call)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    details = error.details() or ""
    assert details.isprintable() and len(details) < 400, details
    ((field, _),) = violations(error)
    assert details.startswith(f"{field}: ")
    return field


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    set_timestamp(stamp, value)
    return stamp
