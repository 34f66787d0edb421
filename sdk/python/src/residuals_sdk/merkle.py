"""Merkle trees for batch signatures: RFC 9162 (Certificate Transparency 2.0) §2.1.

An Ed25519 signature costs tens of microseconds to make and more to verify, once per
event. :func:`~residuals_sdk.signing.sign_batch` signs one tree head for many events
instead, and gives each event's envelope the proof that its payload is a leaf of that
tree (``BatchProof``: leaf index, leaf count, audit path). Residuals recomputes the root
from the payload and the path and verifies the root's signature once per batch.

Hashes (§2.1.1): a leaf is ``SHA-256(0x00 || payload)``, an inner node
``SHA-256(0x01 || left || right)``; ``n > 1`` leaves split at ``k``, the largest power of
two below ``n``. The signature covers :func:`batch_message`: a domain prefix, the leaf
count and the root. Residuals' server code has the same construction and its verifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

#: Prefix of the message a batch signature covers (then the leaf count and the root).
BATCH_DOMAIN = b"residuals.usage-batch.v1\n"

_sha256 = hashlib.sha256


def leaf_hash(payload: bytes) -> bytes:
    return _sha256(b"\x00" + payload).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def batch_message(leaf_count: int, root: bytes) -> bytes:
    """The bytes a batch signature covers: domain, leaf_count (8 bytes big-endian), root."""
    return BATCH_DOMAIN + leaf_count.to_bytes(8, "big") + root


def tree(payloads: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of ``payloads`` and every leaf's audit path (§2.1.3.1), in O(n log n).

    Each path lists sibling hashes from the leaf up to the root.
    """
    if not payloads:
        raise ValueError("a batch needs at least one payload")
    hashes = [leaf_hash(p) for p in payloads]
    paths: list[list[bytes]] = [[] for _ in hashes]

    def build(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return hashes[lo]
        mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))  # largest power of two < n
        left, right = build(lo, mid), build(mid, hi)
        for i in range(lo, mid):  # deeper siblings were appended first: leaf-to-root order
            paths[i].append(right)
        for i in range(mid, hi):
            paths[i].append(left)
        return node_hash(left, right)

    return build(0, len(hashes)), paths
