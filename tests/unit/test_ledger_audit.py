"""Signature evidence the ledger keeps: the batch proof travels from the rated record to
the stored row's columns, rebuilds the vendor's envelope, and ``dlq show`` names it.

The SQL side (COPY into usage_events / usage_repeats, re-verification of stored rows) is
tested against PostgreSQL in tests/integration/test_ledger_store.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.cli.dlq import describe_original
from residuals.codecs.signed import SigningKeyRecord
from residuals.codecs.signing import public_key_bytes, sign_batch, sign_event
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import from_domain
from residuals.ledger.audit import row_problem, signed_envelope, stored_envelope
from residuals.ledger.records import decode_rated
from residuals.v1 import usage_pb2
from tests.support.builders import ev, parsed

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RECORD = SigningKeyRecord("k1", "VEN-1", public_key_bytes(KEY))
RECEIVED = datetime(2026, 10, 7, 12, 0, tzinfo=UTC)


def _messages(n: int) -> list[usage_pb2.UsageEvent]:
    return [from_domain(parsed(ev(event_id=f"e{i}", quantity=i + 1))) for i in range(n)]


def _rated(signed: usage_pb2.SignedUsageEvent) -> bytes:
    rated = usage_pb2.RatedUsage(
        outcome=usage_pb2.RatedUsage.Outcome.OUTCOME_ACCEPTED,
        authenticated_vendor_id="VEN-1",
        currency_code="USD",
    )
    rated.event.CopyFrom(usage_pb2.UsageEvent.FromString(signed.payload))
    rated.signed.CopyFrom(signed)
    set_timestamp(rated.received_at, RECEIVED)
    return rated.SerializeToString()


def _row(signed: usage_pb2.SignedUsageEvent, proof: bytes | None) -> dict[str, Any]:
    return {
        "vendor_id": "VEN-1",
        "received_at": RECEIVED,
        "payload": signed.payload,
        "signature": signed.signature,
        "key_id": signed.key_id,
        "signature_proof": proof,
    }


def test_the_rated_record_carries_the_batch_proof_bytes_or_none() -> None:
    batch = sign_batch(_messages(3), "k1", KEY)
    rated = decode_rated(_rated(batch[1]), "usage")
    assert rated.signature_proof == batch[1].batch.SerializeToString()
    assert usage_pb2.BatchProof.FromString(rated.signature_proof).leaf_index == 1
    single = decode_rated(_rated(sign_event(_messages(1)[0], "k1", KEY)), "usage")
    assert single.signature_proof is None


def test_stored_columns_rebuild_the_envelope_the_vendor_signed() -> None:
    batch = sign_batch(_messages(5), "k1", KEY)
    for envelope in batch:
        rated = decode_rated(_rated(envelope), "usage")
        row = _row(envelope, rated.signature_proof)
        assert stored_envelope(row) == envelope
        assert row_problem(row, RECORD) is None
    single = sign_event(_messages(1)[0], "k1", KEY)
    assert stored_envelope(_row(single, None)) == single
    assert not stored_envelope(_row(single, None)).HasField("batch")
    assert row_problem(_row(single, None), RECORD) is None


def test_an_empty_proof_is_still_a_proof() -> None:
    """Presence is kept: zero-valued proof fields serialize to no bytes, not to NULL."""
    envelope = signed_envelope(b"payload", bytes(64), "k1", b"")
    assert envelope.HasField("batch") and envelope.batch.leaf_count == 0


def test_tampered_or_incomplete_evidence_fails() -> None:
    batch = sign_batch(_messages(4), "k1", KEY)
    good = _row(batch[2], batch[2].batch.SerializeToString())
    tampered_event = usage_pb2.UsageEvent.FromString(batch[2].payload)
    tampered_event.quantity = 1000
    tampered = {**good, "payload": tampered_event.SerializeToString(deterministic=True)}
    assert row_problem(tampered, RECORD) == (
        "batch signature does not match the root proven for leaf 2 of 4 for key 'k1'"
    )
    assert row_problem({**good, "signature_proof": None}, RECORD) == (
        "signature does not match the payload for key 'k1'"
    )
    problem = row_problem({**good, "signature_proof": b"\xff\xff"}, RECORD)
    assert problem is not None and problem.startswith("signature_proof is not a BatchProof")
    assert row_problem({**good, "vendor_id": "VEN-2"}, RECORD) == (
        "signing key 'k1' is not registered to vendor 'VEN-2'"
    )
    revoked = SigningKeyRecord("k1", "VEN-1", RECORD.public_key, RECEIVED - timedelta(1))
    assert row_problem(good, revoked) is not None
    revoked_later = SigningKeyRecord("k1", "VEN-1", RECORD.public_key, RECEIVED + timedelta(1))
    assert row_problem(good, revoked_later) is None  # judged at receipt, as the meter did


def test_dlq_show_describes_the_batch_proof() -> None:
    batch = sign_batch(_messages(5), "k1", KEY)
    shown = describe_original(batch[3].SerializeToString())
    assert shown["batch"] == {"leaf_index": 3, "leaf_count": 5, "audit_path_length": 3}
    assert shown["signature"] == batch[3].signature.hex()
    single = describe_original(sign_event(_messages(1)[0], "k1", KEY).SerializeToString())
    assert "batch" not in single and single["key_id"] == "k1"
