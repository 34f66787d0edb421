"""Every input record is rated, and rated soon: holes and stalls in the meter's input.

faust treats an offset that jumps forward as a *gap*: offsets it believes hold nothing
(compaction, transaction markers). It records the gap and later commits past it. A record
it failed to hand to the agent (a fetch that raced a rebalance, a partition paused with
records in flight) produces exactly the same jump, so that record would be committed
without ever being rated: lost, silently. And when no later record arrives, the missing
ones are never delivered at all: the partition stalls with lag, also silently.

:class:`OffsetContinuity` checks that each partition's records arrive without holes, from
the consumer group's committed offset at every new assignment; the app stops the process
on a hole Kafka says holds records, before anything past it is acknowledged, so a restart
reads them again. :class:`StallDetector` notices a partition whose committed offset stays
behind its high watermark for too long, for the same remedy. Both are pure bookkeeping:
positions in, verdicts out; the app supplies the offsets (:mod:`residuals.meter.app`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """Offsets ``expected`` up to (excluding) ``seen`` of ``partition`` never arrived."""

    partition: int
    expected: int
    seen: int


class OffsetContinuity:
    """The next offset each partition's records must continue from, per assignment."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._known: set[int] = set()
        self._next: dict[int, int] = {}

    def unknown(self, generation: int, partitions: Iterable[int]) -> list[int]:
        """Partitions whose starting point in ``generation`` must be looked up first: all
        of them after a rebalance (the partition may have been rated elsewhere since)."""
        if generation != self._generation:
            self._generation = generation
            self._known.clear()
        return sorted(p for p in set(partitions) if p not in self._known)

    def learn(self, partition: int, committed: int | None) -> None:
        """Where the group resumes ``partition``: its committed offset, or the log start
        when nothing is committed yet (``None``: unknown, the first record sets the start).
        What this process itself rated beyond it stays expected: faust may deliver those
        again, never skip them."""
        self._known.add(partition)
        if committed is not None:
            self._next[partition] = max(committed, self._next.get(partition, committed))

    def expected(self, partition: int) -> int | None:
        return self._next.get(partition)

    def scan(self, positions: Iterable[tuple[int, int]]) -> Gap | None:
        """Advance over ``(partition, offset)`` in delivery order; stop at the first hole
        (not advancing past it). Offsets below the expected one are deliveries again."""
        following = self._next
        for partition, offset in positions:
            expected = following.get(partition)
            if expected is not None and offset > expected:
                return Gap(partition, expected, offset)
            if expected is None or offset >= expected:
                following[partition] = offset + 1
        return None

    def skip(self, gap: Gap) -> None:
        """Accept a hole that holds no records (transaction markers, compaction)."""
        self._next[gap.partition] = gap.seen


@dataclass(frozen=True)
class Stall:
    partition: int
    committed: int
    high: int
    seconds: float


class StallDetector:
    """Partitions whose committed offset has not moved for ``stall_after`` seconds while
    records wait behind it."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._since: dict[int, tuple[int, float]] = {}

    def observe(self, now: float, positions: Mapping[int, tuple[int, int]]) -> list[Stall]:
        """``positions``: partition -> (committed offset, high watermark), the partitions
        this process is assigned now."""
        stalls = []
        for partition in set(self._since) - set(positions):
            del self._since[partition]
        for partition, (committed, high) in sorted(positions.items()):
            if committed >= high:
                self._since.pop(partition, None)
                continue
            seen = self._since.get(partition)
            if seen is None or seen[0] != committed:
                self._since[partition] = (committed, now)
            elif now - seen[1] >= self.stall_after:
                stalls.append(Stall(partition, committed, high, now - seen[1]))
        return stalls

    def pause(self) -> None:
        """Rebalancing or restoring state: no partition is expected to move; start over."""
        self._since.clear()
