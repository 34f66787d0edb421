"""Signed usage envelopes: decoding and Ed25519 verification, the same for every reader.

A ``SignedUsageEvent`` carries the payload bytes the vendor signed; readers verify the
signature over exactly those bytes BEFORE parsing them, and never re-serialize. The
signature covers the payload itself or, when the envelope carries a ``batch`` proof, the
Merkle root of the batch the payload belongs to (:mod:`residuals.codecs.merkle`). The
gateway verifies against the vendor the API key authenticated; the meter (reading the
usage topic directly) against the vendor the key is registered to, and the
``residuals-vendor`` header's claim when there is one. Both call :func:`signature_problem`,
so they give the same answers, and every failure is ``BAD_SIGNATURE`` with a detail saying
which part failed (operators need it; vendors get it in the dead letter and the gateway's
answer).

Ed25519 verification is the dominant per-event cost of both readers (~100 µs), so parsed
public keys are cached per key, and successful verifications of batch roots are cached per
process (:class:`VerifiedSignatures`): all events of a batch but the first cost a few
SHA-256. Most events cost fewer still: the upper part of a batch's audit paths is shared by
its neighbouring leaves, so where a proven path's upper part leads is remembered too, and
an event whose path joins it a few levels up is proven once it gets there (the same verdict
the whole path gives, see :meth:`VerifiedSignatures.path_key`). The key's vendor and
revocation are checked for every event, before the caches.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from residuals.codecs import merkle
from residuals.codecs.timestamps import optional_datetime
from residuals.codecs.wire import reject_mistyped
from residuals.v1 import licence_pb2, usage_pb2

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
#: Batch roots whose signature verified, remembered per process. A batch's events are
#: spread over partitions (keyed by licence) and so over time; 16,384 roots of 256-event
#: batches span ~4 million events, in ~3 MB. A miss costs one Ed25519 verification.
VERIFIED_CACHE_SIZE = 16_384
#: Levels an event's audit path is hashed up before the remembered upper parts are looked
#: up: 3 events in 4 of a full batch then find theirs (a neighbour's path proved it). Higher
#: levels hash more per event for fewer misses; 1 to 3 measured alike.
PROVEN_LEVEL = 2
#: Upper parts of proven paths remembered per process: one per 2^PROVEN_LEVEL leaves of a
#: batch (64 for 256 events), about 600 bytes each; 16,384 (~10 MB at most) cover 256
#: batches in flight. A miss costs the whole path and a look-up in the cache of roots.
PROVEN_CACHE_SIZE = 16_384


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A registered Ed25519 public key (raw 32 bytes) and the vendor it belongs to."""

    key_id: str
    vendor_id: str
    public_key: bytes
    revoked_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: licence_pb2.VendorSigningKey) -> SigningKeyRecord:
        """The key of a registry record; ValueError unless it is a 32-byte Ed25519 key."""
        public_key = bytes(message.public_key)
        _public_key(public_key)  # refuse (and cache) it now, not at the first event
        return cls(
            key_id=message.key_id,
            vendor_id=message.vendor_id,
            public_key=public_key,
            revoked_at=optional_datetime(message, "revoked_at"),
        )

    def revoked_by(self, at: datetime) -> bool:
        """Signatures are refused from the revocation time on."""
        return self.revoked_at is not None and at >= self.revoked_at


#: :meth:`VerifiedSignatures.path_key`: public key, signature, leaf_count, the path's state
#: and node a few levels up, and the rest of the path joined.
PathKey = tuple[bytes, bytes, int, int, int, bytes, bytes]


class VerifiedSignatures:
    """A bounded LRU of (public key, message, signature) triples that verified, and a
    bounded FIFO of audit-path upper parts that led to a verified batch root. Thread-safe.

    Only successes are remembered, the triples under a SHA-256 of the triple (unambiguous:
    key and signature lengths are fixed and prefixed), so a failure is checked again every
    time.
    """

    def __init__(self, size: int = VERIFIED_CACHE_SIZE, paths: int = PROVEN_CACHE_SIZE) -> None:
        self.size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self.paths = paths
        self._proven: OrderedDict[PathKey, None] = OrderedDict()

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is ``public_key``'s signature of ``message``."""
        token = hashlib.sha256(
            len(public_key).to_bytes(2, "big")
            + public_key
            + len(signature).to_bytes(2, "big")
            + signature
            + message
        ).digest()
        with self._lock:
            if token in self._seen:
                self._seen.move_to_end(token)
                return True
        if not _verify(public_key, message, signature):
            return False
        with self._lock:
            self._seen[token] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
        return True

    @staticmethod
    def path_key(
        public_key: bytes,
        signature: bytes,
        payload: bytes,
        leaf_index: int,
        leaf_count: int,
        path: list[bytes],
    ) -> PathKey | None:
        """Where ``payload``'s audit path stands :data:`PROVEN_LEVEL` levels up, with the
        rest of the path, the tree size, key and signature; None when the proof is not
        well formed that far (the whole check then says why) or is too short to share.

        What :func:`~residuals.codecs.merkle.root_from_path` computes after those levels
        depends on the key's middle three parts and the rest of the path only, and the
        signature check on the root, the tree size, key and signature: an event with the
        same key as one whose whole proof verified gets the same verdict from the whole
        check. Its own lower levels are hashed (and checked) here, so nothing of the
        event's own is taken on trust.
        """
        if len(path) <= PROVEN_LEVEL or leaf_index >= leaf_count:
            return None
        if set(map(len, path)) != {merkle.HASH_BYTES}:
            return None
        low = merkle.climb(
            merkle.leaf_hash(payload), leaf_index, leaf_count - 1, path[:PROVEN_LEVEL]
        )
        if low is None:
            return None
        fn, sn, node = low
        # The hashes are 32 bytes each: joined, the rest of the path is unambiguous.
        return (public_key, signature, leaf_count, fn, sn, node, b"".join(path[PROVEN_LEVEL:]))

    def proven(self, key: PathKey) -> bool:
        """Did an event with this :meth:`path_key` verify?"""
        return key in self._proven

    def remember_proven(self, key: PathKey) -> None:
        """Record that the event with this :meth:`path_key` verified, whole path and root."""
        with self._lock:
            self._proven[key] = None
            if len(self._proven) > self.paths:
                self._proven.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._proven.clear()

    def __len__(self) -> int:
        return len(self._seen)


