"""Helpers for payouts tests: a migrated scratch database, in-memory input sources, and
rows written straight into the ledger's and licensing's tables for the real adapters.

The in-memory sources stand in for the ledger writer's and licensing service's tables in
tests of the close itself (arrival order, cut-offs and late arrivals are modelled exactly);
the end-to-end tests use the real stored-data adapters. ``world`` (a fixture: every test
sees it through tests/conftest.py) is a migrated database with worked case 07's sources.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from residuals.codecs.usage import from_domain, payload_bytes
from residuals.domain.approvals import Approval
from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.licences import Licence
from residuals.domain.period import Period
from residuals.domain.vocabulary import RejectReason
from residuals.licensing.registry import Registry
from residuals.payouts.close import ClosePolicy, close_period
from residuals.payouts.reconcile import reconcile
from residuals.payouts.sources import EventAccounting, Sources
from residuals.platform import migrations
from residuals.platform.auth import Principal, Role
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.platform.roles import database_role
from residuals.replay.casefile import expand_repeats, load_case
from residuals.stack import postgres
from residuals.stack.settings import StackSettings
from residuals.v1 import licence_pb2
from tests.support.licensing import create_request


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

    def part_events(
        self, conn: Any, period: Period, licence_ids: Sequence[str]
    ) -> list[UsageEvent | Rejection]:
        """Test double: the whole period (a superset is allowed)."""
        return self.period_events(conn, period)

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


@dataclass
class MemoryApprovals:
    items: list[Approval] = field(default_factory=list)

    def approvals(self, conn: Any, licence_ids: Sequence[str]) -> list[Approval]:
        return [a for a in self.items if a.licence_id in licence_ids]


def memory_sources(
    licences: Iterable[Licence] = (), approvals: Iterable[Approval] = ()
) -> tuple[Sources, MemoryEvents, MemoryLicences]:
    events, lics = MemoryEvents(), MemoryLicences(list(licences))
    sources = Sources(events=events, licences=lics, approvals=MemoryApprovals(list(approvals)))
    return sources, events, lics


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


# --- stored rows for the close over the real adapters ------------------------------------

ADMIN = Principal("p-admin", Role.ADMIN)


@dataclass
class StoredRows:
    """Rows written straight into the ledger writer's tables, as a legacy writer would."""

    dsn: str
    expected: list[UsageEvent | Rejection]

    def event(self, raw: dict[str, Any], *, outcome: str = "ACCEPTED") -> UsageEvent:
        event = parse_event(raw)
        assert isinstance(event, UsageEvent)
        self._row("usage_events", event, payload_bytes(from_domain(event)), outcome)
        self.expected.append(event)
        return event

    def bad(self, event: UsageEvent, payload: bytes, table: str = "usage_events") -> None:
        self._row(table, event, payload, "ACCEPTED" if table == "usage_events" else "DUPLICATE")
        self.expected.append(Rejection(RejectReason.MALFORMED, "", event.vendor_id))

    def _row(self, table: str, event: UsageEvent, payload: bytes, outcome: str) -> None:
        with psycopg.connect(self.dsn) as conn:
            if table == "usage_events":
                conn.execute(
                    "INSERT INTO usage_events (vendor_id, event_id, licence_id, kind,"
                    " occurred_at, payload, period, outcome, approval_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (event.vendor_id, event.event_id, event.licence_id or "", event.kind.value,
                     event.occurred_at, payload, str(Period.containing(event.occurred_at)),
                     outcome, event.approval_id),
                )  # fmt: skip
            else:
                conn.execute(
                    "INSERT INTO usage_repeats (source_topic, source_partition, source_offset,"
                    " vendor_id, event_id, licence_id, kind, outcome, decided_by, occurred_at,"
                    " period, payload, signature, key_id, received_at)"
                    " VALUES ('t', 0, %s, %s, %s, %s, %s, %s, 'meter', %s, %s, %s, '', 'k',"
                    " now())",
                    (len(self.expected), event.vendor_id, event.event_id, event.licence_id or "",
                     event.kind.value, outcome, event.occurred_at,
                     str(Period.containing(event.occurred_at)), payload),
                )  # fmt: skip

    def dead(self, reason: str, expected: RejectReason) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "INSERT INTO dead_letters (source_topic, source_partition, source_offset,"
                " reason, detail, decided_by, vendor_id, event_id, period, original,"
                " received_at) VALUES ('dlq', 0, %s, %s, 'x', 'meter', 'VEN-1', 'd', %s,"
                " '', now())",
                (len(self.expected), reason, str(OCT)),
            )
        self.expected.append(Rejection(expected, ""))


