"""Kafka positions kept in PostgreSQL, in the same transaction as the rows they produced.

A sink that writes Kafka records into PostgreSQL (ledger writer, alerts service) stores,
per ``(group, topic, partition)``, the next offset to read in table ``consumer_offsets``
(migration 0001) inside the transaction that writes the records' rows. A crash between
the database commit and a Kafka commit then costs nothing: on assignment the consumer
seeks to the stored position, never to Kafka's.

Zombies: after a rebalance the old owner of a partition may still be finishing a batch.
:meth:`OffsetStore.claim` locks the partition rows (``FOR UPDATE``) and returns the stored
positions; the sink drops records below them (another worker already applied them) and
:meth:`OffsetStore.advance` only ever moves a position forward. Two workers holding the
same records therefore apply them once, whichever commits first.

Fencing (migration 0003 adds ``epoch`` and ``owner``): a worker that is assigned a
partition acquires it (:meth:`~OffsetStore.acquire`), which increments the row's epoch, and
:meth:`~OffsetStore.lock` returns the epoch with the position. A batch commits only while
the row still carries the epoch its worker acquired, so a worker that lost the partition
without noticing (a zombie: paused, partitioned away) cannot commit anything, not even
records beyond what the new owner has written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from psycopg import Connection

_ENSURE = """
INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
SELECT %s, %s, p, 0 FROM unnest(%s::integer[]) AS p
ON CONFLICT (group_id, topic, partition) DO NOTHING
"""

_LOCK = """
SELECT partition, next_offset FROM consumer_offsets
WHERE group_id = %s AND topic = %s AND partition = ANY(%s::integer[])
ORDER BY partition
FOR UPDATE
"""

_READ = """
SELECT partition, next_offset FROM consumer_offsets
WHERE group_id = %s AND topic = %s AND partition = ANY(%s::integer[])
"""

_ACQUIRE = """
INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, epoch, owner)
SELECT %s, %s, p, 0, 1, %s FROM unnest(%s::integer[]) AS p ORDER BY p
ON CONFLICT (group_id, topic, partition) DO UPDATE
SET epoch = consumer_offsets.epoch + 1, owner = EXCLUDED.owner, updated_at = now()
RETURNING partition, next_offset, epoch
"""

_LOCK_FENCED = """
SELECT partition, next_offset, epoch FROM consumer_offsets
WHERE group_id = %s AND topic = %s AND partition = ANY(%s::integer[])
ORDER BY partition
FOR UPDATE
"""

_ADVANCE = """
UPDATE consumer_offsets SET next_offset = %s, updated_at = now()
WHERE group_id = %s AND topic = %s AND partition = %s AND next_offset <= %s
"""


class Position(NamedTuple):
    """A partition's stored next offset and the epoch of its current owner."""

    next_offset: int
    epoch: int


class OffsetStore:
    """The stored positions of one consumer group (``group_id``)."""

    def __init__(self, group_id: str) -> None:
        if not group_id:
            raise ValueError("an offset store needs a group id")
        self.group_id = group_id

    def positions(
        self, conn: Connection[Any], topic: str, partitions: Iterable[int]
    ) -> dict[int, int]:
        """Stored next offsets (no lock): where to seek on assignment. Absent = never stored."""
        rows = conn.execute(_READ, (self.group_id, topic, sorted(set(partitions)))).fetchall()
        return {int(p): int(o) for p, o in rows}

    def claim(self, conn: Connection[Any], topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Lock the partitions' rows until the transaction ends; their next offsets.

        Rows are created at 0 when missing and locked in partition order, so two workers
        claiming overlapping partitions cannot deadlock.
        """
        wanted = sorted(set(partitions))
        conn.execute(_ENSURE, (self.group_id, topic, wanted))
        rows = conn.execute(_LOCK, (self.group_id, topic, wanted)).fetchall()
        return {int(p): int(o) for p, o in rows}

    def acquire(
        self, conn: Connection[Any], topic: str, partitions: Iterable[int], owner: str
    ) -> dict[int, Position]:
        """Take the partitions over: bump each row's epoch (created at offset 0 if missing).

        Waits for a batch the previous owner is committing (it holds the row locks), so the
        positions returned include it; every later batch of that owner is fenced.
        """
        wanted = sorted(set(partitions))
        rows = conn.execute(_ACQUIRE, (self.group_id, topic, owner, wanted)).fetchall()
        return {int(p): Position(int(o), int(e)) for p, o, e in rows}

    def lock(
        self, conn: Connection[Any], topic: str, partitions: Iterable[int]
    ) -> dict[int, Position]:
        """Lock the partitions' rows (partition order) until the transaction ends."""
        rows = conn.execute(
            _LOCK_FENCED, (self.group_id, topic, sorted(set(partitions)))
        ).fetchall()
        return {int(p): Position(int(o), int(e)) for p, o, e in rows}

    def advance(self, conn: Connection[Any], topic: str, positions: Mapping[int, int]) -> None:
        """Move each partition's next offset forward to ``positions[p]`` (never back)."""
        for partition, next_offset in sorted(positions.items()):
            conn.execute(_ADVANCE, (next_offset, self.group_id, topic, partition, next_offset))