#: The process's cache of verified batch roots (per-event signatures are not cached:
#: each is seen once, and they would only evict the roots).
VERIFIED = VerifiedSignatures()


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
    if not envelope.HasField("batch"):
        if not _verify(key.public_key, envelope.payload, envelope.signature):
            return f"signature does not match the payload for key {key.key_id!r}"
        return None
    proof = envelope.batch
    leaf_index, leaf_count = proof.leaf_index, proof.leaf_count
    path = list(proof.audit_path)
    proven = VERIFIED.path_key(
        key.public_key, envelope.signature, envelope.payload, leaf_index, leaf_count, path
    )
    if proven is not None and VERIFIED.proven(proven):
        return None
    try:
        root = merkle.root_from_path(envelope.payload, leaf_index, leaf_count, path)
    except merkle.ProofError as error:
        return str(error)
    if not VERIFIED.verify(
        key.public_key, merkle.batch_message(leaf_count, root), envelope.signature
    ):
        return (
            f"batch signature does not match the root proven for leaf {leaf_index}"
            f" of {leaf_count} for key {key.key_id!r}"
        )
    if proven is not None:
        VERIFIED.remember_proven(proven)
    return None


def signed_envelope(
    payload: bytes,
    signature: bytes | None,
    key_id: str | None,
    signature_proof: bytes | None,
) -> usage_pb2.SignedUsageEvent:
    """The envelope of stored evidence; raises :class:`DecodeError` for a corrupt proof.

    ``signature_proof`` None is a per-event signature (no ``batch``); any bytes, even
    empty ones (a proof whose fields are all zero), set ``batch``, so the rebuilt
    envelope has the presence the vendor's had. ``signature`` and ``key_id`` are None
    only in rows older than the ledger (0001); they rebuild as empty, which fails.
    """
    envelope = usage_pb2.SignedUsageEvent(
        payload=bytes(payload), signature=bytes(signature or b""), key_id=key_id or ""
    )
    if signature_proof is not None:
        envelope.batch.CopyFrom(usage_pb2.BatchProof.FromString(bytes(signature_proof)))
        envelope.batch.SetInParent()
    return envelope


def evidence_problem(
    payload: bytes,
    signature: bytes | None,
    key_id: str | None,
    signature_proof: bytes | None,
    key: SigningKeyRecord | None,
    *,
    vendor_id: str,
    at: datetime,
) -> str | None:
    """Why stored signature evidence (the ledger's columns, or an evidence bundle's row)
    does not verify for ``vendor_id`` at receipt time ``at``; None when it does. ``key``
    is the registered key of ``key_id`` (None: unknown)."""
    try:
        envelope = signed_envelope(payload, signature, key_id, signature_proof)
    except DecodeError as error:
        return f"signature_proof is not a BatchProof: {error}"
    return signature_problem(envelope, key, vendor_id=vendor_id, at=at)


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        _public_key(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """Parsed keys are reused: a vendor signs millions of events with one key."""
    return Ed25519PublicKey.from_public_bytes(raw)


def decode_envelope(raw: bytes) -> usage_pb2.SignedUsageEvent:
    """Parse envelope bytes; raises :class:`DecodeError` with a readable message."""
    envelope = usage_pb2.SignedUsageEvent.FromString(raw)
    reject_mistyped(envelope, "envelope")
    return envelope


def decode_payload(payload: bytes) -> usage_pb2.UsageEvent:
    """Parse signed payload bytes into a ``UsageEvent``; raises :class:`DecodeError`.

    Fields sent with the wrong wire type (e.g. ``quantity`` as a string) are refused,
    instead of being silently dropped as unknown fields; field numbers this version does
    not know are allowed (a newer SDK may send them).
    """
    event = usage_pb2.UsageEvent.FromString(payload)
    reject_mistyped(event, "payload")
    return event
