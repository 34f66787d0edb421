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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection

from residuals.codecs.usage import to_raw
from residuals.domain.bounds import printable
from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.period import Period
from residuals.domain.vocabulary import RejectReason
from residuals.platform.quarantine import describe
from residuals.v1 import usage_pb2

_COLUMNS = "arrival_seq, vendor_id, event_id"
_PERIOD_ROWS = f"""
SELECT 'usage_events', {_COLUMNS}, payload, NULL AS reason, NULL AS detail, outcome
  FROM usage_events WHERE period = %(p)s AND adjustment_period IS NULL
UNION ALL
SELECT 'usage_repeats', {_COLUMNS}, payload, NULL, NULL, NULL
  FROM usage_repeats WHERE period = %(p)s AND adjustment_period IS NULL
UNION ALL
SELECT 'dead_letters', {_COLUMNS}, NULL, reason, detail, NULL
  FROM dead_letters WHERE period = %(p)s
ORDER BY arrival_seq
"""

_ADJUSTMENT_ROWS = f"""
SELECT 'usage_events', {_COLUMNS}, payload, NULL AS reason, NULL AS detail, outcome
  FROM usage_events WHERE adjustment_period = %(p)s
UNION ALL
SELECT 'usage_repeats', {_COLUMNS}, payload, NULL, NULL, NULL
  FROM usage_repeats WHERE adjustment_period = %(p)s
ORDER BY arrival_seq
"""

#: One payee's part of a period: the rows of some licences, plus every row the rules need
#: to decide those rows' identities - the accepted row of an identity one of them re-sent
#: (a conflicting re-send may name another licence), the re-sends of their accepted
#: identities, and retractions of them (which may not name the licence). The extra rows
#: only decide identity; their own licences are not part of the part.
_PART_ROWS = f"""
WITH own AS (
    SELECT vendor_id, event_id FROM usage_events
     WHERE period = %(p)s AND adjustment_period IS NULL AND licence_id = ANY(%(l)s)
    UNION
    SELECT vendor_id, event_id FROM usage_repeats
     WHERE period = %(p)s AND adjustment_period IS NULL AND licence_id = ANY(%(l)s)
)
SELECT 'usage_events', {_COLUMNS}, payload, NULL AS reason, NULL AS detail, outcome
  FROM usage_events
 WHERE period = %(p)s AND adjustment_period IS NULL
   AND (licence_id = ANY(%(l)s)
        OR (vendor_id, event_id) IN (SELECT vendor_id, event_id FROM own)
        OR (kind = 'RETRACTION'
            AND (vendor_id, original_event_id) IN (SELECT vendor_id, event_id FROM own)))
UNION ALL
SELECT 'usage_repeats', {_COLUMNS}, payload, NULL, NULL, NULL
  FROM usage_repeats
 WHERE period = %(p)s AND adjustment_period IS NULL
   AND (licence_id = ANY(%(l)s)
        OR (vendor_id, event_id) IN (SELECT vendor_id, event_id FROM own))
UNION ALL
SELECT 'dead_letters', {_COLUMNS}, NULL, reason, detail, NULL
  FROM dead_letters WHERE period = %(p)s AND licence_id = ANY(%(l)s)
ORDER BY arrival_seq
"""

#: What the ledger's accounting calls a row of each table (dead letters stay dead).
_ACCOUNT = {"usage_events": "ledgered", "usage_repeats": "duplicates"}


@dataclass(frozen=True)
class Defect:
    """A stored row that could not be given to the rules as it is."""

    table: str
    arrival_seq: int
    vendor_id: str
    event_id: str
    payload: bytes | None
    error: str

    @property
    def detail(self) -> str:
        """The dead letter's detail: which row, and why."""
        who = f"{printable(self.vendor_id, 64)}/{printable(self.event_id, 64)}"
        return f"{self.table} row {self.arrival_seq} ({who}) cannot be used: {self.error}"


