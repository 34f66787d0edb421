"""Rebuild a period's replay input from the ledger: the events the rules are given.

A statement is ``compute_statement(period, licences, events)`` over the stored events in
arrival order. The ledger keeps every record the meter decided, so this returns, in the
ledger's arrival sequence:

* accepted identities and their re-sends (``usage_events``, ``usage_repeats``) parsed from
  the signed payload bytes by the same ``parse_event`` the meter used, so the rules decide
  identity, exclusions, scope, quotas and prices again from scratch;
* dead letters as the rejections they were (reason, detail), which the rules only count.

Only uses recorded while the period was open are returned; uses of the period that arrived
after its close are adjustments of a later period (:func:`load_adjustments`).

One stored row cannot break a period for everyone. A row that does not load - a payload
that is not a usage event, an event out of the event model's bounds (an ``ad_revenue`` of
``1e58``, a time outside 2000..9999: legacy rows, or rows written by hand) or a dead letter
with a reason no version knows - is given to the rules as a dead letter (``MALFORMED``, or
``UNPROCESSABLE`` for such a dead letter) whose detail names the row, and reported as a
:class:`Defect` for the caller to quarantine; so are the re-sends of an identity whose
accepted row is defective (its money cannot be decided from them either).
:attr:`Loaded.demoted` says how many accepted and duplicate rows became dead letters, so
the accounting stays accepted = ledgered + held + dead + duplicates.

The SQL is here; turning rows into events is :mod:`residuals.ledger.rows` (no database
imports), which the offline evidence verifier shares. :func:`stream_rows` gives the same
selection with each row's signature evidence through a server-side cursor, for evidence
bundles of any size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from typing import Any

from psycopg import Connection

from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.period import Period
from residuals.ledger.rows import Defect as Defect
from residuals.ledger.rows import Loaded as Loaded
from residuals.ledger.rows import StoredRow, load_rows

_COLUMNS = "arrival_seq, vendor_id, event_id"
_USE = f"'usage_events', {_COLUMNS}, payload, NULL AS reason, NULL AS detail, outcome"
_REPEAT = f"'usage_repeats', {_COLUMNS}, payload, NULL, NULL, NULL"
_DEAD = f"'dead_letters', {_COLUMNS}, NULL, reason, detail, NULL"
#: A usage row's signature evidence (:class:`StoredRow`'s last fields), and what a dead
#: letter has of it. Selected only for evidence bundles: the close does not need them, and
#: a million signatures and batch proofs are hundreds of megabytes.
_EVIDENCE = ", received_at, signature, key_id, signature_proof"
_DEAD_EVIDENCE = ", received_at, NULL, NULL, NULL"
_ORDER = "ORDER BY arrival_seq"


def _period_rows(use: str, repeat: str, dead: str | None, order: str = _ORDER) -> str:
    """The period's own rows (every licence): ``use``, ``repeat`` and ``dead`` are the
    select lists of each table (``dead`` None leaves dead letters out)."""
    sql = f"""
SELECT {use}
  FROM usage_events WHERE period = %(p)s AND adjustment_period IS NULL
UNION ALL
SELECT {repeat}
  FROM usage_repeats WHERE period = %(p)s AND adjustment_period IS NULL"""
    if dead is not None:
        sql += f"""
UNION ALL
SELECT {dead}
  FROM dead_letters WHERE period = %(p)s"""
    return f"{sql}\n{order}\n"


def _part_rows(use: str, repeat: str, dead: str | None, order: str = _ORDER) -> str:
    """One payee's part of a period: the rows of some licences, plus every row the rules
    need to decide those rows' identities - the accepted row of an identity one of them
    re-sent (a conflicting re-send may name another licence), the re-sends of their
    accepted identities, and retractions of them (which may not name the licence). The
    extra rows only decide identity; their own licences are not part of the part.

    Every row of the licences has its identity in ``own``, so the uses and re-sends are the
    rows whose identity is in ``own``, plus the retractions of ``own`` whose own identity
    is not (neither of the licences nor re-sent under them). Written as joins PostgreSQL
    hashes or looks up by index: an ``OR`` of ``IN`` subqueries is a subplan scanned per
    row once ``own`` outgrows ``work_mem`` (over 13 minutes for a payee with a million
    events, where the joins take seconds)."""
    sql = f"""
WITH own AS (
    SELECT vendor_id, event_id FROM usage_events
     WHERE period = %(p)s AND adjustment_period IS NULL AND licence_id = ANY(%(l)s)
    UNION
    SELECT vendor_id, event_id FROM usage_repeats
     WHERE period = %(p)s AND adjustment_period IS NULL AND licence_id = ANY(%(l)s)
)
SELECT {use}
  FROM usage_events
 WHERE period = %(p)s AND adjustment_period IS NULL
   AND (vendor_id, event_id) IN (SELECT vendor_id, event_id FROM own)
UNION ALL
SELECT {use}
  FROM usage_events AS retraction
 WHERE period = %(p)s AND adjustment_period IS NULL AND kind = 'RETRACTION'
   AND (vendor_id, original_event_id) IN (SELECT vendor_id, event_id FROM own)
   AND NOT licence_id = ANY(%(l)s)
   AND NOT EXISTS (SELECT 1 FROM usage_repeats AS resent
                    WHERE resent.vendor_id = retraction.vendor_id
                      AND resent.event_id = retraction.event_id
                      AND resent.period = %(p)s AND resent.adjustment_period IS NULL
                      AND resent.licence_id = ANY(%(l)s))
