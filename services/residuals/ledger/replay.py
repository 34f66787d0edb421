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
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection

from residuals.codecs.usage import to_raw
from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.period import Period
from residuals.domain.vocabulary import RejectReason
from residuals.v1 import usage_pb2

_PERIOD_ROWS = """
SELECT arrival_seq, payload, NULL AS reason, NULL AS detail, NULL AS vendor_id, NULL AS event_id
  FROM usage_events WHERE period = %(p)s AND adjustment_period IS NULL
UNION ALL
SELECT arrival_seq, payload, NULL, NULL, NULL, NULL
  FROM usage_repeats WHERE period = %(p)s AND adjustment_period IS NULL
UNION ALL
SELECT arrival_seq, NULL, reason, detail, vendor_id, event_id
  FROM dead_letters WHERE period = %(p)s
ORDER BY arrival_seq
"""

_ADJUSTMENT_ROWS = """
SELECT arrival_seq, payload, NULL AS reason, NULL AS detail, NULL AS vendor_id, NULL AS event_id
  FROM usage_events WHERE adjustment_period = %(p)s
UNION ALL
SELECT arrival_seq, payload, NULL, NULL, NULL, NULL
  FROM usage_repeats WHERE adjustment_period = %(p)s
ORDER BY arrival_seq
"""


def _item(row: tuple[Any, ...]) -> UsageEvent | Rejection:
    _seq, payload, reason, detail, vendor_id, event_id = row
    if payload is not None:
        return parse_event(to_raw(usage_pb2.UsageEvent.FromString(bytes(payload))))
    return Rejection(RejectReason(reason), detail or "", vendor_id or None, event_id or None)


def load_period_events(conn: Connection[Any], period: Period | str) -> list[UsageEvent | Rejection]:
    """The period's events in arrival order, as ``compute_statement`` takes them."""
    rows = conn.execute(_PERIOD_ROWS, {"p": str(period)}).fetchall()
    return [_item(row) for row in rows]


def load_adjustments(conn: Connection[Any], period: Period | str) -> list[UsageEvent]:
    """Uses of earlier, closed periods recorded as adjustments of ``period``, in arrival order.

    Each keeps its own ``occurred_at`` (hence its original period); the period close
    restates the closed period with them and posts the difference (domain.adjustments).
    """
    rows = conn.execute(_ADJUSTMENT_ROWS, {"p": str(period)}).fetchall()
    return [e for e in (_item(row) for row in rows) if isinstance(e, UsageEvent)]
