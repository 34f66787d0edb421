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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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

_ADVANCE = """
UPDATE consumer_offsets SET next_offset = %s, updated_at = now()
WHERE group_id = %s AND topic = %s AND partition = %s AND next_offset <= %s
"""


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

    def advance(self, conn: Connection[Any], topic: str, positions: Mapping[int, int]) -> None:
        """Move each partition's next offset forward to ``positions[p]`` (never back)."""
        for partition, next_offset in sorted(positions.items()):
            conn.execute(_ADVANCE, (next_offset, self.group_id, topic, partition, next_offset))
