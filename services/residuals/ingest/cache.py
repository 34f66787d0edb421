"""A small thread-safe LRU cache whose entries expire, for hot-path lookups.

Positive and negative answers get separate lifetimes: a missing signing key or licence is
re-checked soon (it may have just been registered), a present one is kept longer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """``get_or_load(key, loader)``: cached ``loader(key)`` results, ``None`` included."""

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_seconds: float,
        negative_ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self.negative_ttl_seconds = negative_ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: K, loader: Callable[[K], V | None]) -> V | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(key)
                return entry[1]
        value = loader(key)  # outside the lock: a slow query must not serialise callers
        ttl = self.ttl_seconds if value is not None else self.negative_ttl_seconds
        with self._lock:
            self._entries[key] = (now + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def invalidate(self, key: K | None = None) -> None:
        """Forget one entry, or all of them."""
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
