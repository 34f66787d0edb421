"""The state CheckUse reads, kept in memory and dropped as PostgreSQL reports changes.

At a thousand checks a second the state query's round trip was a third of the check's CPU
(service and PostgreSQL; BENCHMARKS.md, "Pre-flight CheckUse"), so a check first looks
here: per licence its revision and tenants, the quota used per period and kind, and the
renders of the approvals named with it; per approval its row. A miss runs the query and
stores its answer.

Freshness comes from PostgreSQL, not from a timer: migration 0020's triggers NOTIFY, at
commit, the licences whose licence row or running totals changed and the approvals that
changed, and this cache drops them. A dedicated connection LISTENs; every check first
drains what has reached its socket (a non-blocking read), and a thread drains it while no
checks come. So a check sees every change whose notification arrived before it: within
about a millisecond of the commit, the ledger itself being a batch behind the meter.

A fill must not store a state older than a drop it raced with: each drop takes a number
from one sequence, and a query's answer is stored only if nothing it contains was dropped
after the query began. While the listening connection is down, nothing is read from or
stored in the cache (every check runs the query), and it starts empty when it comes back.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq

log = logging.getLogger(__name__)

LICENCES_CHANNEL = "residuals_preflight_licences"
APPROVALS_CHANNEL = "residuals_preflight_approvals"
SYNC_CHANNEL = "residuals_preflight_sync"
EVERYTHING = "*"
#: Licences kept (each a few hundred bytes with its periods and approvals).
DEFAULT_LICENCES = 20_000
#: Periods and kinds, and approvals, kept per licence: a caller choosing times and approval
#: ids at will must not grow one licence's entry without bound.
PER_LICENCE = 32
#: How long the thread waits on the socket between checks of its stop flag.
POLL_SECONDS = 1.0
RECONNECT_SECONDS = 1.0

#: The state row of ``preflight._STATE_SQL``: licence (3), approval (6), quota, renders.
Row = tuple[Any, ...]
_NO_APPROVAL: tuple[Any, ...] = (None,) * 6


class _Licence:
    """What is known of one licence: its row, its quota used and its approvals' renders."""

    __slots__ = ("meta", "quota", "renders")

    def __init__(self, meta: tuple[Any, ...]) -> None:
        self.meta = meta
        self.quota: dict[tuple[str, str], Any] = {}
        self.renders: dict[str, Any] = {}


