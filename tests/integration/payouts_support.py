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
from residuals.payouts.sources import EventAccounting, PeriodEvents, Sources
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
    """Events in arrival order with positions 1, 2, 3…; the period of a retraction is its
    original's (as the ledger writer records it)."""

    rows: list[tuple[int, Period, UsageEvent | Rejection]] = field(default_factory=list)
    originals: dict[tuple[str, str], Period] = field(default_factory=dict)

    def add(self, raw: Mapping[str, Any], period: Period | None = None) -> None:
        item = parse_event(raw)
        where = period or _period_of(item, self.originals)
        if isinstance(item, UsageEvent) and item.identity not in self.originals:
            self.originals[item.identity] = where
        self.rows.append((len(self.rows) + 1, where, item))

    def extend(self, raws: Iterable[Mapping[str, Any]]) -> None:
        for raw in raws:
            self.add(raw)

    def period_events(self, conn: Any, period: Period, up_to: int | None = None) -> PeriodEvents:
        chosen = [(n, e) for n, p, e in self.rows if p == period and (up_to is None or n <= up_to)]
        cutoff = max((n for n, _ in chosen), default=up_to or 0)
        return PeriodEvents([e for _, e in chosen], cutoff)

    def late_periods(self, conn: Any, cutoffs: Mapping[str, int]) -> list[str]:
        late = {str(p) for n, p, _ in self.rows if str(p) in cutoffs and n > cutoffs[str(p)]}
        return sorted(late)

    def accounting(self, conn: Any, period: Period) -> EventAccounting:
        """Test double: every parsed event counts as ledgered, every rejection as dead."""
        events = [e for _, p, e in self.rows if p == period]
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
