"""The meter's checks on faust's delivery: no hole in a partition, no partition left behind.

Why: :mod:`residuals.meter.continuity`. The remedy for both is the one the meter already
uses for a failed batch: end the process at once, without acknowledging anything past
what was rated, so the restarted meter (Kubernetes, or the tests' supervisor) reads again
from the group's last commit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from residuals.meter.continuity import Gap, OffsetContinuity, Stall, StallDetector
from residuals.meter.core import Record

log = logging.getLogger(__name__)


class Offsets(Protocol):
    """What the guards ask Kafka (:class:`residuals.platform.offset_probe.OffsetProbe`)."""

    def resume_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]: ...

    def positions(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]: ...

    def has_records(self, topic: str, partition: int, start: int, end: int) -> bool: ...


class InputGap(RuntimeError):
    """Records of a partition were skipped by the consumer: rating past them would lose
    them once the offsets after them are committed."""

    def __init__(self, gap: Gap) -> None:
        super().__init__(
            f"partition {gap.partition}: offsets {gap.expected}..{gap.seen - 1} were not "
            f"delivered (next record delivered: {gap.seen})"
        )
        self.gap = gap


class InputGuard:
    """Checks, before a batch is rated, that its records continue their partitions."""

    def __init__(self, offsets: Offsets, generation: Callable[[], int]) -> None:
        self.offsets = offsets
        self.generation = generation
        self.continuity = OffsetContinuity()

    async def check(self, records: Sequence[Record]) -> None:
        """Raise :class:`InputGap` at the first hole that holds records."""
        if not records:
            return
        topic = records[0].topic
        generation = self.generation()
        unknown = self.continuity.unknown(generation, (r.partition for r in records))
        if unknown:
            starts = await asyncio.to_thread(self.offsets.resume_offsets, topic, unknown)
            for partition in unknown:
                self.continuity.learn(partition, starts.get(partition))
            first: dict[int, int] = {}
            for r in records:
                if r.partition in starts:
                    first.setdefault(r.partition, r.offset)
            # Once per partition and assignment: where the group resumes, what came first.
            log.info(
                "input partitions resumed",
                extra={
                    "generation": generation,
                    "resume_offsets": {str(p): starts.get(p) for p in unknown},
                    "expected": {str(p): self.continuity.expected(p) for p in unknown},
                    "first_delivered": {str(p): o for p, o in first.items()},
                },
            )
        positions = [(r.partition, r.offset) for r in records]
        while (gap := self.continuity.scan(positions)) is not None:
            holds = await asyncio.to_thread(
                self.offsets.has_records, topic, gap.partition, gap.expected, gap.seen
            )
            if holds:
                raise InputGap(gap)
            log.info(
                "offsets without records skipped (transaction markers or compaction)",
                extra={"partition": gap.partition, "from": gap.expected, "to": gap.seen},
            )
            self.continuity.skip(gap)
            # Rescan from the record after the hole; earlier ones were already counted.
            at = next(
                i for i, (p, o) in enumerate(positions) if p == gap.partition and o == gap.seen
            )
            positions = positions[at:]


class StallWatch:
    """A thread that compares, every ``interval`` seconds, the committed offsets of the
    partitions this process is assigned with their high watermarks, and calls ``on_stall``
    when one has records waiting but has not moved for ``stall_after`` seconds.

    A thread, not a faust timer, so that it also notices an event loop that stopped.
    """

    def __init__(
        self,
        offsets: Offsets,
        topic: str,
        assigned: Callable[[], Sequence[int] | None],
        on_stall: Callable[[list[Stall]], None],
        *,
        stall_after: float,
        interval: float = 10.0,
    ) -> None:
        self.offsets = offsets
        self.topic = topic
        self.assigned = assigned
        self.on_stall = on_stall
        self.detector = StallDetector(stall_after)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter-stall-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> list[Stall]:
        """One look: the stalls found (none while rebalancing or restoring state)."""
        partitions = self.assigned()
        if partitions is None:
            self.detector.pause()
            return []
        try:
            positions = self.offsets.positions(self.topic, partitions)
        except Exception:  # broker unavailable: no verdict this time
            log.debug("stall check: positions unavailable", exc_info=True)
            return []
        stalls = self.detector.observe(time.monotonic(), positions)
        # Offsets without records (transaction markers) at the end keep a partition's
        # commit below its high watermark for good: not a stall.
        return [
            s
            for s in stalls
            if self.offsets.has_records(self.topic, s.partition, s.committed, s.high)
        ]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            stalls = self.check()
            if stalls:
                self.on_stall(stalls)
