"""The trust boundary: one judgement of a usage record's bytes, for the gateway and the meter.

Everything a vendor sends is hostile until this module has judged it, whether it came
through the ingest gateway or straight onto ``residuals.usage.v1``. Both call
:func:`admit` with the record's bytes, so the same bytes get the same verdict on either
path (a test runs one corpus through both). Checks, in order; the first failure is the
reason (the rules' §2 names):

1. ``MALFORMED`` / ``OVERSIZED``: no value (a tombstone); more than the per-event limit;
2. ``MALFORMED``: not a ``SignedUsageEvent`` (strictly: a known field with the wrong wire
   type is refused, not skipped), or a ``key_id`` that is not a bounded printable id;
3. ``BAD_SIGNATURE``: no/unknown/revoked key, a key of another vendor than the one
   authenticated (the gateway's API key, or the meter's ``residuals-vendor`` claim), or a
   signature not matching the payload directly or through the batch's Merkle proof. Nothing
   in the payload is trusted before this passes;
4. ``MALFORMED`` / ``INVALID_QUANTITY``: the payload is not a ``UsageEvent`` (strictly), its
   ``occurred_at`` is out of bounds, or :func:`~residuals.domain.events.parse_event` refuses
   it (the rules' checks 1-2, with the event model's bounds);
5. ``TOO_LATE`` / ``IN_FUTURE`` against the trusted receipt time (the caller's; see
   :mod:`residuals.codecs.receipt`);
6. ``UNKNOWN_LICENCE``; ``VENDOR_MISMATCH`` (the payload names another vendor than the
   authenticated one, or the authenticated vendor is not the licensee); ``AVATAR_MISMATCH``;
   ``CURRENCY_MISMATCH``. Retractions name no licence to check; their vendor still must match;
7. ``MALFORMED``: (meter) the record key is not the event's licence.

Vendor text in details is escaped and bounded (:func:`~residuals.domain.bounds.printable`),
and ids are echoed back only when they are within bounds, so a refusal can always be
logged, shown and stored. De-duplication and everything that depends on changing state
(scope, suspension, quotas, retraction originals) come after admission, in the meter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from google.protobuf.message import DecodeError

from residuals.codecs.signed import (
    SigningKeyRecord,
    decode_envelope,
    decode_payload,
    signature_problem,
)
from residuals.codecs.usage import PayloadError, kind_name, parse_message
from residuals.domain.bounds import MAX_ID_CHARS, printable, text_problem
from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.validation import check_against, check_window
from residuals.domain.vocabulary import Kind, RejectReason
from residuals.v1 import common_pb2, usage_pb2

MAX_EVENT_BYTES = 64 * 1024

KeyLookup = Callable[[str], SigningKeyRecord | None]
LicenceLookup = Callable[[str], Licence | None]

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_MAX_TRACESTATE = 512


class Admitted(NamedTuple):
    """A record that passed every check: what later stages may now trust (a named tuple:
    one is made for every record the meter rates)."""

    envelope: usage_pb2.SignedUsageEvent
    message: usage_pb2.UsageEvent
    event: UsageEvent
    #: The authenticated vendor: the signing key's (and the API key's, at the gateway).
    vendor_id: str
    #: The licence the record is routed by: the event's, or (retractions) the payload's.
    licence_id: str
    trace: common_pb2.TraceContext | None = None
    #: The event's licence as the checks saw it (None: a retraction, or no directory).
    licence: Licence | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A record that failed a check: the reason, a safe detail, and what could be trusted."""

    reason: RejectReason
    detail: str
    #: The authenticated vendor, once a signature proved it ("" before).
    vendor_id: str = ""
    #: Ids read from the payload, only when they are within bounds ("" otherwise).
    event_id: str = ""
    licence_id: str = ""
    #: The event kind's name when the payload was readable, else UNKNOWN (metrics label).
    kind: str = "UNKNOWN"
    trace: common_pb2.TraceContext | None = None


Verdict = Admitted | Refused


def trusted_trace(
    traceparent: str | bytes | None, tracestate: str | bytes = ""
) -> common_pb2.TraceContext | None:
    """A W3C trace context only when it is well formed (version 00), else None: a vendor's
    trace headers are passed on to every service and stored, so they are bounded too."""
    if not traceparent:
        return None
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", "replace")
    if len(traceparent) != 55 or not _TRACEPARENT.fullmatch(traceparent):
        return None
    if isinstance(tracestate, bytes):
        tracestate = tracestate.decode("ascii", "replace")
    if (
        len(tracestate) > _MAX_TRACESTATE
        or not tracestate.isascii()
        or not (tracestate.isprintable())
    ):
        tracestate = ""
    return common_pb2.TraceContext(traceparent=traceparent, tracestate=tracestate)


def _id(value: str) -> str:
    """``value`` when it is a bounded printable id (safe to echo and store), else ""."""
    return value if value and text_problem(value) is None else ""


