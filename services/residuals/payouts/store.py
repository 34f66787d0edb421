"""PostgreSQL storage of statements, the journal and payouts (migration 0005).

Plain SQL over one connection; the caller owns the transaction, so a period close writes
its statement, journal entries, payouts and payout events atomically (or, for a dry run,
not at all). Reads return the stored canonical JSON parsed back, never a recomputation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow

from residuals.domain.adjustments import AdjustmentLine, line_ref
from residuals.domain.journal import JournalEntry, Posting
from residuals.domain.payouts import PayoutState, PlannedPayout

Conn = Connection[TupleRow]


@dataclass(frozen=True)
class LicenceMeta:
    licence_id: str
    talent_id: str
    vendor_id: str
    currency: str


@dataclass(frozen=True)
class StoredStatement:
    statement_id: str
    period: str
    content_hash: str
    canonical_json: str
    adjustments: tuple[AdjustmentLine, ...]
    adjustments_hash: str
    inputs: Mapping[str, Any]
    event_count: int
    closed_at: datetime
    closed_by: str
    licences: Mapping[str, LicenceMeta] = field(default_factory=dict)
    carried_in: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)

    @property
    def document(self) -> dict[str, Any]:
        """The §10 document (parsed from the stored canonical JSON)."""
        doc: dict[str, Any] = json.loads(self.canonical_json)
        return doc


@dataclass(frozen=True)
class PayoutRow:
    payout_id: str
    idempotency_key: str
    statement_id: str
    period: str
    payee_id: str
    currency: str
    amount: Decimal
    state: PayoutState
    attempts: int
    failure_reason: str
    rail: str
    rail_reference: str
    sequence: int
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None


def statement_id_for(period: str) -> str:
    return f"st-{period}"


# --- statements -----------------------------------------------------------------------------


def insert_statement(
    conn: Conn,
    *,
    statement_id: str,
    period: str,
    content_hash: str,
    canonical: str,
    document: Mapping[str, Any],
    adjustments: Sequence[AdjustmentLine],
    adjustments_hash: str,
    inputs: Mapping[str, Any],
    event_count: int,
    closed_by: str,
    licences: Mapping[str, LicenceMeta],
    carried_in: Mapping[tuple[str, str], Decimal],
) -> None:
    """Write the header and every row of a statement (refused by PostgreSQL if it exists)."""
    conn.execute(
        "INSERT INTO statements (statement_id, period, content_hash, canonical_json,"
        " adjustments_hash, inputs, event_count, closed_by)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
        (
            statement_id,
            period,
            content_hash,
            canonical,
            adjustments_hash,
            json.dumps(inputs, sort_keys=True),
            event_count,
            closed_by,
        ),
    )
    with conn.cursor() as cur:
        for lic in document["licences"]:
            meta = licences[lic["licence_id"]]
            ex = lic["excluded"]
            cur.execute(
                "INSERT INTO statement_licences (statement_id, licence_id, talent_id, vendor_id,"
                " currency, earned, minimum_guarantee_topup, gross, platform_fee, net,"
                " advance_recouped, vendor_invoice, excluded_duplicates, excluded_ivt,"
                " excluded_non_viewable, excluded_retracted)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    statement_id,
                    lic["licence_id"],
                    meta.talent_id,
                    meta.vendor_id,
                    lic["currency"],
                    lic["earned"],
                    lic["minimum_guarantee_topup"],
                    lic["gross"],
                    lic["platform_fee"],
                    lic["net"],
                    lic["advance_recouped"],
                    lic["vendor_invoice"],
                    ex["duplicates"],
                    ex["ivt"],
                    ex["non_viewable"],
                    ex["retracted"],
                ),
            )
            cur.executemany(
                "INSERT INTO statement_lines (statement_id, licence_id, line_no, ref, kind,"
                " version, tier, channel, units, rate, revenue, amount)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                [
                    (
                        statement_id,
                        lic["licence_id"],
                        n,
                        line_ref(line),
                        line["kind"],
                        line["version"],
                        line.get("tier"),
                        line.get("channel"),
                        line["units"],
                        line.get("rate"),
                        line.get("revenue"),
                        line["amount"],
                    )
                    for n, line in enumerate(lic["lines"], start=1)
                ],
            )
            cur.executemany(
                "INSERT INTO statement_held (statement_id, licence_id, violation, kind, units,"
                " amount) VALUES (%s,%s,%s,%s,%s,%s)",
                [
                    (
                        statement_id,
                        lic["licence_id"],
                        h["violation"],
                        h["kind"],
                        h["units"],
                        h["amount"],
                    )
                    for h in lic["held"]
                ],
            )
            cur.executemany(
                "INSERT INTO statement_allocations (statement_id, licence_id, payee_id, amount)"
                " VALUES (%s,%s,%s,%s)",
                [
                    (statement_id, lic["licence_id"], a["payee_id"], a["amount"])
                    for a in lic["allocations"]
                ],
            )
        cur.executemany(
            "INSERT INTO statement_balances (statement_id, payee_id, currency, carried_in,"
            " earned, payable, carried_forward) VALUES (%s,%s,%s,%s,%s,%s,%s)",
            [
                (
                    statement_id,
                    p["payee_id"],
                    p["currency"],
                    carried_in.get((p["payee_id"], p["currency"]), Decimal(0)),
                    p["earned"],
                    p["payable"],
                    p["carried_forward"],
                )
                for p in document["payees"]
            ],
        )
        cur.executemany(
            "INSERT INTO statement_adjustments (statement_id, line_no, adjusts_period,"
            " licence_id, currency, section, ref, units, amount)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                (
                    statement_id,
                    n,
                    a.adjusts_period,
                    a.licence_id,
                    a.currency,
                    a.section,
                    a.ref,
                    a.units,
                    a.amount,
                )
                for n, a in enumerate(adjustments, start=1)
            ],
        )


def insert_statement_usage(conn: Conn, statement_id: str, tallies: Mapping[str, str]) -> None:
    """Each licence's usage tally (JSON text, :func:`residuals.payouts.tally.usage_to_json`)
    with the statement, after :func:`insert_statement` wrote its licences."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO statement_usage (statement_id, licence_id, tally)"
            " VALUES (%s, %s, %s::jsonb)",
            [(statement_id, licence_id, tally) for licence_id, tally in tallies.items()],
        )


