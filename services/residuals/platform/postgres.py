"""PostgreSQL connection pool shared by the services (psycopg 3 + psycopg_pool).

One pool per process, sized by ``DATABASE_POOL_MIN``/``DATABASE_POOL_MAX``. Connections
carry ``application_name`` = the service name, so ``pg_stat_activity`` and lock-wait
reports say which service holds a connection or a lock (the ledger writer's offset-row
locks, for instance). Connections are checked before being handed out, so a database
restart costs a reconnect, not a burst of failed transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from psycopg import Connection
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from residuals.platform.config import PostgresSettings

Pool = ConnectionPool[Connection[TupleRow]]


def make_pool(
    settings: PostgresSettings,
    *,
    application_name: str,
    open: bool = False,
    connect_timeout: float = 10.0,
) -> Pool:
    """A pool for ``settings.dsn``; not opened unless ``open`` (see :class:`Database`).

    Opening lazily lets a service build its objects before the database is reachable and
    decide itself how long to wait for it.
    """
    return ConnectionPool(
        conninfo=settings.dsn,
        min_size=settings.pool_min,
        max_size=max(settings.pool_max, settings.pool_min),
        kwargs={
            "application_name": application_name,
            "connect_timeout": max(1, round(connect_timeout)),
        },
        check=ConnectionPool.check_connection,
        name=application_name,
        open=open,
    )


class Database:
    """The process's pool with explicit open/close; also a context manager.

    >>> with Database(settings, application_name="ledger-writer").open() as db:
    ...     with db.connection() as conn:
    ...         conn.execute("SELECT 1")
    """

    def __init__(self, settings: PostgresSettings, *, application_name: str) -> None:
        self.settings = settings
        self.application_name = application_name
        self.pool: Pool = make_pool(settings, application_name=application_name)

    def open(self, *, wait: bool = True, timeout: float = 30.0) -> Database:
        """Open the pool; with ``wait``, block until ``pool_min`` connections exist.

        Raises ``psycopg_pool.PoolTimeout`` when the database is not reachable in time.
        """
        self.pool.open(wait=wait and self.settings.pool_min > 0, timeout=timeout)
        if wait and self.settings.pool_min == 0:
            self.check(timeout=timeout)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection (waiting up to ``timeout`` for borrowed ones)."""
        self.pool.close(timeout=timeout)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection[TupleRow]]:
        """Borrow a connection; the block is one transaction (commit on success).

        psycopg commits when the block exits normally and rolls back on an exception,
        then returns the connection to the pool.
        """
        with self.pool.connection(timeout=timeout) as conn:
            yield conn

    def connect(self, *, autocommit: bool = True) -> Connection[TupleRow]:
        """A connection of its own, outside the pool, with the pool's settings: for a
        hot read path that keeps one per thread and must not pay the pool's per-borrow
        check and a BEGIN/COMMIT per query."""
        return Connection.connect(
            self.settings.dsn,
            autocommit=autocommit,
            application_name=self.application_name,
            connect_timeout=10,
        )

    def check(self, timeout: float = 5.0) -> bool:
        """Round-trip ``SELECT 1`` (readiness probes); raises if the database is down."""
        with self.pool.connection(timeout=timeout) as conn:
            row = conn.execute("SELECT 1").fetchone()
        return row == (1,)

    def __enter__(self) -> Database:
        if self.pool.closed:
            self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
