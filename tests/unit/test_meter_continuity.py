"""The meter's checks on its input: holes in a partition's offsets, partitions that stall."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from residuals.meter.continuity import Gap, OffsetContinuity, Stall, StallDetector
from residuals.meter.core import Record
from residuals.meter.guards import InputGap, InputGuard, StallWatch


def continuity(generation: int = 1, **committed: int | None) -> OffsetContinuity:
    c = OffsetContinuity()
    partitions = [int(p.removeprefix("p")) for p in committed]
    assert c.unknown(generation, partitions) == sorted(partitions)
    for p, offset in committed.items():
        c.learn(int(p.removeprefix("p")), offset)
    return c


def test_records_that_continue_the_committed_offset_pass_and_advance_it() -> None:
    c = continuity(p0=10, p1=0)
    assert c.scan([(0, 10), (1, 0), (0, 11), (1, 1), (0, 12)]) is None
    assert c.expected(0) == 13 and c.expected(1) == 2


def test_a_hole_after_the_committed_offset_is_reported_where_it_starts() -> None:
    c = continuity(p0=10)
    assert c.scan([(0, 10), (0, 11), (0, 15), (0, 16)]) == Gap(0, 12, 15)
    assert c.expected(0) == 12  # not advanced past the hole


def test_the_first_record_after_an_assignment_must_be_the_committed_one() -> None:
    c = continuity(p3=500)
    assert c.scan([(3, 730)]) == Gap(3, 500, 730)


def test_records_delivered_again_below_the_expected_offset_are_not_holes() -> None:
    c = continuity(p0=10)
    assert c.scan([(0, 10), (0, 11)]) is None
    # faust re-delivers from an older commit after a rebalance in this same process
    assert c.unknown(2, [0]) == [0]
    c.learn(0, 8)
    assert c.expected(0) == 12  # what this process rated stays expected
    assert c.scan([(0, 8), (0, 9), (0, 10), (0, 11), (0, 12)]) is None
    assert c.expected(0) == 13


def test_a_new_generation_looks_every_partition_up_again() -> None:
    c = continuity(p0=0)
    assert c.unknown(1, [0, 1]) == [1]
    assert c.unknown(2, [0, 1]) == [0, 1]
    # another process rated partition 0 further while it was not ours
    c.learn(0, 900)
    assert c.scan([(0, 900)]) is None


def test_nothing_committed_yet_lets_the_first_record_set_the_start() -> None:
    c = continuity(p2=None)
    assert c.scan([(2, 40), (2, 41)]) is None
    assert c.scan([(2, 43)]) == Gap(2, 42, 43)


def test_an_accepted_hole_moves_the_expectation_to_the_record_after_it() -> None:
    c = continuity(p0=0)
    gap = c.scan([(0, 0), (0, 5)])
    assert gap == Gap(0, 1, 5)
    c.skip(gap)
    assert c.scan([(0, 5), (0, 6)]) is None


def test_a_partition_without_progress_and_with_records_waiting_stalls() -> None:
    d = StallDetector(stall_after=60)
    assert d.observe(0, {0: (10, 50), 1: (5, 5)}) == []
    assert d.observe(30, {0: (10, 50), 1: (5, 9)}) == []
    stalls = d.observe(61, {0: (10, 50), 1: (5, 9)})
    assert stalls == [Stall(0, 10, 50, 61)]
    # partition 1 waited only 31 s
    assert [s.partition for s in d.observe(95, {0: (10, 50), 1: (5, 9)})] == [0, 1]


def test_progress_caught_up_partitions_and_pauses_reset_the_clock() -> None:
    d = StallDetector(stall_after=60)
    d.observe(0, {0: (10, 50)})
    assert d.observe(59, {0: (11, 50)}) == []  # moved
    assert d.observe(100, {0: (11, 50)}) == []  # 41 s since it moved
    d.pause()  # rebalance
    assert d.observe(130, {0: (11, 50)}) == []
    assert d.observe(180, {0: (11, 50)}) == []
    assert d.observe(185, {0: (50, 50)}) == []  # caught up
    assert d.observe(300, {0: (50, 50)}) == []
    d.observe(301, {0: (50, 70)})
    assert d.observe(330, {}) == []  # no longer assigned: forgotten
    assert d.observe(400, {0: (50, 70)}) == []


class FakeOffsets:
    """Committed offsets (absent: nothing committed, the log starts at 0) and holes."""

    def __init__(self, committed: dict[int, int], holes_with_records: bool) -> None:
        self.committed_offsets = committed
        self.holes_with_records = holes_with_records
        self.asked: list[tuple[int, int, int]] = []
        self.lookups: list[list[int]] = []

    def resume_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        self.lookups.append(list(partitions))
        return {p: self.committed_offsets.get(p, 0) for p in partitions}

    def positions(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        return {p: (self.committed_offsets.get(p, 0), 100) for p in partitions}

    def has_records(self, topic: str, partition: int, start: int, end: int) -> bool:
        self.asked.append((partition, start, end))
        return self.holes_with_records


def records(*positions: tuple[int, int]) -> list[Record]:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    return [Record("usage", p, o, b"k", b"v", at) for p, o in positions]


def test_the_guard_stops_a_batch_at_a_hole_that_holds_records() -> None:
    offsets = FakeOffsets({0: 7, 1: 0}, holes_with_records=True)
    guard = InputGuard(offsets, lambda: 3)
    asyncio.run(guard.check(records((0, 7), (1, 0), (0, 8))))
    with pytest.raises(InputGap, match=r"partition 0: offsets 9\.\.11 were not delivered"):
        asyncio.run(guard.check(records((1, 1), (0, 12))))
    assert offsets.asked == [(0, 9, 12)]
    assert offsets.lookups == [[0, 1]]  # once per partition and generation


def test_the_guard_sees_a_hole_at_the_head_of_a_partition_nothing_was_committed_for() -> None:
    # faust resumes a partition without a commit from the log start; delivering a later
    # record first, and acknowledging it, would commit past everything before it.
    offsets = FakeOffsets({}, holes_with_records=True)
    guard = InputGuard(offsets, lambda: 1)
    with pytest.raises(InputGap, match=r"partition 0: offsets 0\.\.1633 were not delivered"):
        asyncio.run(guard.check(records((0, 1634), (0, 1635))))


def test_the_guard_lets_a_hole_without_records_through() -> None:
    offsets = FakeOffsets({0: 0}, holes_with_records=False)
    guard = InputGuard(offsets, lambda: 1)
    asyncio.run(guard.check(records((0, 0), (0, 1), (0, 3), (0, 4), (0, 9))))
    assert offsets.asked == [(0, 2, 3), (0, 5, 9)]
    assert guard.continuity.expected(0) == 10


def test_the_stall_watch_gives_no_verdict_while_rebalancing() -> None:
    offsets = FakeOffsets({0: 10}, holes_with_records=True)
    assigned: list[list[int] | None] = [[0]]
    found: list[list[Stall]] = []
    watch = StallWatch(offsets, "usage", lambda: assigned[0], found.append, stall_after=0.0)
    watch.check()
    assert [s.partition for s in watch.check()] == [0]
    assigned[0] = None
    assert watch.check() == []
    assigned[0] = [0]
    assert watch.check() == []  # the clock started again


def test_the_stall_watch_ignores_offsets_that_hold_no_records() -> None:
    offsets = FakeOffsets({0: 10}, holes_with_records=False)  # e.g. a transaction marker
    watch = StallWatch(offsets, "usage", lambda: [0], lambda _s: None, stall_after=0.0)
    watch.check()
    assert watch.check() == []
    assert offsets.asked == [(0, 10, 100)]
