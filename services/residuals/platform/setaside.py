"""Relays (PostgreSQL rows -> Kafka): a row Kafka will never accept is set aside, in order.

The licensing outbox relay and the payouts relay publish rows in id order. Most failures
are the broker's (unavailable, fenced, a sequence to resynchronise) and are retried. A few
condemn the *record* whatever is retried: larger than the topic's ``max.message.bytes``,
a payload that does not serialize. Retrying those blocks every later row forever, so
:func:`publish_in_order` finds the row at fault and sets it aside (quarantine row plus a
mark on the row, :func:`set_aside`), and publishes the others in their order.

Finding it takes bisection: the broker refuses a whole record batch (every record in it
gets ``MSG_SIZE_TOO_LARGE``), so a delivery error does not say which record was too big.
A failed send is split in halves, each published in turn (left first, so order holds),
down to the single row that fails alone. Only a row with poison costs more than one send.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from confluent_kafka import KafkaError
from psycopg import Connection, sql

from residuals.platform.quarantine import Quarantined, store

R = TypeVar("R")

#: librdkafka/broker errors that condemn the records of a send rather than the broker:
#: too large (record, batch or set), invalid record (e.g. no key on a compacted topic),
#: corrupt, or refused by the client before sending (an invalid argument).
PERMANENT_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError._INVALID_ARG,
    }
)
#: The partition recorded for a set-aside row: it never reached a partition (and -1 is
#: "any partition" to a producer, so a re-drive lets the partitioner place it by key).
NO_PARTITION = -1


def is_permanent(error: Any) -> bool:
    """True for a ``KafkaError`` that no retry of the same record can cure."""
    return error is not None and int(error.code()) in PERMANENT_CODES


class RecordRefused(Exception):
    """A send failed for a reason no retry cures; ``culprit`` is the index of the row at
    fault when it is known (a row refused before it was sent), else None (bisect)."""

    def __init__(self, error: str, culprit: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.culprit = culprit


def publish_in_order(
    rows: Sequence[R],
    send: Callable[[Sequence[R]], None],
    set_aside: Callable[[R, str], None],
) -> int:
    """``send`` the rows in order, setting aside each row Kafka refuses for good; returns
    how many were sent. ``send`` publishes a run of rows as a whole (and records them as
    published) or raises :class:`RecordRefused`; it retries or raises anything else."""
    if not rows:
        return 0
    try:
        send(rows)
        return len(rows)
    except RecordRefused as refused:
        if refused.culprit is not None:
            set_aside(rows[refused.culprit], refused.error)
            rest = [*rows[: refused.culprit], *rows[refused.culprit + 1 :]]
            return publish_in_order(rest, send, set_aside)
        if len(rows) == 1:
            set_aside(rows[0], refused.error)
            return 0
    middle = len(rows) // 2
    return publish_in_order(rows[:middle], send, set_aside) + publish_in_order(
        rows[middle:], send, set_aside
    )


def set_aside(
    conn: Connection[Any],
    *,
    consumer: str,
    table: str,
    id_column: str,
    row_id: int,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    error: str,
) -> None:
    """Quarantine a relay's row (the bytes it would have published, for the topic it was
    for) and mark it so the relay skips it, in one transaction."""
    with conn.transaction():
        store(
            conn,
            [
                Quarantined(
                    consumer=consumer,
                    topic=topic,
                    partition=NO_PARTITION,
                    offset=row_id,
                    key=key,
                    value=value,
                    error=error,
                    headers=tuple(headers),
                )
            ],
        )
        conn.execute(
            sql.SQL("UPDATE {} SET quarantined_at = clock_timestamp() WHERE {} = %s").format(
                sql.Identifier(table), sql.Identifier(id_column)
            ),
            (row_id,),
        )