def statement_usage(
    conn: Conn, statement_id: str, licence_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The stored usage tallies of ``licence_ids`` in ``statement_id`` (licence id -> JSON);
    none for a statement closed before they were stored (migration 0017)."""
    rows = conn.execute(
        "SELECT licence_id, tally FROM statement_usage"
        " WHERE statement_id = %s AND licence_id = ANY(%s)",
        (statement_id, list(licence_ids)),
    ).fetchall()
    return {licence_id: tally for licence_id, tally in rows}


_HEADER = (
    "SELECT statement_id, period, content_hash, canonical_json, adjustments_hash, inputs,"
    " event_count, closed_at, closed_by FROM statements"
)


def _load(conn: Conn, row: Sequence[Any]) -> StoredStatement:
    statement_id = row[0]
    licences = {
        r[0]: LicenceMeta(r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT licence_id, talent_id, vendor_id, currency FROM statement_licences"
            " WHERE statement_id = %s",
            (statement_id,),
        )
    }
    carried = {
        (r[0], r[1]): r[2]
        for r in conn.execute(
            "SELECT payee_id, currency, carried_in FROM statement_balances"
            " WHERE statement_id = %s AND carried_in <> 0",
            (statement_id,),
        )
    }
    adjustments = tuple(
        AdjustmentLine(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6])
        for r in conn.execute(
            "SELECT adjusts_period, licence_id, currency, section, ref, units, amount"
            " FROM statement_adjustments WHERE statement_id = %s ORDER BY line_no",
            (statement_id,),
        )
    )
    return StoredStatement(
        statement_id=statement_id,
        period=row[1],
        content_hash=row[2],
        canonical_json=row[3],
        adjustments=adjustments,
        adjustments_hash=row[4],
        inputs=row[5],
        event_count=int(row[6]),
        closed_at=row[7],
        closed_by=row[8],
        licences=licences,
        carried_in=carried,
    )


def get_statement(conn: Conn, period: str) -> StoredStatement | None:
    row = conn.execute(_HEADER + " WHERE period = %s", (period,)).fetchone()
    return None if row is None else _load(conn, row)


def list_statements(
    conn: Conn, from_period: str = "", to_period: str = "", limit: int = 100, before: str = ""
) -> list[tuple[str, str, str, datetime, int]]:
    """(statement_id, period, content_hash, closed_at, licence count), newest first."""
    rows = conn.execute(
        "SELECT s.statement_id, s.period, s.content_hash, s.closed_at,"
        " (SELECT count(*) FROM statement_licences l WHERE l.statement_id = s.statement_id)"
        " FROM statements s"
        " WHERE (%s = '' OR s.period >= %s) AND (%s = '' OR s.period <= %s)"
        " AND (%s = '' OR s.period < %s)"
        " ORDER BY s.period DESC LIMIT %s",
        (from_period, from_period, to_period, to_period, before, before, limit),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]


def closed_periods(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT period FROM statements ORDER BY period")]


def adjustments_targeting(conn: Conn, period: str) -> list[AdjustmentLine]:
    """Every adjustment line (of any later statement) that corrects ``period``."""
    return [
        AdjustmentLine(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6])
        for r in conn.execute(
            "SELECT adjusts_period, licence_id, currency, section, ref, units, amount"
            " FROM statement_adjustments WHERE adjusts_period = %s"
            " ORDER BY statement_id, line_no",
            (period,),
        )
    ]


# --- journal --------------------------------------------------------------------------------


def insert_entries(conn: Conn, entries: Iterable[JournalEntry], statement_id: str | None) -> int:
    n = 0
    with conn.cursor() as cur:
        for entry in entries:
            cur.execute(
                "INSERT INTO journal_entries (entry_id, statement_id, period, kind, currency,"
                " licence_id, memo) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (
                    entry.entry_id,
                    statement_id,
                    entry.period,
                    entry.kind,
                    entry.currency,
                    entry.licence_id,
                    entry.memo,
                ),
            )
            cur.executemany(
                "INSERT INTO journal_postings (entry_id, line_no, account, amount)"
                " VALUES (%s,%s,%s,%s)",
                [
                    (entry.entry_id, i, p.account, p.amount)
                    for i, p in enumerate(entry.postings, start=1)
                ],
            )
            n += 1
    return n


def balances(conn: Conn, prefix: str = "") -> dict[tuple[str, str], Decimal]:
    """Account balances from the ``account_balances`` view (sums of postings)."""
    return {
        (r[0], r[1]): r[2]
        for r in conn.execute(
            "SELECT account, currency, balance FROM account_balances WHERE account LIKE %s",
            (prefix.replace("%", r"\%").replace("_", r"\_") + "%",),
        )
    }


def entries(conn: Conn, *, statement_id: str | None = None) -> list[JournalEntry]:
    """Journal entries (all, or one statement's) with their postings."""
    rows = conn.execute(
        "SELECT e.entry_id, e.period, e.kind, e.currency, e.licence_id, e.memo,"
        " p.account, p.amount FROM journal_entries e"
        " LEFT JOIN journal_postings p USING (entry_id)"
        " WHERE (%s::text IS NULL OR e.statement_id = %s)"
        " ORDER BY e.entry_id, p.line_no",
        (statement_id, statement_id),
    ).fetchall()
    out: dict[str, JournalEntry] = {}
    postings: dict[str, list[Posting]] = {}
    for entry_id, period, kind, currency, licence_id, memo, account, amount in rows:
        if entry_id not in out:
            out[entry_id] = JournalEntry(entry_id, period, kind, currency, (), licence_id, memo)
            postings[entry_id] = []
        if account is not None:
            postings[entry_id].append(Posting(account, amount))
    return [
        JournalEntry(
            e.entry_id,
            e.period,
            e.kind,
            e.currency,
            tuple(postings[e.entry_id]),
            e.licence_id,
            e.memo,
        )
        for e in out.values()
    ]


def entry_exists(conn: Conn, entry_id_suffix: str, licence_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM journal_entries WHERE licence_id = %s AND entry_id LIKE %s LIMIT 1",
        (licence_id, "%" + entry_id_suffix),
    ).fetchone()
    return row is not None


# --- payouts --------------------------------------------------------------------------------

_PAYOUT_COLUMNS = (
    "payout_id, idempotency_key, statement_id, period, payee_id, currency, amount, state,"
    " attempts, failure_reason, rail, rail_reference, sequence, created_at, updated_at, paid_at"
)


def _payout(row: Sequence[Any]) -> PayoutRow:
    return PayoutRow(
        payout_id=row[0],
        idempotency_key=row[1],
        statement_id=row[2],
        period=row[3],
        payee_id=row[4],
        currency=row[5],
        amount=row[6],
        state=PayoutState(row[7]),
        attempts=int(row[8]),
        failure_reason=row[9],
        rail=row[10],
        rail_reference=row[11],
        sequence=int(row[12]),
        created_at=row[13],
        updated_at=row[14],
        paid_at=row[15],
    )


def insert_payout(conn: Conn, planned: PlannedPayout, statement_id: str) -> PayoutRow:
    row = conn.execute(
        "INSERT INTO payouts (payout_id, idempotency_key, statement_id, period, payee_id,"
        " currency, amount, state) VALUES (%s,%s,%s,%s,%s,%s,%s,'PENDING')"
        f" RETURNING {_PAYOUT_COLUMNS}",
        (
            planned.payout_id,
            planned.idempotency_key,
            statement_id,
            planned.period,
            planned.payee_id,
            planned.currency,
            planned.amount,
        ),
    ).fetchone()
    assert row is not None
    return _payout(row)


def get_payout(conn: Conn, payout_id: str, *, lock: bool = False) -> PayoutRow | None:
    suffix = " FOR UPDATE" if lock else ""
    row = conn.execute(
        f"SELECT {_PAYOUT_COLUMNS} FROM payouts WHERE payout_id = %s{suffix}", (payout_id,)
    ).fetchone()
    return None if row is None else _payout(row)


def list_payouts(
    conn: Conn,
    *,
    period: str = "",
    payee_id: str = "",
    states: Sequence[PayoutState] = (),
    after: str = "",
    limit: int = 1000,
) -> list[PayoutRow]:
    """Payouts by (period, payee, currency) order; ``after`` is the last payout_id seen."""
    rows = conn.execute(
        f"SELECT {_PAYOUT_COLUMNS} FROM payouts"
        " WHERE (%s = '' OR period = %s) AND (%s = '' OR payee_id = %s)"
        " AND (cardinality(%s::text[]) = 0 OR state = ANY(%s::text[]))"
        " AND (%s = '' OR (period, payee_id, currency) >"
        "      (SELECT period, payee_id, currency FROM payouts WHERE payout_id = %s))"
        " ORDER BY period, payee_id, currency LIMIT %s",
        (
            period,
            period,
            payee_id,
            payee_id,
            [str(s) for s in states],
            [str(s) for s in states],
            after,
            after,
            limit,
        ),
    ).fetchall()
    return [_payout(r) for r in rows]


def update_payout(
    conn: Conn,
    payout_id: str,
    *,
    state: PayoutState,
    attempts: int,
    failure_reason: str,
    rail: str,
    rail_reference: str,
) -> PayoutRow:
    row = conn.execute(
        "UPDATE payouts SET state = %s, attempts = %s, failure_reason = %s, rail = %s,"
        " rail_reference = %s, updated_at = now(),"
        " paid_at = CASE WHEN %s = 'PAID' THEN now() ELSE NULL END"
        f" WHERE payout_id = %s RETURNING {_PAYOUT_COLUMNS}",
        (str(state), attempts, failure_reason, rail, rail_reference, str(state), payout_id),
    ).fetchone()
    assert row is not None
    return _payout(row)


def record_payout_event(conn: Conn, payout: PayoutRow, payload_for: Any) -> PayoutRow:
    """Append the payout's change to ``payout_events`` and stamp its sequence on the row.

    ``payload_for(payout_with_sequence)`` builds the PayoutEvent bytes once the sequence is
    known. Rows are appended under an advisory lock held to commit, so sequences become
    visible in order (WatchPayouts never skips a lower sequence committed later).
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PAYOUT_EVENTS_LOCK,))
    row = conn.execute(
        "SELECT nextval(pg_get_serial_sequence('payout_events', 'sequence'))"
    ).fetchone()
    assert row is not None
    sequence = int(row[0])
    stamped = conn.execute(
        f"UPDATE payouts SET sequence = %s WHERE payout_id = %s RETURNING {_PAYOUT_COLUMNS}",
        (sequence, payout.payout_id),
    ).fetchone()
    assert stamped is not None
    updated = _payout(stamped)
    conn.execute(
        "INSERT INTO payout_events (sequence, payout_id, payee_id, period, state, payload)"
        " OVERRIDING SYSTEM VALUE VALUES (%s,%s,%s,%s,%s,%s)",
        (
            sequence,
            updated.payout_id,
            updated.payee_id,
            updated.period,
            str(updated.state),
            payload_for(updated),
        ),
    )
    return updated


#: pg_advisory_xact_lock key serialising payout event appends ("payouts").
PAYOUT_EVENTS_LOCK = 0x7061_796F_7574_73
#: pg_advisory_xact_lock key serialising period closes ("closes").
CLOSE_LOCK = 0x636C_6F73_6573


def payout_events_after(
    conn: Conn, after: int, *, payee_id: str = "", period: str = "", limit: int = 500
) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        "SELECT sequence, payload FROM payout_events WHERE sequence > %s"
        " AND (%s = '' OR payee_id = %s) AND (%s = '' OR period = %s)"
        " ORDER BY sequence LIMIT %s",
        (after, payee_id, payee_id, period, period, limit),
    ).fetchall()
    return [(int(r[0]), bytes(r[1])) for r in rows]


def latest_sequence(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(max(sequence), 0) FROM payout_events").fetchone()
    return int(row[0]) if row else 0


def unpublished_events(conn: Conn, limit: int = 500) -> list[tuple[int, str, bytes]]:
    rows = conn.execute(
        "SELECT sequence, payee_id, payload FROM payout_events"
        " WHERE published_at IS NULL AND quarantined_at IS NULL"
        " ORDER BY sequence LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    ).fetchall()
    return [(int(r[0]), r[1], bytes(r[2])) for r in rows]


def mark_published(conn: Conn, sequences: Sequence[int]) -> None:
    conn.execute(
        "UPDATE payout_events SET published_at = clock_timestamp() WHERE sequence = ANY(%s)",
        (list(sequences),),
    )
