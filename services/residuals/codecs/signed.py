"""Signed usage envelopes: decoding and Ed25519 verification, the same for every reader.

A ``SignedUsageEvent`` carries the payload bytes the vendor signed; readers verify the
signature over exactly those bytes BEFORE parsing them, and never re-serialize. The
gateway verifies against the vendor the API key authenticated; the meter (reading the
usage topic directly) against the vendor the key is registered to. Both get the same
answers from here, and every failure is ``BAD_SIGNATURE`` with a detail saying which part
failed (operators need it; vendors get it in the dead letter and the gateway's answer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from residuals.v1 import usage_pb2

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A registered Ed25519 public key (raw 32 bytes) and the vendor it belongs to."""

    key_id: str
    vendor_id: str
    public_key: bytes
    revoked_at: datetime | None = None

    def revoked_by(self, at: datetime) -> bool:
        """Signatures are refused from the revocation time on."""
        return self.revoked_at is not None and at >= self.revoked_at


def signature_problem(
    envelope: usage_pb2.SignedUsageEvent,
    key: SigningKeyRecord | None,
    *,
    vendor_id: str | None,
    at: datetime,
) -> str | None:
    """Why ``envelope`` is not validly signed for ``vendor_id`` at ``at``; None when it is.

    ``vendor_id`` None skips the ownership check (the caller derives the vendor from the
    key instead).
    """
    if not envelope.key_id:
        return "envelope has no key_id"
    if len(envelope.signature) != SIGNATURE_BYTES:
        return f"signature is {len(envelope.signature)} bytes, Ed25519 needs {SIGNATURE_BYTES}"
    if key is None:
        return f"unknown signing key {envelope.key_id!r}"
    if vendor_id is not None and key.vendor_id != vendor_id:
        return f"signing key {key.key_id!r} is not registered to vendor {vendor_id!r}"
    if key.revoked_by(at):
        return f"signing key {key.key_id!r} was revoked at {key.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
    try:
        _public_key(key.public_key).verify(envelope.signature, envelope.payload)
    except (InvalidSignature, ValueError):
        return f"signature does not match the payload for key {key.key_id!r}"
    return None


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """Parsed keys are reused: a vendor signs millions of events with one key."""
    return Ed25519PublicKey.from_public_bytes(raw)


def decode_envelope(raw: bytes) -> usage_pb2.SignedUsageEvent:
    """Parse envelope bytes; raises :class:`DecodeError` with a readable message."""
    envelope = usage_pb2.SignedUsageEvent.FromString(raw)
    _reject_mistyped(envelope, "envelope")
    return envelope


def decode_payload(payload: bytes) -> usage_pb2.UsageEvent:
    """Parse signed payload bytes into a ``UsageEvent``; raises :class:`DecodeError`.

    Fields sent with the wrong wire type (e.g. ``quantity`` as a string) are refused,
    instead of being silently dropped as unknown fields; field numbers this version does
    not know are allowed (a newer SDK may send them).
    """
    event = usage_pb2.UsageEvent.FromString(payload)
    _reject_mistyped(event, "payload")
    if event.HasField("occurred_at"):
        _reject_mistyped(event.occurred_at, "payload.occurred_at")
    return event


def _reject_mistyped(message: Message, where: str) -> None:
    fields = message.DESCRIPTOR.fields_by_number
    found = unknown_fields.UnknownFieldSet(message)
    for index in range(len(found)):
        unknown = found[index]
        field = fields.get(unknown.field_number)
        if field is not None:
            raise DecodeError(
                f"{where}: field {field.name} ({unknown.field_number}) has the wrong wire type"
                f" {unknown.wire_type}"
            )
