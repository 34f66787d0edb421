"""Helpers for payouts tests: a migrated scratch database and in-memory input sources.

The in-memory sources stand in for the ledger writer's and licensing service's tables in
tests of the close itself (arrival order, cut-offs and late arrivals are modelled exactly);
the end-to-end tests use the real stored-data adapters. ``world`` (a fixture: every test
sees it through tests/conftest.py) is a migrated database with worked case 07's sources.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.payouts.close import ClosePolicy, close_period
from residuals.payouts.reconcile import reconcile
from residuals.payouts.sources import EventAccounting, Sources
from residuals.platform import migrations
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.platform.roles import database_role
from residuals.replay.casefile import expand_repeats, load_case
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


# --- the close tests' world ----------------------------------------------------------------

CASE = Path(__file__).parents[1] / "data" / "royalty-cases" / "07-advance-and-threshold.yaml"
OCT, NOV, DEC = Period(2026, 10), Period(2026, 11), Period(2026, 12)
POLICY = ClosePolicy(thresholds={"USD": Decimal("25.00")})
LATER = datetime(2027, 6, 1, tzinfo=UTC)


class World:
    """``db`` connects as the payouts service's role; ``owner`` (the tables' owner, for
    tampering the service itself may not do) is a plain DSN."""

    def __init__(self, db: Database, sources: Sources, events: MemoryEvents, owner: str) -> None:
        self.db, self.sources, self.events, self.owner = db, sources, events, owner

    def close(self, period: Period, **kwargs: Any) -> Any:
        with self.db.connection() as conn:
            return close_period(
                conn, self.sources, period, policy=POLICY, closed_by="test", now=LATER, **kwargs
            )

    def reconcile(self, period: Period) -> Any:
        with self.db.connection() as conn:
            return reconcile(conn, self.sources, period)


@pytest.fixture
def world(stack: StackSettings) -> Iterator[World]:
    case = load_case(CASE)
    sources, events, _ = memory_sources(case.licences)
    for raw in case.raw_events:
        events.extend(expand_repeats(raw, "event"))
    with migrated_database(stack) as dsn:
        settings = PostgresSettings(dsn=dsn, pool_min=1, pool_max=4, user=database_role("payouts"))
        db = Database(settings, application_name="t")
        db.open()
        try:
            yield World(db, sources, events, dsn)
        finally:
            db.close()
