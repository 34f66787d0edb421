"""Ed25519 envelopes on the signer's side: ``SignedUsageEvent`` as the SDK makes them.

A vendor signs the deterministic bytes of one ``UsageEvent`` (:func:`payload_bytes`), or
the Merkle root of a batch of them, with the key it registered
(``residuals.v1.VendorSigningKey``, on the compacted ``residuals.signing-keys.v1``
topic). Signing lives here so tests, benchmarks and tools produce envelopes exactly as the
SDK does (the SDK is a separate distribution and is not imported by services).
Verification is :mod:`residuals.codecs.signed`'s, one path for every reader.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs import merkle
from residuals.codecs.signed import SigningKeyRecord
from residuals.codecs.usage import payload_bytes
from residuals.v1 import common_pb2, licence_pb2, usage_pb2

#: A registered key as the meter's key registry hands it out (one type for every reader).
VerifyingKey = SigningKeyRecord
#: The SDK's default ``signature_batch_size``: events per signature in ``publish_many``.
SIGNATURE_BATCH_SIZE = 256


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


def sign_batch(
    events: Sequence[usage_pb2.UsageEvent],
    key_id: str,
    private_key: Ed25519PrivateKey,
    traces: Sequence[common_pb2.TraceContext | None] | None = None,
) -> list[usage_pb2.SignedUsageEvent]:
    """Envelopes for ``events`` under ONE signature of their Merkle root, in order.

    The same envelopes as the SDK's ``sign_batch``: each carries its payload, the
    signature, the key id and its ``BatchProof``. A single event gets a plain per-event
    envelope (a proof would add bytes and save nothing). ``traces``, when given, has one
    context (or None) per event.
    """
    if traces is not None and len(traces) != len(events):
        raise ValueError(f"{len(traces)} trace contexts for {len(events)} events")
    if len(events) <= 1:
        return [sign_event(e, key_id, private_key, traces[0] if traces else None) for e in events]
    payloads = [payload_bytes(e) for e in events]
    root, paths = merkle.tree(payloads)
    signature = private_key.sign(merkle.batch_message(len(payloads), root))
    envelopes = []
    for index, (payload, path) in enumerate(zip(payloads, paths, strict=True)):
        signed = usage_pb2.SignedUsageEvent(
            payload=payload,
            signature=signature,
            key_id=key_id,
            batch=usage_pb2.BatchProof(leaf_index=index, leaf_count=len(payloads), audit_path=path),
        )
        trace = traces[index] if traces is not None else None
        if trace is not None and trace.traceparent:
            signed.trace.CopyFrom(trace)
        envelopes.append(signed)
    return envelopes


def sign_in_batches(
    events: Sequence[usage_pb2.UsageEvent],
    key_id: str,
    private_key: Ed25519PrivateKey,
    batch_size: int = SIGNATURE_BATCH_SIZE,
) -> list[usage_pb2.SignedUsageEvent]:
    """The envelopes the SDK's ``publish_many(events)`` makes: :func:`sign_batch` over the
    fewest near-equal chunks of at most ``batch_size`` events, in order."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    envelopes: list[usage_pb2.SignedUsageEvent] = []
    if not events:
        return envelopes
    chunks = -(-len(events) // batch_size)
    size, extra = divmod(len(events), chunks)
    lo = 0
    for i in range(chunks):
        hi = lo + size + (1 if i < extra else 0)
        envelopes.extend(sign_batch(events[lo:hi], key_id, private_key))
        lo = hi
    return envelopes
