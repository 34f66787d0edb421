"""The live tail of ``alert_changes``, shared by every WatchAlerts subscriber of a process.

One thread reads new changes from PostgreSQL (``sequence > head``) and appends them to a
bounded in-memory window; subscribers wait on a condition and filter the window
themselves. The database stays the only source of truth, so changes written by another
replica (an acknowledgement there, its consumer's share of partitions) reach this
replica's subscribers too: the tail wakes on ``pg_notify`` (sent by every writing
transaction), on a local :meth:`ChangeFeed.poke` after this process commits, and at
least every ``poll_interval`` seconds in case a notification is lost.

The window covers ``(floor, head]`` completely. A subscriber whose cursor is below
``floor`` catches up from the database first (:func:`residuals.alerts.store.changes_after`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import psycopg

from residuals.alerts import store
from residuals.alerts.store import Change
from residuals.platform.postgres import Database

log = logging.getLogger(__name__)


class ChangeFeed:
    """Recent changes in sequence order, with a condition to wait for new ones."""

    def __init__(
        self,
        db: Database,
        *,
        capacity: int = 10_000,
        poll_interval: float = 0.5,
        batch: int = 2_000,
        on_changes: Callable[[list[Change]], None] | None = None,
    ) -> None:
        self.db = db
        self.capacity = capacity
        self.poll_interval = poll_interval
        self.batch = batch
        self.on_changes = on_changes
        self._window: deque[Change] = deque()
        self._floor = 0
        self._head = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> ChangeFeed:
        """Start at the current head (older changes are served from the database)."""
        with self.db.connection() as conn:
            start = store.head(conn)
        with self._cond:
            self._floor = self._head = start
        self.ready.set()
        for target, name in ((self._tail_loop, "alert-feed"), (self._listen_loop, "alert-listen")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def poke(self) -> None:
        """Something was committed: read the tail now."""
        self._wake.set()

    # --- reading ---------------------------------------------------------------------------

    @property
    def head(self) -> int:
        with self._cond:
            return self._head

    @property
    def floor(self) -> int:
        with self._cond:
            return self._floor

    def after(self, cursor: int) -> list[Change] | None:
        """Changes with sequence > ``cursor`` in the window; None if the window starts later."""
        with self._cond:
            return self._after_locked(cursor)

    def _after_locked(self, cursor: int) -> list[Change] | None:
        if cursor < self._floor:
            return None
        found: list[Change] = []
        for change in reversed(self._window):
            if change.sequence <= cursor:
                break
            found.append(change)
        found.reverse()
        return found

    def wait_after(self, cursor: int, timeout: float) -> list[Change] | None:
        """Like :meth:`after`, but waits up to ``timeout`` s for something new."""
        with self._cond:
            if self._head <= cursor and not self._stop.is_set():
                self._cond.wait_for(
                    lambda: self._head > cursor or self._stop.is_set(), timeout=timeout
                )
            return self._after_locked(cursor)

    # --- the tail ----------------------------------------------------------------------------

    def _append(self, changes: list[Change]) -> None:
        with self._cond:
            for change in changes:
                if change.sequence <= self._head:
                    continue
                self._window.append(change)
                self._head = change.sequence
            while len(self._window) > self.capacity:
                self._floor = self._window.popleft().sequence
            self._cond.notify_all()

    def read_tail(self) -> int:
        """Read every committed change past the head into the window; how many."""
        total = 0
        while not self._stop.is_set():
            with self.db.connection() as conn:
                changes, _upper = store.changes_after(conn, self.head, limit=self.batch)
            if changes:
                self._append(changes)
                total += len(changes)
                if self.on_changes is not None:
                    self.on_changes(changes)
            if len(changes) < self.batch:
                break
        return total

    def _tail_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.read_tail()
            except Exception:
                log.exception("reading the alert change tail failed; retrying")
                self._stop.wait(1.0)

    def _listen_loop(self) -> None:
        """Wake the tail on notifications from any process (other replicas included)."""
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.db.settings.dsn,
                    autocommit=True,
                    application_name=f"{self.db.application_name}-listen",
                    connect_timeout=5,
                ) as conn:
                    conn.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
                    self._wake.set()  # catch up on what happened while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._wake.set()
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("alert notification listener failed; reconnecting", exc_info=True)
                self._stop.wait(1.0)
