"""faust's changelog recovery never hands aiokafka a negative offset (a worker crash)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from faust.types import TP

from residuals.platform.faust_app import seek_negative_offsets_from_start

pytestmark = pytest.mark.unit


class Consumer:
    def __init__(self) -> None:
        self.seeks: dict[TP, int] = {}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        if any(offset < 0 for offset in offsets.values()):
            raise ValueError("Offset must be a positive integer")  # what aiokafka does
        self.seeks.update(offsets)


def test_every_negative_offset_restores_from_the_start() -> None:
    seek_negative_offsets_from_start()
    seek_negative_offsets_from_start()  # applying it twice changes nothing
    a, b, c = (TP("meter-state-changelog", n) for n in range(3))
    consumer = Consumer()
    offsets: Counter[TP] = Counter({a: -2, b: -1, c: 7302})
    recovery: Any = object.__new__(Recovery)
    asyncio.run(Recovery._seek_offsets(recovery, consumer, {a, b, c}, offsets, "standby"))
    assert consumer.seeks == {a: 0, b: 0, c: 7302}
    assert offsets == Counter({a: -2, b: -1, c: 7302})  # the caller's counter untouched