def _kind(message: usage_pb2.UsageEvent) -> str:
    return kind_name(message.kind) or "UNKNOWN"


def _window_detail(reason: RejectReason, occurred: datetime, received: datetime) -> str:
    when = f"{occurred:%Y-%m-%dT%H:%M:%S}Z"
    receipt = f"{received:%Y-%m-%dT%H:%M:%S}Z"
    if reason is RejectReason.TOO_LATE:
        return f"occurred_at {when} is more than 35 days before receipt at {receipt}"
    return f"occurred_at {when} is more than 5 minutes after receipt at {receipt}"


def admit(
    raw: bytes | None,
    *,
    keys: KeyLookup,
    licences: LicenceLookup | None,
    received_at: datetime,
    vendor_id: str | None = None,
    routing_key: bytes | None = None,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> Verdict:
    """The verdict on one record's bytes.

    ``vendor_id``: the vendor the caller authenticated (gateway: the API key's; meter: the
    ``residuals-vendor`` claim when present), or None to take the signing key's vendor.
    ``licences`` None skips the licence checks (a gateway without a directory).
    ``routing_key``: the record key to check against the event's licence (the meter), or
    None when the caller routes by the verdict itself (the gateway).
    Raises only when a lookup's source fails (the caller retries or answers UNAVAILABLE).
    """
    if raw is None:
        return Refused(RejectReason.MALFORMED, "a tombstone (null value), not a usage event")
    if len(raw) > max_event_bytes:
        return Refused(
            RejectReason.OVERSIZED,
            f"event is {len(raw):,} bytes, the limit is {max_event_bytes:,}",
        )
    try:
        envelope = decode_envelope(raw)
    except DecodeError as error:
        return Refused(RejectReason.MALFORMED, f"not a SignedUsageEvent: {printable(str(error))}")
    trace = (
        trusted_trace(envelope.trace.traceparent, envelope.trace.tracestate)
        if envelope.HasField("trace")
        else None
    )
    key_id = envelope.key_id
    if key_id and (len(key_id) > MAX_ID_CHARS or not key_id.isprintable()):
        return Refused(RejectReason.MALFORMED, f"key_id {text_problem(key_id)}", trace=trace)

    key = keys(key_id) if key_id else None
    problem = signature_problem(envelope, key, vendor_id=vendor_id, at=received_at)
    if problem is not None or key is None:
        return Refused(RejectReason.BAD_SIGNATURE, printable(problem or ""), trace=trace)
    signer = key.vendor_id

    try:
        message = decode_payload(envelope.payload)
    except DecodeError as error:
        detail = f"payload is not a UsageEvent: {printable(str(error))}"
        return Refused(RejectReason.MALFORMED, detail, signer, trace=trace)
    try:
        parsed = parse_message(message)  # parse_event(to_raw(message)), most without the mapping
    except PayloadError as error:
        return _refuse(RejectReason.MALFORMED, str(error), signer, message, trace)
    if isinstance(parsed, Rejection):
        return _refuse(parsed.reason, parsed.detail, signer, message, trace)
    event = parsed
    # A retraction's licence (the original's, for routing) is in the payload even though
    # the domain event does not keep it.
    licence_id = event.licence_id or _id(message.licence_id)

    window = check_window(event.occurred_at, received_at)
    if window is not None:
        detail = _window_detail(window, event.occurred_at, received_at)
        return _refuse(window, detail, signer, message, trace)

    licence = None
    if event.kind is not Kind.RETRACTION and licences is not None:
        licence = licences(licence_id)
        if licence is None:
            detail = f"no licence {licence_id!r}"
            return _refuse(RejectReason.UNKNOWN_LICENCE, detail, signer, message, trace)
    if event.vendor_id != signer:
        detail = f"payload names vendor {event.vendor_id!r}, the event is signed by {signer!r}"
        return _refuse(RejectReason.VENDOR_MISMATCH, detail, signer, message, trace)
    if licence is not None:
        found = check_against(event, licence)
        if found is not None:
            return _refuse(found.reason, found.detail, signer, message, trace)
    if routing_key is not None and event.kind is not Kind.RETRACTION:
        routing = routing_key.decode("utf-8", "replace")
        if routing != licence_id:
            detail = (
                f"record key {printable(routing, 64)!r} is not the event's licence {licence_id!r}"
            )
            return _refuse(RejectReason.MALFORMED, detail, signer, message, trace)
    return Admitted(envelope, message, event, signer, licence_id, trace, licence)


def _refuse(
    reason: RejectReason,
    detail: str,
    signer: str,
    message: usage_pb2.UsageEvent,
    trace: common_pb2.TraceContext | None,
) -> Refused:
    """A refusal after the signature proved the vendor: the payload's ids when bounded."""
    return Refused(
        reason,
        detail,
        signer,
        _id(message.event_id),
        _id(message.licence_id),
        _kind(message),
        trace,
    )
