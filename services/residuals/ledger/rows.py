"""Stored ledger rows as the rules take them: the pure half of :mod:`residuals.ledger.history`.

:mod:`~residuals.ledger.history` selects a period's rows from PostgreSQL; this module turns
rows (in arrival order) into the events and rejections ``compute_statement`` takes, with the
rows that cannot be used as they are (see history's docstring). It imports no database
code, so the offline evidence verifier (:mod:`residuals.evidence.verify`) decodes the rows
of a bundle exactly as the period close decoded them from the tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from residuals.codecs.usage import to_raw
from residuals.domain.bounds import describe, printable
from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.vocabulary import RejectReason
from residuals.v1 import usage_pb2

#: The tables a row comes from, in the order of their columns in :class:`StoredRow`.
TABLES = ("usage_events", "usage_repeats", "dead_letters")


class StoredRow(NamedTuple):
    """One ledger row as history selects it. Dead letters have no payload (reason and
    detail instead); the signature evidence is read only for evidence bundles."""

    table: str
    arrival_seq: int
    vendor_id: str
    event_id: str
    payload: bytes | None
    reason: str | None
    detail: str | None
    #: usage_events' outcome (HELD counts as held); None for the other tables.
    outcome: str | None
    received_at: datetime | None = None
    signature: bytes | None = None
    key_id: str | None = None
    signature_proof: bytes | None = None


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


def load_rows(rows: Iterable[Sequence[Any]]) -> Loaded:
    """Rows in arrival order (the first eight fields of :class:`StoredRow`; longer rows
    allowed) as the rules take them. A fold: ``rows`` may be a stream."""
    loaded = Loaded()
    for table, seq, vendor_id, event_id, payload, reason, detail, outcome, *_ in rows:
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
