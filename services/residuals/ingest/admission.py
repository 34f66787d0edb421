"""The gateway's verdict on one event, from raw bytes to ACCEPTED / DUPLICATE / REJECTED.

Every check up to the licence is :func:`residuals.admission.admit`, the one judgement the
meter applies to the same bytes (with the API key's vendor as the authenticated vendor and
the gateway's receive time as the receipt). What the gateway adds is a verdict the meter
reaches later from its state: ``DUPLICATE`` when this exact event (identity and payload)
was accepted here recently. Licence scope, suspension, quotas, retraction originals and
conflicting re-sends are the meter's: they depend on changing state the meter holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from residuals.admission import MAX_EVENT_BYTES, Refused, admit
from residuals.domain.vocabulary import RejectReason
from residuals.ingest.dedupe import RecentEvents, payload_digest
from residuals.ingest.directory import LicenceIdentities, SigningKeys
from residuals.v1 import common_pb2

__all__ = ["MAX_EVENT_BYTES", "Admission", "Status", "Verdict"]


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
        licences = self.licences
        verdict = admit(
            raw,
            keys=self.keys.signing_key,
            licences=licences.licence if licences is not None else None,
            received_at=received_at,
            vendor_id=vendor_id,
            max_event_bytes=self.max_event_bytes,
        )
        if isinstance(verdict, Refused):
            return Verdict(
                Status.REJECTED,
                raw,
                verdict.reason,
                verdict.detail,
                verdict.event_id,
                verdict.licence_id,
                trace=verdict.trace,
            )
        digest = payload_digest(verdict.envelope.payload)
        status = (
            Status.DUPLICATE
            if self.recent.is_duplicate(vendor_id, verdict.event.event_id, digest)
            else Status.ACCEPTED
        )
        return Verdict(
            status,
            raw,
            event_id=verdict.event.event_id,
            licence_id=verdict.licence_id,
            routing_key=verdict.licence_id or vendor_id,
            digest=digest,
            trace=verdict.trace,
        )
