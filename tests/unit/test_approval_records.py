"""Approval records as the meter and the close decode them (residuals.codecs.approvals):
strict and total, the offending field named, only an APPROVED record an approval."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from residuals.codecs import approvals as codec
from residuals.codecs.licences import InvalidRecord
from residuals.domain.approvals import Approval
from residuals.v1 import approvals_pb2

START = datetime(2026, 10, 1, tzinfo=UTC)
APPROVAL = Approval("APR-1", "LIC-1", "insurance", START, datetime(2026, 11, 1, tzinfo=UTC), 5)


def record() -> approvals_pb2.Approval:
    return codec.to_proto(APPROVAL)


def test_an_approved_record_round_trips_to_the_domain_approval() -> None:
    state = codec.decode(record().SerializeToString())
    assert (state.approval_id, state.licence_id, state.status, state.revision) == (
        "APR-1",
        "LIC-1",
        "approved",
        1,
    )
    assert state.approval == APPROVAL
    assert codec.decision(record()) == APPROVAL


@pytest.mark.parametrize(
    "status", [approvals_pb2.APPROVAL_STATUS_PENDING, approvals_pb2.APPROVAL_STATUS_DENIED]
)
def test_a_request_not_approved_is_no_approval_whatever_its_window(status: int) -> None:
    message = record()
    message.status = status  # type: ignore[assignment]
    state = codec.decode(message.SerializeToString())
    assert state.approval is None and state.status == codec.STATUS_NAMES[status]  # type: ignore[index]


def _set(name: str, value: Any) -> Any:
    return lambda m: setattr(m, name, value)


BAD: dict[str, tuple[Any, str]] = {
    "no id": (_set("approval_id", ""), "approval_id"),
    "escape in id": (_set("approval_id", "APR\x1b[2J"), "approval_id"),
    "no licence": (_set("licence_id", ""), "licence_id"),
    "NUL in category": (_set("category", "ins\x00"), "category"),
    "unknown status": (_set("status", 99), "status"),
    "unspecified status": (_set("status", 0), "status"),
    "revision 0": (_set("revision", 0), "revision"),
    "approved without valid_from": (lambda m: m.ClearField("valid_from"), "valid_from"),
    "valid_from out of range": (lambda m: setattr(m.valid_from, "seconds", 2**62), "valid_from"),
    "negative nanos": (lambda m: setattr(m.valid_until, "nanos", -1), "valid_until"),
    "window ends before it starts": (
        lambda m: setattr(m.valid_until, "seconds", m.valid_from.seconds),
        "valid_until",
    ),
    "approved for no renders": (_set("max_renders", 0), "max_renders"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_record_raises_one_error_naming_the_field(name: str) -> None:
    mutate, field = BAD[name]
    message = record()
    mutate(message)
    with pytest.raises(InvalidRecord) as raised:
        codec.decode(message.SerializeToString())
    assert raised.value.field == field, raised.value


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\xff", b"\x5a\x05\x08"])
def test_bytes_that_are_not_a_record_name_the_record(raw: bytes) -> None:
    with pytest.raises(InvalidRecord) as raised:
        codec.decode(raw)
    assert raised.value.field == "(record)"


def test_a_field_with_the_wrong_wire_type_is_refused_not_read_as_its_default() -> None:
    # field 13 (max_renders) as a length-delimited string: not silently "0" or unknown
    raw = record().SerializeToString() + bytes([0x6A, 0x01, 0x41])
    with pytest.raises(InvalidRecord, match="max_renders"):
        codec.decode(raw)
