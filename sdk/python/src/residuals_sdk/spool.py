"""The bounded, durable local spool: accepted events survive outages and restarts.

An event is written here (and committed) BEFORE the publishing call returns, and deleted
only after the transport confirmed it: the broker acknowledged it (Kafka) or the gateway
answered ACCEPTED, DUPLICATE or REJECTED for it (gRPC). A client that starts on a spool
with records in it re-sends them. So an event the SDK accepted is delivered at least once,
whatever happens to the broker, the gateway or this process in between; the platform
drops exact repeats by ``(vendor_id, event_id)``.

Storage is one SQLite database in WAL mode in a directory the caller owns. SQLite gives
atomic appends and deletes that survive a killed process, without a server. ``durability``
chooses what a commit survives: ``"process"`` (``synchronous=NORMAL``: the default; a
crash or kill of this process loses nothing, an OS crash or power cut may lose the last
commits) or ``"power"`` (``synchronous=FULL``: an fsync per commit, several times slower).

The spool is bounded in events and bytes; :meth:`Spool.append` raises
:class:`~residuals_sdk.errors.SpoolFullError` instead of growing without limit. A lock
file keeps two live clients from draining one directory. ``path=None`` keeps the spool in
memory: same bounds and behaviour, but nothing survives the process.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from residuals_sdk.errors import SpoolFullError, SpoolLockedError

DB_FILE = "spool.sqlite3"
LOCK_FILE = "spool.lock"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_EVENTS = 1_000_000
# Per-row overhead counted against the byte bound (ids, sequence, page slack).
ROW_OVERHEAD = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    envelope BLOB NOT NULL,
    spooled_at_ms INTEGER NOT NULL
)
"""


_INSERT = "INSERT INTO spool (event_id, routing_key, envelope, spooled_at_ms) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """One event waiting for delivery: its envelope bytes exactly as they will be sent."""

    seq: int
    event_id: str
    routing_key: str
    envelope: bytes

    @property
    def size(self) -> int:
        return len(self.envelope) + len(self.routing_key) + len(self.event_id) + ROW_OVERHEAD


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What :meth:`Spool.append_many` stores for one event."""

    event_id: str
    routing_key: str
    envelope: bytes

    @property
    def size(self) -> int:
        return len(self.envelope) + len(self.routing_key) + len(self.event_id) + ROW_OVERHEAD


class Spool:
    """Append, read in order, delete; thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_events: int = DEFAULT_MAX_EVENTS,
        durability: str = "process",
    ) -> None:
        if max_bytes <= 0 or max_events <= 0:
            raise ValueError("spool bounds must be positive")
        if durability not in ("process", "power"):
            raise ValueError("durability must be 'process' or 'power'")
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.directory = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = self._acquire(self.directory / LOCK_FILE)
            target = str(self.directory / DB_FILE)
        else:
            target = ":memory:"
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            sync = "NORMAL" if durability == "process" else "FULL"
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.execute(_SCHEMA)
            count, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(envelope) + length(routing_key)"
                f" + length(event_id) + {ROW_OVERHEAD}), 0) FROM spool"
            ).fetchone()
        except BaseException:
            self._release()
            raise
        self._count = int(count)
        self._bytes = int(size)
        self._closed = False

    @staticmethod
    def _acquire(path: Path) -> IO[bytes]:
        handle = open(path, "a+b")  # noqa: SIM115 - held open for the spool's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SpoolLockedError(
                f"spool {path.parent} is in use by another client; give each client its own"
                " spool directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode())
        handle.flush()
        return handle

    def _release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # --- size ----------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Events in the spool (waiting or in flight)."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes counted against ``max_bytes``."""
        return self._bytes

    def _check_room(self, events: int, size: int) -> None:
        if self._count + events > self.max_events or self._bytes + size > self.max_bytes:
            raise SpoolFullError(
                f"spool full ({self._count:,} events, {self._bytes:,} bytes of"
                f" {self.max_events:,} / {self.max_bytes:,}): events are not being delivered"
                " fast enough (is the broker or gateway reachable?); the event was not accepted"
            )

    # --- operations ----------------------------------------------------------------------

    def append(self, event_id: str, routing_key: str, envelope: bytes) -> int:
        """Store one event durably; return its sequence number."""
        return self.append_many([NewEvent(event_id, routing_key, envelope)])[0]

    def append_many(self, events: Sequence[NewEvent]) -> list[int]:
        """Store events in one transaction (all or none); return their sequence numbers."""
        size = sum(e.size for e in events)
        now = int(time.time() * 1000)
        with self._lock:
            self._ensure_open()
            self._check_room(len(events), size)
            if len(events) == 1:
                # Autocommit: a lone INSERT is its own transaction, one round trip.
                event = events[0]
                cursor = self._db.execute(
                    _INSERT, (event.event_id, event.routing_key, event.envelope, now)
                )
                seqs = [int(cursor.lastrowid or 0)]
            else:
                seqs = []
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for event in events:
                        cursor = self._db.execute(
                            _INSERT, (event.event_id, event.routing_key, event.envelope, now)
                        )
                        seqs.append(int(cursor.lastrowid or 0))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            self._count += len(events)
            self._bytes += size
            return seqs

    def read_after(self, seq: int, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` events with a sequence number above ``seq``, oldest first."""
        with self._lock:
            self._ensure_open()
            rows = self._db.execute(
                "SELECT seq, event_id, routing_key, envelope FROM spool WHERE seq > ?"
                " ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [SpooledEvent(int(r[0]), r[1], r[2], bytes(r[3])) for r in rows]

    def delete(self, events: Iterable[SpooledEvent]) -> None:
        """Forget delivered events (one transaction)."""
        batch = list(events)
        if not batch:
            return
        with self._lock:
            self._ensure_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.executemany(
                    "DELETE FROM spool WHERE seq = ?", [(e.seq,) for e in batch]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if cursor.rowcount == len(batch):
                self._count -= len(batch)
                self._bytes -= sum(e.size for e in batch)
            else:  # deleted twice somehow: recount rather than drift
                self._recount()

    def _recount(self) -> None:
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(envelope) + length(routing_key)"
            f" + length(event_id) + {ROW_OVERHEAD}), 0) FROM spool"
        ).fetchone()
        self._count, self._bytes = int(count), int(size)

    def _ensure_open(self) -> None:
        if self._closed:
            raise ValueError("spool is closed")

    def close(self) -> None:
        """Close the database and release the directory lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.close()
            finally:
                self._release()