UNION ALL
SELECT {repeat}
  FROM usage_repeats
 WHERE period = %(p)s AND adjustment_period IS NULL
   AND (vendor_id, event_id) IN (SELECT vendor_id, event_id FROM own)"""
    if dead is not None:
        sql += f"""
UNION ALL
SELECT {dead}
  FROM dead_letters WHERE period = %(p)s AND licence_id = ANY(%(l)s)"""
    return f"{sql}\n{order}\n"


_PERIOD_ROWS = _period_rows(_USE, _REPEAT, _DEAD)
#: The rows of a payee's part (see :func:`_part_rows`).
_PART_ROWS = _part_rows(_USE, _REPEAT, _DEAD)

_ADJUSTMENT_ROWS = f"""
SELECT {_USE}
  FROM usage_events WHERE adjustment_period = %(p)s
UNION ALL
SELECT {_REPEAT}
  FROM usage_repeats WHERE adjustment_period = %(p)s
ORDER BY arrival_seq
"""

#: Rows fetched per round trip when streaming (a few MB with their evidence).
ITERSIZE = 2000


def _params(period: Period | str, licence_ids: Sequence[str] | None) -> dict[str, Any]:
    if licence_ids is None:
        return {"p": str(period)}
    return {"p": str(period), "l": list(licence_ids)}


def _selection(
    licence_ids: Sequence[str] | None, use: str, repeat: str, dead: str | None, order: str = _ORDER
) -> str:
    """The whole period's rows, or a part's (``licence_ids``), with these select lists."""
    build = _period_rows if licence_ids is None else _part_rows
    return build(use, repeat, dead, order)


def stream_rows(
    conn: Connection[Any],
    period: Period | str,
    licence_ids: Sequence[str] | None = None,
    *,
    itersize: int = ITERSIZE,
) -> Generator[StoredRow, None, None]:
    """The rows :func:`load_period` selects, in the same order, with their signature
    evidence, through a server-side cursor: memory stays bounded whatever the period
    holds (evidence bundles). Runs in the caller's transaction, which must stay open
    while the rows are read; close the generator to close the cursor early."""
    sql = _selection(licence_ids, _USE + _EVIDENCE, _REPEAT + _EVIDENCE, _DEAD + _DEAD_EVIDENCE)
    with conn.cursor(name="residuals_history_rows") as cursor:
        cursor.itersize = itersize
        cursor.execute(sql, _params(period, licence_ids))
        for row in cursor:
            yield StoredRow._make(row)


def signing_key_ids(
    conn: Connection[Any], period: Period | str, licence_ids: Sequence[str] | None = None
) -> list[str]:
    """The key ids that signed the rows :func:`stream_rows` gives, sorted (a bundle lists
    its keys before its events, so a reader can verify as it reads)."""
    sql = _selection(licence_ids, "key_id", "key_id", None, order="")
    query = f"SELECT DISTINCT key_id FROM ({sql}) AS signed WHERE key_id IS NOT NULL"
    rows = conn.execute(query, _params(period, licence_ids)).fetchall()
    return sorted(str(key_id) for (key_id,) in rows)


def load_period(
    conn: Connection[Any], period: Period | str, licence_ids: Sequence[str] | None = None
) -> Loaded:
    """The period's events in arrival order (as ``compute_statement`` takes them), with
    the rows that could not be loaded as they are. With ``licence_ids``, only what those
    licences' part of the statement needs (:data:`_PART_ROWS`)."""
    sql = _PERIOD_ROWS if licence_ids is None else _PART_ROWS
    with contextlib.ExitStack() as stack:
        if conn.autocommit:  # a server-side cursor lives in a transaction
            stack.enter_context(conn.transaction())
        # Folded as the rows arrive: a million events' payloads are never all in memory
        # beside the events parsed from them (one payee's million events: 969 -> 463 MiB).
        cursor = stack.enter_context(conn.cursor(name="residuals_history_load"))
        cursor.itersize = 10_000
        cursor.execute(sql, _params(period, licence_ids))
        return load_rows(cursor)


def load_period_events(conn: Connection[Any], period: Period | str) -> list[UsageEvent | Rejection]:
    """The period's events in arrival order, as ``compute_statement`` takes them."""
    return load_period(conn, period).items


def load_adjusting(conn: Connection[Any], period: Period | str) -> Loaded:
    """Uses of earlier, closed periods recorded as adjustments of ``period``, in arrival
    order (defective rows as dead letters, which adjust nothing)."""
    return load_rows(conn.execute(_ADJUSTMENT_ROWS, {"p": str(period)}).fetchall())


def load_adjustments(conn: Connection[Any], period: Period | str) -> list[UsageEvent]:
    """Uses of earlier, closed periods recorded as adjustments of ``period``, in arrival order.

    Each keeps its own ``occurred_at`` (hence its original period); the period close
    restates the closed period with them and posts the difference (domain.adjustments).
    """
    return [e for e in load_adjusting(conn, period).items if isinstance(e, UsageEvent)]
