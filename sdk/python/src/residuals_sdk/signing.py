"""Ed25519 signing of usage events, one by one or in batches.

A vendor registers the public half of a key with Residuals (it gets a ``key_id``) and keeps
the private half. Every event is serialized ONCE, deterministically, and the signature
covers exactly those bytes; ``SignedUsageEvent.payload`` carries the same bytes, so a
receiver verifies before it parses and never needs to re-serialize (re-serialization is
not guaranteed to reproduce bytes across protobuf versions).

:func:`sign_event` signs one payload. :func:`sign_batch` signs the Merkle root of many
(:mod:`residuals_sdk.merkle`) and puts each payload's inclusion proof in its envelope:
one signature per batch instead of one per event, for the signer and for Residuals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from residuals_sdk import merkle
from residuals_sdk._proto import common_pb2, usage_pb2


@dataclass(frozen=True)
class SigningKey:
    """A vendor's Ed25519 private key and the id Residuals registered it under."""

    key_id: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        if not self.key_id:
            raise ValueError("key_id is required (the id Residuals gave the registered key)")

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        """A fresh key (register :meth:`public_key_bytes` with Residuals before use)."""
        return cls(key_id, Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes | str, password: bytes | None = None) -> SigningKey:
        """A key from PKCS#8 PEM text (``openssl genpkey -algorithm ed25519``)."""
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(data, password=password)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"key {key_id!r} is not an Ed25519 private key")
        return cls(key_id, key)

    @classmethod
    def from_pem_file(
        cls, key_id: str, path: str | Path, password: bytes | None = None
    ) -> SigningKey:
        return cls.from_pem(key_id, Path(path).read_bytes(), password)

    @classmethod
    def from_private_bytes(cls, key_id: str, raw: bytes) -> SigningKey:
        """A key from its raw 32-byte seed."""
        return cls(key_id, Ed25519PrivateKey.from_private_bytes(raw))

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (store it like a password)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key, the form Residuals registers."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, payload: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``payload``."""
        return self.private_key.sign(payload)


def payload_bytes(event: usage_pb2.UsageEvent) -> bytes:
    """The bytes a signature covers: one deterministic serialization, never redone."""
    return event.SerializeToString(deterministic=True)


def sign_event(
    event: usage_pb2.UsageEvent,
    key: SigningKey,
    trace: common_pb2.TraceContext | None = None,
) -> usage_pb2.SignedUsageEvent:
    """The envelope for ``event``: payload bytes, their signature and the key id.

    The trace context travels in the envelope but outside the signed payload: it is
    routing metadata, and a receiver may legitimately start a new trace.
    """
    payload = payload_bytes(event)
    signed = usage_pb2.SignedUsageEvent(
        payload=payload, signature=key.sign(payload), key_id=key.key_id
    )
    if trace is not None and trace.traceparent:
        signed.trace.CopyFrom(trace)
    return signed


def sign_batch(
    events: Sequence[usage_pb2.UsageEvent],
    key: SigningKey,
    traces: Sequence[common_pb2.TraceContext | None] | None = None,
) -> list[usage_pb2.SignedUsageEvent]:
    """Envelopes for ``events`` under ONE signature of their Merkle root, in order.

    Each envelope carries its own payload, the shared signature, the key id and a
    ``BatchProof`` (leaf index, leaf count, audit path), so Residuals checks every event
    on its own, whatever partition or request it travels in. The signature covers
    ``b"residuals.usage-batch.v1\\n" + leaf_count.to_bytes(8, "big") + root``. One event
    alone gets the plain :func:`sign_event` envelope. ``traces``, when given, has one
    context (or None) per event.
    """
    if traces is not None and len(traces) != len(events):
        raise ValueError(f"{len(traces)} trace contexts for {len(events)} events")
    if len(events) <= 1:
        return [sign_event(e, key, traces[0] if traces else None) for e in events]
    payloads = [payload_bytes(e) for e in events]
    root, paths = merkle.tree(payloads)
    signature = key.sign(merkle.batch_message(len(payloads), root))
    envelopes = []
    for index, (payload, path) in enumerate(zip(payloads, paths, strict=True)):
        signed = usage_pb2.SignedUsageEvent(
            payload=payload,
            signature=signature,
            key_id=key.key_id,
            batch=usage_pb2.BatchProof(leaf_index=index, leaf_count=len(payloads), audit_path=path),
        )
        trace = traces[index] if traces is not None else None
        if trace is not None and trace.traceparent:
            signed.trace.CopyFrom(trace)
        envelopes.append(signed)
    return envelopes


def verify_signature(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``payload``.

    For per-event envelopes (no ``batch``); a batch envelope's signature covers its batch's
    root, which Residuals recomputes from the proof.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True