@dataclass
class Loaded:
    """Rows as the rules take them, and what was wrong with some of them."""

    items: list[UsageEvent | Rejection] = field(default_factory=list)
    #: How the ledger's accounting counts each item's row: ledgered, held, duplicates or
    #: dead (a dead letter).
    accounts: list[str] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    #: Rows the ledger counts as ledgered / held / duplicates that became dead letters.
    demoted: Counter[str] = field(default_factory=Counter)
    #: Identities whose accepted row became a dead letter (their re-sends and retractions
    #: follow it).
    excluded: set[tuple[str, str]] = field(default_factory=set)

    def add(self, item: UsageEvent | Rejection, account: str) -> None:
        self.items.append(item)
        self.accounts.append(account)

    def follows_excluded(self, event: UsageEvent) -> bool:
        """A re-send of an excluded identity, or a retraction of one."""
        return event.identity in self.excluded or (
            event.original_event_id is not None
            and (event.vendor_id, event.original_event_id) in self.excluded
        )

    def exclude(self, index: int, reason: RejectReason, detail: str) -> None:
        """Make item ``index`` a dead letter (the rules no longer take it into money)."""
        item = self.items[index]
        vendor_id, event_id = item.vendor_id, item.event_id
        if isinstance(item, UsageEvent):
            self.excluded.add(item.identity)
        self.items[index] = Rejection(reason, detail, vendor_id, event_id)
        account = self.accounts[index]
        if account != "dead":
            self.demoted[account] += 1
            self.accounts[index] = "dead"

    def exclude_licences(self, unusable: Mapping[str, str]) -> None:
        """Events of licences that could not be loaded (licence id → why), and the re-sends
        and retractions that follow them, become ``UNPROCESSABLE`` dead letters."""
        if not unusable:
            return
        for index, item in enumerate(self.items):
            if not isinstance(item, UsageEvent):
                continue
            licence_id = item.licence_id or ""
            if licence_id in unusable:
                why = unusable[licence_id]
                detail = f"licence {printable(licence_id, 128)} cannot be used: {why}"
            elif self.follows_excluded(item):
                detail = "follows an event of a licence that cannot be used"
            else:
                continue
            self.exclude(index, RejectReason.UNPROCESSABLE, detail)


def _parse(payload: Any) -> UsageEvent | str:
    """The stored payload as an event, or why it cannot be one."""
    try:
        parsed = parse_event(to_raw(usage_pb2.UsageEvent.FromString(bytes(payload))))
    except Exception as error:  # any stored bytes at all: one row must not stop the close
        return describe(error)
    if isinstance(parsed, Rejection):  # out of the event model's bounds, among others
        return f"{parsed.reason.value}: {parsed.detail}"
    return parsed


def _load(rows: Iterable[tuple[Any, ...]]) -> Loaded:
    loaded = Loaded()
    for table, seq, vendor_id, event_id, payload, reason, detail, outcome in rows:
        identity = (vendor_id or "", event_id or "")
        if table == "dead_letters":
            try:
                rejection = Rejection(RejectReason(reason), detail or "", *_known(identity))
            except ValueError:
                defect = Defect(table, seq, *identity, None, f"unknown reason {reason!r:.64}")
                loaded.defects.append(defect)
                rejection = Rejection(RejectReason.UNPROCESSABLE, defect.detail, *_known(identity))
            loaded.add(rejection, "dead")
            continue
        account = "held" if outcome == "HELD" else _ACCOUNT[table]
        parsed = _parse(payload)
        if isinstance(parsed, UsageEvent) and not loaded.follows_excluded(parsed):
            loaded.add(parsed, account)
            continue
        error = parsed if isinstance(parsed, str) else "follows a row that cannot be used"
        defect = Defect(table, seq, *identity, bytes(payload), error)
        loaded.defects.append(defect)
        loaded.add(Rejection(RejectReason.MALFORMED, "", *_known(identity)), account)
        loaded.exclude(len(loaded.items) - 1, RejectReason.MALFORMED, defect.detail)
        loaded.excluded.add(identity)  # its re-sends and retractions follow it
    return loaded


def _known(identity: tuple[str, str]) -> tuple[str | None, str | None]:
    return identity[0] or None, identity[1] or None


def load_period(
    conn: Connection[Any], period: Period | str, licence_ids: Sequence[str] | None = None
) -> Loaded:
    """The period's events in arrival order (as ``compute_statement`` takes them), with
    the rows that could not be loaded as they are. With ``licence_ids``, only what those
    licences' part of the statement needs (:data:`_PART_ROWS`)."""
    if licence_ids is None:
        return _load(conn.execute(_PERIOD_ROWS, {"p": str(period)}).fetchall())
    params = {"p": str(period), "l": list(licence_ids)}
    return _load(conn.execute(_PART_ROWS, params).fetchall())


def load_period_events(conn: Connection[Any], period: Period | str) -> list[UsageEvent | Rejection]:
    """The period's events in arrival order, as ``compute_statement`` takes them."""
    return load_period(conn, period).items


def load_adjusting(conn: Connection[Any], period: Period | str) -> Loaded:
    """Uses of earlier, closed periods recorded as adjustments of ``period``, in arrival
    order (defective rows as dead letters, which adjust nothing)."""
    return _load(conn.execute(_ADJUSTMENT_ROWS, {"p": str(period)}).fetchall())


def load_adjustments(conn: Connection[Any], period: Period | str) -> list[UsageEvent]:
    """Uses of earlier, closed periods recorded as adjustments of ``period``, in arrival order.

    Each keeps its own ``occurred_at`` (hence its original period); the period close
    restates the closed period with them and posts the difference (domain.adjustments).
    """
    return [e for e in load_adjusting(conn, period).items if isinstance(e, UsageEvent)]
