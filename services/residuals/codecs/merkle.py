"""Merkle trees of signed usage batches: RFC 9162 (Certificate Transparency 2.0) §2.1.

One Ed25519 signature per event dominated the SDK's and the meter's CPU, so a vendor may
sign one tree head for a batch of events instead: each event's envelope then carries the
signature plus a :class:`~residuals.v1.usage_pb2.BatchProof` (its leaf index, the batch
size and its audit path). A receiver recomputes the root from the payload and the path
(a few SHA-256) and verifies the root's signature, which it caches, so the expensive
check runs once per batch and process rather than once per event.

Hashes (§2.1.1): a leaf is ``SHA-256(0x00 || payload)``, an inner node
``SHA-256(0x01 || left || right)``; ``n > 1`` leaves split at ``k``, the largest power of
two below ``n``. The prefixes keep a leaf from ever being taken for a node. The signed
message (:func:`batch_message`) is domain-separated and binds the batch size, so a proof
cannot claim another tree shape and a batch signature is never a valid per-event one.

The vendor SDK carries its own copy of the builder (it is a separate distribution that
never imports ``residuals``); tests check that both produce the same proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
#: Prefix of the message an Ed25519 batch signature covers (then size and root).
BATCH_DOMAIN = b"residuals.usage-batch.v1\n"

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """An audit path that cannot prove anything; the message says what is wrong."""


def leaf_hash(payload: bytes) -> bytes:
    return _sha256(b"\x00" + payload).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def batch_message(leaf_count: int, root: bytes) -> bytes:
    """The bytes a batch signature covers: domain, leaf_count (8 bytes big-endian), root."""
    return BATCH_DOMAIN + leaf_count.to_bytes(8, "big") + root


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n`` >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def path_length(leaf_index: int, leaf_count: int) -> int:
    """How many hashes the audit path of ``leaf_index`` in a tree of ``leaf_count`` has."""
    length = 0
    while leaf_count > 1:
        k = _split(leaf_count)
        if leaf_index < k:
            leaf_count = k
        else:
            leaf_index, leaf_count = leaf_index - k, leaf_count - k
        length += 1
    return length


def tree(payloads: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of ``payloads`` and every leaf's audit path (§2.1.3.1), in O(n log n)."""
    if not payloads:
        raise ValueError("a batch needs at least one payload")
    hashes = [leaf_hash(p) for p in payloads]
    paths: list[list[bytes]] = [[] for _ in hashes]

    def build(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return hashes[lo]
        mid = lo + _split(hi - lo)
        left, right = build(lo, mid), build(mid, hi)
        for i in range(lo, mid):  # deeper siblings were appended first: leaf-to-root order
            paths[i].append(right)
        for i in range(mid, hi):
            paths[i].append(left)
        return node_hash(left, right)

    return build(0, len(hashes)), paths


def root_from_path(
    payload: bytes, leaf_index: int, leaf_count: int, audit_path: Sequence[bytes]
) -> bytes:
    """The root that ``audit_path`` proves ``payload`` is leaf ``leaf_index`` of.

    RFC 9162 §2.1.3.2, which fails unless the path has exactly the length a tree of
    ``leaf_count`` leaves gives ``leaf_index``. Raises :class:`ProofError`.
    """
    if leaf_count == 0:
        raise ProofError("batch leaf_count is 0")
    if leaf_index >= leaf_count:
        raise ProofError(f"batch leaf_index {leaf_index} is not below leaf_count {leaf_count}")
    path = list(audit_path)
    if path and set(map(len, path)) != {HASH_BYTES}:  # C loops on the hot path
        for position, element in enumerate(path):
            if len(element) != HASH_BYTES:
                raise ProofError(
                    f"batch audit_path[{position}] is {len(element)} bytes, SHA-256 needs"
                    f" {HASH_BYTES}"
                )
    state = climb(leaf_hash(payload), leaf_index, leaf_count - 1, path)
    if state is None or state[1] != 0:
        raise _wrong_length(leaf_index, leaf_count, len(path))
    return state[2]


def climb(node: bytes, fn: int, sn: int, path: Sequence[bytes]) -> tuple[int, int, bytes] | None:
    """RFC 9162 §2.1.3.2's loop from ``node`` with its state ``(fn, sn)``: the state and the
    node after hashing every element of ``path`` in, or None when the path is longer than
    the tree is high (``sn`` reached 0 before its end).

    The result depends on nothing else, which is what lets a verifier remember where the
    upper part of a path leads (:class:`~residuals.codecs.signed.VerifiedSignatures`).
    Start from ``(leaf_hash(payload), leaf_index, leaf_count - 1)``; a proof is complete
    when the returned ``sn`` is 0.
    """
    # The loop of node_hash inlined: this runs for every event of a batch.
    sha256 = _sha256
    r = node
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return fn, sn, r


def _wrong_length(leaf_index: int, leaf_count: int, given: int) -> ProofError:
    return ProofError(
        f"batch audit_path has {given} hashes, leaf {leaf_index} of {leaf_count} needs"
        f" {path_length(leaf_index, leaf_count)}"
    )
