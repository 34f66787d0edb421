"""The gateway's verdict on one event, from raw bytes to ACCEPTED / DUPLICATE / REJECTED.

Checks, in order (the first failure is the reason; ROYALTY-RULES.md §2 names):

1. ``OVERSIZED``: more than the per-event limit (64 KiB), before parsing anything;
2. ``MALFORMED``: not a ``SignedUsageEvent``;
3. ``BAD_SIGNATURE``: no/unknown/revoked key, a key of another vendor than the one the API
   key authenticated, or a signature not matching the payload bytes (directly, or through
   the batch's Merkle inclusion proof: :func:`~residuals.codecs.signed.signature_problem`,
   the meter's check too). Nothing in the payload is trusted before this passes;
4. ``MALFORMED`` / ``INVALID_QUANTITY``: the payload is not a ``UsageEvent``, or
   :func:`~residuals.domain.events.parse_event` refuses it (the domain's rules, on
   :func:`~residuals.codecs.usage.to_raw`, exactly as replay and the meter apply them);
5. ``TOO_LATE`` / ``IN_FUTURE``: :func:`~residuals.domain.validation.check_window`
   against the gateway's receive time;
6. ``UNKNOWN_LICENCE``, ``VENDOR_MISMATCH``, ``AVATAR_MISMATCH``, ``CURRENCY_MISMATCH``
   in §2 order: :func:`~residuals.domain.validation.check_licence` against the cached
   licence identity, plus the payload's ``vendor_id`` against the authenticated vendor
   (a vendor cannot report usage in another vendor's name, even on that vendor's licence).
   Retractions name no licence to check; their vendor still must match;
7. ``DUPLICATE``: this exact event (identity and payload) was accepted recently.

Anything else is ACCEPTED (pending Kafka's acknowledgement). Licence scope, suspension,
quotas, retraction originals and conflicting re-sends are the meter's: they depend on
changing state the meter holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from google.protobuf.message import DecodeError

from residuals.codecs.signed import decode_envelope, decode_payload, signature_problem
from residuals.codecs.usage import to_raw
from residuals.domain.events import Rejection, parse_event
from residuals.domain.licences import Licence
from residuals.domain.validation import check_licence, check_window
from residuals.domain.vocabulary import Kind, RejectReason
from residuals.ingest.dedupe import RecentEvents, payload_digest
from residuals.ingest.directory import LicenceIdentities, SigningKeys
from residuals.v1 import common_pb2

MAX_EVENT_BYTES = 64 * 1024


class Status(StrEnum):
    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"
    REJECTED = "REJECTED"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gateway decided for one event, with what it needs to produce it."""

    status: Status
    raw: bytes
    reason: RejectReason | None = None
    detail: str = ""
    event_id: str = ""
    licence_id: str = ""
    #: Usage topic key: licence id, else (retractions without one) the vendor id.
    routing_key: str = ""
    digest: bytes = b""
    trace: common_pb2.TraceContext | None = None


def _window_detail(reason: RejectReason, occurred: datetime, received: datetime) -> str:
    stamp = f"{occurred:%Y-%m-%dT%H:%M:%S}Z"
    if reason is RejectReason.TOO_LATE:
        return f"occurred_at {stamp} is more than 35 days before receipt"
    return f"occurred_at {stamp} is more than 5 minutes after receipt"


class Admission:
    """Judges events for an authenticated vendor. Thread-safe (shared across RPCs)."""

    def __init__(
        self,
        keys: SigningKeys,
        licences: LicenceIdentities | None,
        recent: RecentEvents,
        *,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.keys = keys
        self.licences = licences
        self.recent = recent
        self.max_event_bytes = max_event_bytes

    def judge(self, raw: bytes, vendor_id: str, received_at: datetime) -> Verdict:
        """The verdict for one event's bytes. Raises only if a directory lookup fails."""

        def reject(
            reason: RejectReason,
            detail: str,
            event_id: str = "",
            licence_id: str = "",
            trace: common_pb2.TraceContext | None = None,
        ) -> Verdict:
            return Verdict(Status.REJECTED, raw, reason, detail, event_id, licence_id, trace=trace)

        if len(raw) > self.max_event_bytes:
            return reject(
                RejectReason.OVERSIZED,
                f"event is {len(raw):,} bytes, the limit is {self.max_event_bytes:,}",
            )
        try:
            envelope = decode_envelope(raw)
        except DecodeError as error:
            return reject(RejectReason.MALFORMED, f"not a SignedUsageEvent: {error}")
        trace = envelope.trace if envelope.HasField("trace") else None

        key = self.keys.signing_key(envelope.key_id) if envelope.key_id else None
        problem = signature_problem(envelope, key, vendor_id=vendor_id, at=received_at)
        if problem is not None:
            return reject(RejectReason.BAD_SIGNATURE, problem, trace=trace)

        try:
            message = decode_payload(envelope.payload)
            raw_event = to_raw(message)
        except DecodeError as error:
            return reject(
                RejectReason.MALFORMED, f"payload is not a UsageEvent: {error}", trace=trace
            )
        except (ValueError, OverflowError, OSError) as error:
            return reject(
                RejectReason.MALFORMED,
                f"occurred_at is not a valid time: {error}",
                message.event_id,
                message.licence_id,
                trace,
            )
        parsed = parse_event(raw_event)
        if isinstance(parsed, Rejection):
            return reject(parsed.reason, parsed.detail, message.event_id, message.licence_id, trace)
        event = parsed
        # A retraction's licence (the original's, for routing) is in the payload even though
        # the domain event does not keep it.
        licence_id = event.licence_id or message.licence_id

        window = check_window(event.occurred_at, received_at)
        if window is not None:
            detail = _window_detail(window, event.occurred_at, received_at)
            return reject(window, detail, event.event_id, licence_id, trace)

        licences: dict[str, Licence] = {}
        checks_licence = event.kind is not Kind.RETRACTION and self.licences is not None
        if checks_licence and self.licences is not None:
            licence = self.licences.licence(licence_id)
            if licence is not None:
                licences[licence_id] = licence
            else:  # UNKNOWN_LICENCE comes before any vendor check (§2 order)
                found = check_licence(event, licences)
                if found is not None:
                    return reject(found.reason, found.detail, event.event_id, licence_id, trace)
        if event.vendor_id != vendor_id:
            return reject(
                RejectReason.VENDOR_MISMATCH,
                f"payload names vendor {event.vendor_id!r}, the API key is {vendor_id!r}'s",
                event.event_id,
                licence_id,
                trace,
            )
        if checks_licence:
            found = check_licence(event, licences)
            if found is not None:
                return reject(found.reason, found.detail, event.event_id, licence_id, trace)

        digest = payload_digest(envelope.payload)
        status = (
            Status.DUPLICATE
            if self.recent.is_duplicate(vendor_id, event.event_id, digest)
            else Status.ACCEPTED
        )
        return Verdict(
            status,
            raw,
            event_id=event.event_id,
            licence_id=licence_id,
            routing_key=licence_id or vendor_id,
            digest=digest,
            trace=trace,
        )
