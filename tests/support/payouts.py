"""Helpers for payouts tests: a migrated scratch database and in-memory input sources.

The in-memory sources stand in for the ledger writer's and licensing service's tables in
tests of the close itself (arrival order, cut-offs and late arrivals are modelled exactly);
the end-to-end tests use the real stored-data adapters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.payouts.sources import EventAccounting, Sources
from residuals.platform import migrations
from residuals.stack import postgres
from residuals.stack.settings import StackSettings


@contextmanager
def migrated_database(stack: StackSettings) -> Iterator[str]:
    """A fresh database with every migration applied, dropped afterwards."""
    name = f"payouts_{uuid.uuid4().hex[:12]}"
    admin = postgres.admin_dsn(stack)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    dsn = postgres.admin_dsn(stack, name)
    try:
        migrations.migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)'.encode())


def _period_of(item: UsageEvent | Rejection, originals: Mapping[tuple[str, str], Period]) -> Period:
    if isinstance(item, UsageEvent):
        if item.original_event_id:
            found = originals.get((item.vendor_id, item.original_event_id))
            if found is not None:
                return found
        return Period.containing(item.occurred_at)
    raise ValueError("rejections need an explicit period")


@dataclass
class MemoryEvents:
    """Events in arrival order, modelled like the ledger writer stores them: the period of a
    retraction is its original's, and a use of a closed period is recorded as an adjustment
    of the first open period after it."""

    rows: list[tuple[Period, Period | None, UsageEvent | Rejection]] = field(default_factory=list)
    originals: dict[tuple[str, str], Period] = field(default_factory=dict)
    closed: set[Period] = field(default_factory=set)

    def add(self, raw: Mapping[str, Any], period: Period | None = None) -> None:
        item = parse_event(raw)
        where = period or _period_of(item, self.originals)
        if isinstance(item, UsageEvent) and item.identity not in self.originals:
            self.originals[item.identity] = where
        adjustment = None
        if where in self.closed:
            adjustment = where.next()
            while adjustment in self.closed:
                adjustment = adjustment.next()
        self.rows.append((where, adjustment, item))

    def extend(self, raws: Iterable[Mapping[str, Any]]) -> None:
        for raw in raws:
            self.add(raw)

    def mark_closed(self, conn: Any, period: Period) -> None:
        self.closed.add(period)

    def period_events(
        self, conn: Any, period: Period, through: Period | None = None
    ) -> list[UsageEvent | Rejection]:
        return [
            e
            for p, adj, e in self.rows
            if p == period and (adj is None or (through is not None and adj <= through))
        ]

    def late_periods(self, conn: Any, period: Period) -> list[str]:
        return sorted({str(p) for p, adj, _ in self.rows if adj == period})

    def accounting(self, conn: Any, period: Period) -> EventAccounting:
        """Test double: every parsed event counts as ledgered, every rejection as dead."""
        events = [e for p, adj, e in self.rows if p == period and adj is None]
        dead = sum(1 for e in events if isinstance(e, Rejection))
        return EventAccounting(len(events), len(events) - dead, 0, dead, 0)


@dataclass
class MemoryLicences:
    items: list[Licence] = field(default_factory=list)

    def licences(self, conn: Any) -> list[Licence]:
        return list(self.items)


def memory_sources(
    licences: Iterable[Licence] = (),
) -> tuple[Sources, MemoryEvents, MemoryLicences]:
    events, lics = MemoryEvents(), MemoryLicences(list(licences))
    return Sources(events=events, licences=lics), events, lics
