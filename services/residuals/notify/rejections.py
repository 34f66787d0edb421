"""SQL of vendors' rejected usage (``notify_rejections``) and the wake-up of its readers.

Sequences are taken under one transaction-scoped advisory lock, so the transactions that
store rejections commit in sequence order: once a sequence is visible, every lower one
is visible or never will be. A reader may therefore move its cursor to the head it read
(:func:`head`) and never skip a rejection committed later (WatchRejections' heartbeats
carry that cursor).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import Connection

from residuals.notify.sources import Rejected, RejectionRow
from residuals.platform.postgres import Database

log = logging.getLogger(__name__)

Conn = Connection[Any]

#: pg_notify channel: rejections were stored (WatchRejections streams of every replica look).
REJECTIONS_CHANNEL = "residuals_notify_rejections"
#: The advisory lock that orders rejection sequences ("notifyrj" as a number).
SEQUENCE_LOCK = 0x6E6F74696679726A

#: A StoredRejection's fields, in order.
_COLUMNS = (
    "vendor_id, event_id, reason, detail, licence_id, received_at, source_topic,"
    " source_partition, source_offset, original_bytes, original_sha256, message_id, sequence"
)


@dataclass(frozen=True)
class StoredRejection(Rejected):
    """A stored rejection with its place in the stream."""

    sequence: int


def store(conn: Conn, rows: Sequence[RejectionRow]) -> list[StoredRejection]:
    """Store the rows not stored yet (a re-read dead letter is skipped); returns the new
    ones. Takes the sequence lock until the caller's transaction ends."""
    if not rows:
        return []
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCE_LOCK,))
    stored: list[StoredRejection] = []
    for r in rows:
        found = conn.execute(
            "INSERT INTO notify_rejections (sequence, vendor_id, event_id, reason, detail,"
            " licence_id, received_at, source_topic, source_partition, source_offset,"
            " original_bytes, original_sha256, message_id, dlq_topic, dlq_partition,"
            " dlq_offset)"
            " SELECT nextval('notify_rejection_seq'), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s, %s"
            " WHERE NOT EXISTS (SELECT 1 FROM notify_rejections WHERE dlq_topic = %s"
            "                   AND dlq_partition = %s AND dlq_offset = %s)"
            " ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING"
            f" RETURNING {_COLUMNS}",
            (
                r.vendor_id,
                r.event_id,
                r.reason,
                r.detail,
                r.licence_id,
                r.received_at,
                r.source_topic,
                r.source_partition,
                r.source_offset,
                r.original_bytes,
                r.original_sha256,
                r.message_id,
                r.dlq_topic,
                r.dlq_partition,
                r.dlq_offset,
                r.dlq_topic,
                r.dlq_partition,
                r.dlq_offset,
            ),
        ).fetchone()
        if found is not None:
            stored.append(StoredRejection(*found))
    conn.execute("SELECT pg_notify(%s, '')", (REJECTIONS_CHANNEL,))
    return stored


def head(conn: Conn) -> int:
    """The highest committed sequence (0: none)."""
    row = conn.execute("SELECT coalesce(max(sequence), 0) FROM notify_rejections").fetchone()
    return int(row[0]) if row else 0


def after(
    conn: Conn, cursor: int, *, vendor_id: str | None, limit: int
) -> tuple[list[StoredRejection], int]:
    """Up to ``limit`` rejections after ``cursor`` (of ``vendor_id``, or all for None)
    and the cursor to continue from: past the rows returned, and past everything
    committed when the page is not full (a safe resume point for heartbeats)."""
    top = head(conn)
    if top <= cursor:
        return [], cursor
    if vendor_id is None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM notify_rejections WHERE sequence > %s AND sequence <= %s"
            " ORDER BY sequence LIMIT %s",
            (cursor, top, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM notify_rejections WHERE vendor_id = %s"
            " AND sequence > %s AND sequence <= %s ORDER BY sequence LIMIT %s",
            (vendor_id, cursor, top, limit),
        ).fetchall()
    found = [StoredRejection(*row) for row in rows]
    if len(found) >= limit:
        return found, found[-1].sequence
    return found, top


class Signal:
    """Wakes WatchRejections streams: a generation number bumped by local commits
    (:meth:`poke`) and by ``pg_notify`` from any replica (a LISTEN thread)."""

    def __init__(self, db: Database | None = None) -> None:
        self.db = db
        self._cond = threading.Condition()
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def poke(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until the generation passes ``seen`` (or ``timeout``); the generation."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._generation != seen or self._stop.is_set(), timeout=timeout
            )
            return self._generation

    def start(self) -> Signal:
        if self.db is not None:
            self._thread = threading.Thread(
                target=self._listen, name="notify-rejections-listen", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.poke()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self) -> None:
        assert self.db is not None
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.db.settings.dsn,
                    autocommit=True,
                    application_name=f"{self.db.application_name}-listen",
                    connect_timeout=5,
                ) as conn:
                    conn.execute(f"LISTEN {REJECTIONS_CHANNEL}")
                    self.poke()  # catch up on what was stored while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.poke()
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("rejection notification listener failed; reconnecting", exc_info=True)
                self._stop.wait(1.0)
