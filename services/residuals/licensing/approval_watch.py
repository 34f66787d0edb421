"""The resumable approval streams (WatchApprovalRequests, WatchApprovals).

Each stream reads ``approvals`` with ``sequence > cursor`` in sequence order, first the
backlog and then live changes. Sequences are taken under the outbox lock, so they follow
commit order and such a read never skips a change that commits later with a smaller
sequence. The cursor also moves over changes outside the caller's scope (up to the
highest sequence committed, read in the same statement), so a heartbeat's
``latest_sequence`` is a safe resume point: reconnecting with the last sequence seen
(approval or heartbeat) gives every matching change once, without gaps or repeats.

Live delivery: every stream has its own autocommit connection that LISTENs on the outbox
channel (every approval change enqueues a record, whose NOTIFY arrives at commit), and
re-reads at least every ``poll_seconds`` in case a notification is lost. Each read is at
most ``batch`` rows. The connection is closed when the client goes away (checked at every
wake-up) or the service stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg

from residuals.codecs.timestamps import set_timestamp
from residuals.licensing import access, approval_store
from residuals.licensing.approvals import Approvals
from residuals.licensing.store import OUTBOX_CHANNEL
from residuals.platform.auth import Principal
from residuals.platform.errors import InvalidArgument
from residuals.v1 import approvals_pb2, common_pb2

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 15
MAX_HEARTBEAT_SECONDS = 3600
#: Longest wait for a change without a notification.
POLL_SECONDS = 1.0
#: Rows per read at most.
BATCH = 500
MAX_SEQUENCE = 2**63 - 1

Item = approvals_pb2.Approval | common_pb2.Heartbeat


@dataclass(frozen=True)
class WatchRequest:
    """The fields both watch requests share."""

    licence_id: str
    after_sequence: int
    live_only: bool
    heartbeat_seconds: int
    pending_only: bool = False


class Stream:
    """One open stream: its scope, cursor and LISTEN connection (closed by :meth:`items`)."""

    def __init__(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        scope: approval_store.Scope,
        cursor: int,
        heartbeat: float,
        *,
        stop: threading.Event,
        poll_seconds: float,
        batch: int,
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.cursor = cursor
        self.heartbeat = heartbeat
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.batch = batch

    def items(self, is_active: Callable[[], bool]) -> Iterator[Item]:
        """Approvals after the cursor, then live ones, with heartbeats while idle; ends
        when ``is_active()`` turns false or the service stops."""
        last_sent = time.monotonic()
        try:
            while is_active() and not self.stop.is_set():
                rows, self.cursor = approval_store.changes_after(
                    self.conn, self.scope, self.cursor, self.batch
                )
                for row in rows:
                    yield approval_store.to_message(row)
                if rows:
                    last_sent = time.monotonic()
                    if len(rows) >= self.batch:
                        continue  # more backlog: read on before waiting
                idle = time.monotonic() - last_sent
                if idle >= self.heartbeat:
                    yield heartbeat(self.cursor)
                    last_sent, idle = time.monotonic(), 0.0
                wait = max(0.01, min(self.poll_seconds, self.heartbeat - idle))
                for _ in self.conn.notifies(timeout=wait, stop_after=1):
                    break
        finally:
            self.close()

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()


def heartbeat(cursor: int) -> common_pb2.Heartbeat:
    beat = common_pb2.Heartbeat(latest_sequence=cursor)
    set_timestamp(beat.server_time, datetime.now(UTC))
    return beat


class ApprovalWatch:
    """Opens streams for callers; ``stop`` (the service's) ends them all."""

    def __init__(
        self,
        approvals: Approvals,
        *,
        stop: threading.Event,
        poll_seconds: float = POLL_SECONDS,
        batch: int = BATCH,
    ) -> None:
        self.approvals = approvals
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.batch = batch

    def open(self, principal: Principal, request: WatchRequest, *, inbox: bool) -> Stream:
        """Check the caller and the request, and connect (errors before the first item).

        ``inbox``: WatchApprovalRequests, the talent's view (not for vendors)."""
        if inbox:
            access.require_inbox_reader(principal)
        scope = self.approvals.scope(principal, request.licence_id)
        if request.pending_only:
            scope = replace(scope, statuses=("pending",))
        if request.after_sequence > MAX_SEQUENCE:
            raise InvalidArgument.field(
                "after_sequence", f"is beyond the largest sequence ({MAX_SEQUENCE})"
            )
        if request.heartbeat_seconds > MAX_HEARTBEAT_SECONDS:
            raise InvalidArgument.field("heartbeat_seconds", f"is at most {MAX_HEARTBEAT_SECONDS}")
        heartbeat_seconds = request.heartbeat_seconds or DEFAULT_HEARTBEAT_SECONDS
        conn = psycopg.connect(
            self.approvals.db.settings.dsn, autocommit=True, application_name="approval-watch"
        )
        try:
            conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            cursor = approval_store.head(conn) if request.live_only else int(request.after_sequence)
        except BaseException:
            conn.close()
            raise
        return Stream(
            conn,
            scope,
            cursor,
            float(heartbeat_seconds),
            stop=self.stop,
            poll_seconds=self.poll_seconds,
            batch=self.batch,
        )
