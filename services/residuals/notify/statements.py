"""``statement.ready``: closed statements announced to the talents and vendors of their
licences.

Statements are rows (the payouts service closes a period in PostgreSQL, not on a topic),
so a thread looks for closed ones not yet in ``notify_statements_seen`` every
``statements_poll_seconds`` and records one event per talent and per vendor of each,
marking it seen in the same transaction: a restart, or two replicas looking at once,
announce nothing twice (the webhook-ids are derived from statement and party, and the
seen row is the statement's primary key).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import Connection

from residuals.domain import notifications as n
from residuals.domain.notifications import Audience
from residuals.notify.events import NewEvent
from residuals.notify.metrics import NotifyMetrics
from residuals.notify.store import record_events
from residuals.payouts import directory
from residuals.payouts.directory import ClosedStatement, StatementParty
from residuals.platform.postgres import Database

log = logging.getLogger(__name__)

Conn = Connection[Any]

#: A statement's body lists its licences up to this many (a vendor's or talent's own).
MAX_LICENCE_IDS = 1000


def statement_events(
    statement: ClosedStatement, parties: Sequence[StatementParty]
) -> list[NewEvent]:
    """One event per talent and per vendor of the statement, each with its own licences."""
    by_talent: dict[str, list[str]] = {}
    by_vendor: dict[str, list[str]] = {}
    for party in parties:
        if party.talent_id:
            by_talent.setdefault(party.talent_id, []).append(party.licence_id)
        if party.vendor_id:
            by_vendor.setdefault(party.vendor_id, []).append(party.licence_id)

    def event(kind: str, party_id: str, licence_ids: list[str]) -> NewEvent:
        data = {
            "statement_id": statement.statement_id,
            "period": statement.period,
            "content_hash": statement.content_hash,
            "closed_at": n.timestamp_text(statement.closed_at),
            "licence_ids": sorted(licence_ids)[:MAX_LICENCE_IDS],
        }
        audience = Audience(party_id, ()) if kind == "vendor" else Audience("", (party_id,))
        return NewEvent(
            n.STATEMENT_READY,
            f"{statement.statement_id}:{kind}:{party_id}",
            statement.closed_at,
            data,
            audience,
        )

    return [event("talent", t, ids) for t, ids in sorted(by_talent.items())] + [
        event("vendor", v, ids) for v, ids in sorted(by_vendor.items())
    ]


def seen(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT statement_id FROM notify_statements_seen")]


def announce_new(
    db: Database, metrics: NotifyMetrics, on_queued: Callable[[set[str]], None] | None = None
) -> int:
    """Announce every closed statement not announced yet; how many statements."""
    with db.connection() as conn:
        pending = directory.closed_statements(conn, excluding=seen(conn))
    announced = 0
    for statement in pending:
        with db.connection() as conn:
            claimed = conn.execute(
                "INSERT INTO notify_statements_seen (statement_id) VALUES (%s)"
                " ON CONFLICT (statement_id) DO NOTHING RETURNING statement_id",
                (statement.statement_id,),
            ).fetchone()
            if claimed is None:
                continue  # another replica announced it
            parties = directory.statement_parties(conn, statement.statement_id)
            recorded = record_events(conn, statement_events(statement, parties))
        announced += 1
        for event_type, count in recorded.new_by_type.items():
            metrics.events.labels(event_type).inc(count)
        if recorded.queued:
            metrics.queued.inc(recorded.queued)
        log.info(
            "statement announced",
            extra={
                "statement_id": statement.statement_id,
                "period": statement.period,
                "deliveries": recorded.queued,
            },
        )
        if recorded.endpoints and on_queued is not None:
            on_queued(recorded.endpoints)
    return announced


class StatementWatcher:
    """The poller thread's body (run by :class:`~residuals.platform.service.Workers`)."""

    def __init__(
        self,
        db: Database,
        metrics: NotifyMetrics,
        *,
        poll_seconds: float,
        on_queued: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.on_queued = on_queued
        self._wake = threading.Event()
        #: Set after each completed look (tests wait on it).
        self.looked = threading.Event()

    def poke(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Look now and every ``poll_seconds`` until ``stop``; a failed look is logged
        and retried (the database may be away for a while), never ends the thread."""
        while not stop.is_set():
            try:
                announce_new(self.db, self.metrics, self.on_queued)
                self.looked.set()
            except Exception:
                log.exception("looking for closed statements failed; retrying")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def stop(self) -> None:
        self._wake.set()
