"""Garbage-collector settings for processes that hold many long-lived objects.

CPython's cyclic collector walks every tracked object of a generation when it runs, and
runs a young collection every 700 allocations. Our data (events, licences, counters) has
no reference cycles, but there is a lot of it: a meter keeps a million decoded-licence
objects, a replay or a period close builds millions of event objects. Measured here: a
third of the meter's CPU per event (bench/meter_cpu.py) and of a replay's time went to
collections that found nothing to free.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Young collections every 100,000 allocations instead of 700; full ones rarely. Cycles
#: are still collected, just less often.
BULK_THRESHOLDS = (100_000, 50, 1000)


def freeze_long_lived() -> int:
    """Collect once, then exclude everything alive now from future collections (for data
    loaded at start and kept: the meter's licences). Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@contextmanager
def bulk_allocations() -> Iterator[None]:
    """Collect rarely while a batch job builds and folds millions of objects."""
    before = gc.get_threshold()
    gc.set_threshold(*BULK_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