@pytest.fixture
def payouts_database(stack: StackSettings) -> Iterator[tuple[str, Database]]:
    with migrated_database(stack) as dsn:
        db = Database(PostgresSettings(dsn=dsn, pool_min=1, pool_max=2), application_name="t")
        db.open()
        try:
            yield dsn, db
        finally:
            db.close()


def register(db: Database, *licences: Licence) -> None:
    """TAL-1, AVA-1, VEN-1 and payee TAL-1 in the licensing tables, and ``licences``."""
    registry = Registry(db)
    registry.create_talent(ADMIN, licence_pb2.Talent(talent_id="TAL-1"))
    registry.create_avatar(ADMIN, licence_pb2.Avatar(avatar_id="AVA-1", talent_id="TAL-1"))
    registry.create_vendor(ADMIN, licence_pb2.Vendor(vendor_id="VEN-1"))
    registry.create_payee(ADMIN, licence_pb2.Payee(payee_id="TAL-1"))
    for lic in licences:
        registry.create_licence(ADMIN, create_request(lic))


def record_request(dsn: str, approval: Approval, status: str = "approved") -> None:
    """One request row as the licensing service stores it, decided the day before."""
    decided = approval.valid_from - timedelta(days=1)
    approved = status == "approved"
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO approvals (approval_id, licence_id, talent_id, vendor_id, request_id,"
            " category, renders_requested, requested_from, status, valid_from, valid_until,"
            " max_renders, reason, requested_at, requested_by, decided_at, decided_by, sequence)"
            " VALUES (%s, %s, 'TAL-1', 'VEN-1', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'VEN-1',"
            " %s, %s, nextval('approval_change_seq'))",
            (approval.approval_id, approval.licence_id, approval.approval_id, approval.category,
             approval.max_renders, approval.valid_from, status,
             approval.valid_from if approved else None, approval.valid_until if approved else None,
             approval.max_renders if approved else None, "" if status != "denied" else "no",
             decided, None if status == "pending" else decided,
             None if status == "pending" else "TAL-1"),
        )  # fmt: skip


@contextmanager
def running_payouts(
    stack: StackSettings,
    dsn: str,
    name: str,
    *,
    sources: Sources,
    authenticator: Any,
    rail: Any = None,
    pool_max: int = 8,
    **settings: Any,
) -> Iterator[Any]:
    """A real PayoutsApp (in-process, its own role, an ephemeral gRPC port) on the migrated
    database ``dsn``, with its payouts topic under a fresh prefix made from ``name``."""
    from confluent_kafka.admin import NewTopic
    from prometheus_client import CollectorRegistry

    from residuals.payouts.app import PayoutsApp
    from residuals.payouts.metrics import PayoutMetrics
    from residuals.payouts.rails import TestRail
    from residuals.payouts.settings import PayoutsSettings
    from residuals.platform.config import KafkaSettings, TelemetrySettings
    from residuals.platform.grpc_server import GrpcSettings
    from residuals.platform.kafka import make_admin, topic_name
    from residuals.platform.topics import PAYOUTS
    from tests.support.alerts import delete_topics, unique

    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers,
        topic_prefix=f"{unique(name)}.",
        topic_partitions=1,
    )
    topic = topic_name(kafka, PAYOUTS)
    admin = make_admin(kafka)  # kept referenced until the topic exists
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(60)
    config = PayoutsSettings(
        kafka=kafka,
        postgres=PostgresSettings(
            dsn=dsn, pool_min=1, pool_max=pool_max, user=database_role("payouts")
        ),
        telemetry=TelemetrySettings(service_name="payouts"),
        grpc=GrpcSettings(host="127.0.0.1", port=0, max_workers=16),
        **settings,
    )
    app = PayoutsApp(
        config,
        sources=sources,
        rail=rail if rail is not None else TestRail(),
        authenticator=authenticator,
        metrics=PayoutMetrics(CollectorRegistry()),
    ).start()
    try:
        yield app
    finally:
        app.stop()
        delete_topics(kafka)


def case_sources(path: Path) -> tuple[Sources, MemoryEvents]:
    """Sources holding a royalty case's licences and events (repeats expanded)."""
    case = load_case(path)
    sources, events, _ = memory_sources(case.licences)
    for raw in case.raw_events:
        events.extend(expand_repeats(raw, "event"))
    return sources, events
