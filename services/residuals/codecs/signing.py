"""Ed25519 envelopes: ``SignedUsageEvent`` signing and verification on the server side.

A vendor signs the deterministic bytes of one ``UsageEvent`` (:func:`payload_bytes`) with the
key it registered (``residuals.v1.VendorSigningKey``, on the compacted
``residuals.signing-keys.v1`` topic). Receivers verify those exact bytes before parsing
them and never re-serialize. Signing lives here too so tests, benchmarks and tools produce
envelopes exactly as the SDK does (the SDK is a separate distribution and is not imported
by services).

Verification is the dominant per-event CPU cost of the meter (one Ed25519 verify is tens
of microseconds), so public keys are parsed once per key id, not per event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from residuals.codecs.timestamps import optional_datetime
from residuals.codecs.usage import payload_bytes
from residuals.v1 import common_pb2, licence_pb2, usage_pb2


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A registered vendor key, parsed once."""

    key_id: str
    vendor_id: str
    public_key: Ed25519PublicKey
    revoked_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: licence_pb2.VendorSigningKey) -> VerifyingKey:
        """Raises ValueError when the key is not a 32-byte Ed25519 public key."""
        return cls(
            key_id=message.key_id,
            vendor_id=message.vendor_id,
            public_key=Ed25519PublicKey.from_public_bytes(bytes(message.public_key)),
            revoked_at=optional_datetime(message, "revoked_at"),
        )

    def usable_at(self, t: datetime) -> bool:
        """Signatures are refused from the key's revocation on (``revoked_at`` <= t)."""
        return self.revoked_at is None or t < self.revoked_at

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key, the form the registry stores."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def signing_key_record(
    key_id: str, vendor_id: str, private_key: Ed25519PrivateKey
) -> licence_pb2.VendorSigningKey:
    """The registry record of ``private_key``'s public half (tests and tools)."""
    return licence_pb2.VendorSigningKey(
        key_id=key_id, vendor_id=vendor_id, public_key=public_key_bytes(private_key)
    )


def sign_event(
    event: usage_pb2.UsageEvent,
    key_id: str,
    private_key: Ed25519PrivateKey,
    trace: common_pb2.TraceContext | None = None,
) -> usage_pb2.SignedUsageEvent:
    """The envelope a vendor publishes: payload bytes, their signature and the key id."""
    payload = payload_bytes(event)
    signed = usage_pb2.SignedUsageEvent(
        payload=payload, signature=private_key.sign(payload), key_id=key_id
    )
    if trace is not None and trace.traceparent:
        signed.trace.CopyFrom(trace)
    return signed
