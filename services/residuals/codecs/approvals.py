"""Approvals: the ``residuals.v1.Approval`` record ↔ the domain's
:class:`~residuals.domain.approvals.Approval` (docs/ROYALTY-RULES.md §5a).

The compacted ``residuals.approvals.v1`` topic carries each request's full state (key =
approval id). The meter and the period close need only the decision the rule reads:
:func:`decision` turns an APPROVED record into an :class:`Approval` and anything else (a
pending or denied request) into None, which the rule treats like an unknown id: the use is
held as UNAPPROVED_USE.

Decoding (:func:`decode`) is strict like the licence codec's: a record either becomes a
well-formed, bounded state or :class:`~residuals.codecs.licences.InvalidRecord` names the
field, so a forged or corrupt record on the topic cannot crash the meter or approve a use.
"""

from __future__ import annotations

from dataclasses import dataclass

from residuals.codecs.licences import InvalidRecord, _parse, _text, _time, _typed
from residuals.codecs.timestamps import set_timestamp
from residuals.domain.approvals import Approval
from residuals.v1 import approvals_pb2

#: The status names the registry stores, by protobuf value.
STATUS_NAMES = {
    approvals_pb2.APPROVAL_STATUS_PENDING: "pending",
    approvals_pb2.APPROVAL_STATUS_APPROVED: "approved",
    approvals_pb2.APPROVAL_STATUS_DENIED: "denied",
}
STATUS_VALUES = {name: value for value, name in STATUS_NAMES.items()}


@dataclass(frozen=True, slots=True)
class ApprovalState:
    """One record as read: its revision (newer replaces older) and its decision."""

    approval_id: str
    licence_id: str
    status: str
    revision: int
    #: The approval the rule reads; None unless the request was approved.
    approval: Approval | None


def decode(raw: bytes) -> ApprovalState:
    """A record's bytes as its state (strict; :class:`InvalidRecord` names the field)."""
    return from_proto(_parse(approvals_pb2.Approval.FromString, raw))


def from_proto(message: approvals_pb2.Approval) -> ApprovalState:
    _typed(message, "")
    approval_id = _text(message.approval_id, "approval_id")
    licence_id = _text(message.licence_id, "licence_id")
    category = _text(message.category, "category")
    status = STATUS_NAMES.get(message.status)
    if status is None:
        raise InvalidRecord("status", f"{message.status} is not a known approval status")
    if message.revision < 1:
        raise InvalidRecord("revision", "must be at least 1")
    approval: Approval | None = None
    if status == "approved":
        valid_from = _time(message, "valid_from", "", required=True)
        valid_until = _time(message, "valid_until", "")
        assert valid_from is not None
        if valid_until is not None and valid_until <= valid_from:
            raise InvalidRecord("valid_until", "is not after valid_from")
        if message.max_renders < 1:
            raise InvalidRecord("max_renders", "must be at least 1 in an approval")
        approval = Approval(
            approval_id, licence_id, category, valid_from, valid_until, message.max_renders
        )
    return ApprovalState(approval_id, licence_id, status, message.revision, approval)


def decision(message: approvals_pb2.Approval) -> Approval | None:
    """The approval the rule reads, None when the request is not (or not yet) approved."""
    return from_proto(message).approval


def to_proto(approval: Approval) -> approvals_pb2.Approval:
    """A domain approval as an APPROVED record (tests, benchmarks and the demo's cases)."""
    message = approvals_pb2.Approval(
        approval_id=approval.approval_id,
        licence_id=approval.licence_id,
        category=approval.category,
        status=approvals_pb2.APPROVAL_STATUS_APPROVED,
        max_renders=approval.max_renders,
        revision=1,
    )
    set_timestamp(message.valid_from, approval.valid_from)
    if approval.valid_until is not None:
        set_timestamp(message.valid_until, approval.valid_until)
    return message