class StateCache:
    """Thread-safe; :meth:`start` it before use and :meth:`close` it when done."""

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], *, licences: int = DEFAULT_LICENCES
    ) -> None:
        self._connect = connect
        self.capacity = licences
        self._lock = threading.Lock()
        self._licences: OrderedDict[str, _Licence] = OrderedDict()
        self._approvals: dict[str, tuple[Any, ...]] = {}
        #: Sequence number of the last drop of each licence/approval, and below which
        #: every fill is refused (a drop of everything, or forgotten drop numbers).
        self._seq = 0
        self._floor = 0
        self._dropped_licences: dict[str, int] = {}
        self._dropped_approvals: dict[str, int] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._synced: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hits = 0
        self.misses = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> StateCache:
        self._listen()
        self._thread = threading.Thread(target=self._run, name="preflight-cache", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL_SECONDS + 1)
        with self._lock:
            self._lost()

    @property
    def live(self) -> bool:
        return self._conn is not None

    def _listen(self) -> None:
        """Connect and LISTEN; the cache starts empty (nothing was heard while down)."""
        try:
            conn = self._connect()
            for channel in (LICENCES_CHANNEL, APPROVALS_CHANNEL, SYNC_CHANNEL):
                conn.execute(f"LISTEN {channel}")
        except psycopg.Error as error:
            log.warning("pre-flight cache cannot listen: %s", error)
            return
        with self._lock:
            self._drop_everything()
            self._conn = conn

    def _lost(self) -> None:
        """The listening connection is gone (lock held): forget everything, read through."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._drop_everything()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = self._conn
            if conn is None:
                self._stop.wait(RECONNECT_SECONDS)
                self._listen()
                continue
            # Closed meanwhile (an error here): the drain below notices.
            with contextlib.suppress(OSError, ValueError, psycopg.OperationalError):
                select.select([conn.pgconn.socket], [], [], POLL_SECONDS)
            with self._lock:
                self._drain()

    # --- reads and fills ---------------------------------------------------------------------

    def ticket(self) -> int:
        """Taken before a query whose answer will be :meth:`store`-d."""
        return self._seq

    def get(self, licence_id: str, approval_id: str, period: str, kind: str) -> Row | None:
        """The state row as the query would answer it now, or None (run the query)."""
        with self._lock:
            self._drain()
            known = self._licences.get(licence_id)
            if known is None:
                self.misses += 1
                return None
            quota = known.quota.get((period, kind), _ABSENT)
            approval = self._approvals.get(approval_id) if approval_id else _NO_APPROVAL
            renders = known.renders.get(approval_id, _ABSENT) if approval_id else 0
            if quota is _ABSENT or approval is None or renders is _ABSENT:
                self.misses += 1
                return None
            self._licences.move_to_end(licence_id)
            self.hits += 1
        return (*known.meta, *approval, quota, renders)

    def store(
        self, ticket: int, licence_id: str, approval_id: str, period: str, kind: str, row: Row
    ) -> None:
        """Keep a query's answer, unless something in it was dropped since ``ticket``."""
        if row[0] is None:
            return  # no such licence: not kept (a caller could fill memory with made-up ids)
        with self._lock:
            if self._conn is None or ticket < self._floor:
                return
            if self._dropped_licences.get(licence_id, -1) > ticket:
                return
            if approval_id and self._dropped_approvals.get(approval_id, -1) > ticket:
                return
            known = self._licences.get(licence_id)
            if known is None or known.meta != tuple(row[0:3]):
                known = self._licences[licence_id] = _Licence(tuple(row[0:3]))
            if len(known.quota) >= PER_LICENCE:
                known.quota.clear()
            known.quota[(period, kind)] = row[9]
            if approval_id and row[3] is not None:  # unknown approval ids are not kept
                if len(known.renders) >= PER_LICENCE:
                    known.renders.clear()
                known.renders[approval_id] = row[10]
                self._approvals[approval_id] = tuple(row[3:9])
            self._licences.move_to_end(licence_id)
            while len(self._licences) > self.capacity:
                self._licences.popitem(last=False)
            if len(self._approvals) > 4 * self.capacity:
                self._approvals.clear()

    # --- drops -------------------------------------------------------------------------------

    def forget_licence(self, licence_id: str) -> None:
        """Drop a licence now (a change this process just committed)."""
        with self._lock:
            self._drop_licence(licence_id)

    def forget_approval(self, approval_id: str) -> None:
        with self._lock:
            self._drop_approval(approval_id)

    def sync(self, timeout: float = 10.0) -> None:
        """Return once every change committed before this call has been dropped: a
        notification sent now arrives after those of every earlier commit."""
        token = uuid.uuid4().hex
        with self._connect() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (SYNC_CHANNEL, token))
        waited = threading.Event()
        for _ in range(int(timeout / 0.01)):
            with self._lock:
                self._drain()
                if token in self._synced or self._conn is None:
                    self._synced.discard(token)
                    return
            waited.wait(0.01)
        raise TimeoutError(f"the pre-flight cache heard no notification in {timeout} s")

    def _drain(self) -> None:
        """Apply what has reached the listening socket, without waiting (lock held)."""
        conn = self._conn
        if conn is None:
            return
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as error:
            log.warning("pre-flight cache lost its connection: %s", error)
            self._lost()
            return
        if pgconn.status != pq.ConnStatus.OK:
            log.warning("pre-flight cache lost its connection")
            self._lost()
            return
        while (notice := pgconn.notifies()) is not None:
            channel, payload = notice.relname.decode(), notice.extra.decode()
            if channel == SYNC_CHANNEL:
                self._synced.add(payload)
                continue
            if payload == EVERYTHING:
                self._drop_everything()
                continue
            drop = self._drop_licence if channel == LICENCES_CHANNEL else self._drop_approval
            for key in payload.split("\n"):
                drop(key)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _drop_licence(self, licence_id: str) -> None:
        self._licences.pop(licence_id, None)
        self._dropped_licences[licence_id] = self._next()
        if len(self._dropped_licences) > 4 * self.capacity:
            self._forget_drops()

    def _drop_approval(self, approval_id: str) -> None:
        self._approvals.pop(approval_id, None)
        self._dropped_approvals[approval_id] = self._next()
        if len(self._dropped_approvals) > 4 * self.capacity:
            self._forget_drops()

    def _forget_drops(self) -> None:
        """Bound the drop numbers kept: fills that began before now are refused instead."""
        self._dropped_licences.clear()
        self._dropped_approvals.clear()
        self._floor = self._next()

    def _drop_everything(self) -> None:
        self._licences.clear()
        self._approvals.clear()
        self._dropped_licences.clear()
        self._dropped_approvals.clear()
        self._floor = self._next()


_ABSENT: Any = object()
