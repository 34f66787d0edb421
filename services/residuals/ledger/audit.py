"""Re-verify stored usage from the database alone: the ledger's signatures as evidence.

For every event it stores (``usage_events``, ``usage_repeats``) the ledger keeps what
the vendor signed: ``payload`` (the exact signed bytes), ``signature``, ``key_id`` and,
when the vendor signed a batch of events under one signature over their Merkle root,
``signature_proof`` (the serialized ``residuals.v1.BatchProof``; NULL for a per-event
signature). :func:`stored_envelope` rebuilds the ``SignedUsageEvent`` from those
columns, and the one verification every reader uses
(:func:`~residuals.codecs.signed.signature_problem`) decides it again, against the key
registered with the licensing service, for the row's vendor, at its receipt (a key
revoked later does not void what it signed before).

Rows stored before migration 0007 have no proof: a batch-signed one among them fails
the check (the signature is over a root, not the payload), which is what it is: evidence
the ledger did not keep.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from residuals.codecs.signed import SigningKeyRecord, evidence_problem, signed_envelope
from residuals.domain.period import Period
from residuals.licensing import directory
from residuals.v1 import usage_pb2

#: The columns that hold a stored row's signature evidence (both tables).
SIGNATURE_COLUMNS = ("payload", "signature", "key_id", "signature_proof")

#: What :func:`row_problem` reads from a row, besides :data:`SIGNATURE_COLUMNS`.
AUDIT_COLUMNS = (
    "vendor_id",
    "event_id",
    "received_at",
    "source_topic",
    "source_partition",
    "source_offset",
    *SIGNATURE_COLUMNS,
)

_PERIOD_ROWS = f"""
SELECT 'usage_events' AS stored_in, {", ".join(AUDIT_COLUMNS)}
  FROM usage_events WHERE period = %(p)s
UNION ALL
SELECT 'usage_repeats', {", ".join(AUDIT_COLUMNS)}
  FROM usage_repeats WHERE period = %(p)s
ORDER BY source_topic, source_partition, source_offset
"""

_PERIOD_KEY_IDS = """
SELECT key_id FROM usage_events WHERE period = %(p)s AND key_id IS NOT NULL
UNION SELECT key_id FROM usage_repeats WHERE period = %(p)s AND key_id IS NOT NULL
"""


def stored_envelope(row: Mapping[str, Any]) -> usage_pb2.SignedUsageEvent:
    """The ``SignedUsageEvent`` a stored row was accepted with, from its columns
    (:data:`SIGNATURE_COLUMNS`; e.g. a ``psycopg.rows.dict_row``)."""
    return signed_envelope(
        row["payload"], row["signature"], row["key_id"], row.get("signature_proof")
    )


def row_problem(row: Mapping[str, Any], key: SigningKeyRecord | None) -> str | None:
    """Why the stored row's signature does not verify; None when it does.

    ``key`` is the registered key of ``row["key_id"]`` (None: unknown). The key must
    belong to the row's vendor and not be revoked at ``row["received_at"]``.
    """
    return evidence_problem(
        row["payload"],
        row["signature"],
        row["key_id"],
        row.get("signature_proof"),
        key,
        vendor_id=row["vendor_id"],
        at=row["received_at"],
    )


@dataclass(frozen=True, slots=True)
class Finding:
    """A stored row whose signature does not verify."""

    stored_in: str  # usage_events | usage_repeats
    vendor_id: str
    event_id: str
    source: tuple[str, int, int]
    problem: str


def signing_keys(conn: Connection[Any], period: Period | str) -> dict[str, SigningKeyRecord]:
    """The registered keys that signed the period's stored rows, by key id."""
    used = [str(key_id) for (key_id,) in conn.execute(_PERIOD_KEY_IDS, {"p": str(period)})]
    return registered_keys(conn, used)


def registered_keys(conn: Connection[Any], key_ids: Sequence[str]) -> dict[str, SigningKeyRecord]:
    """The registered keys among ``key_ids``, by key id, as verifiers take them (the keys
    are the licensing service's: read through its directory; unknown ids left out)."""
    return {
        row.key_id: SigningKeyRecord(
            str(row.key_id), str(row.vendor_id), bytes(row.public_key), row.revoked_at
        )
        for row in directory.signing_keys(conn, key_ids)
    }


def unverified_rows(conn: Connection[Any], period: Period | str) -> Iterator[Finding]:
    """Every stored use of ``period`` (accepted identities and re-sends) whose signature
    does not verify from the database alone, in source order. Streams the rows."""
    keys = signing_keys(conn, period)
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.stream(_PERIOD_ROWS, {"p": str(period)}):
            problem = row_problem(row, keys.get(row["key_id"]))
            if problem is not None:
                yield Finding(
                    stored_in=row["stored_in"],
                    vendor_id=row["vendor_id"],
                    event_id=row["event_id"],
                    source=(row["source_topic"], row["source_partition"], row["source_offset"]),
                    problem=problem,
                )
