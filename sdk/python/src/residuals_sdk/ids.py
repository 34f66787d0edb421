"""Client-side event ids: UUIDv7 (RFC 9562), time-ordered and unique without coordination.

An event's identity is ``(vendor_id, event_id)`` forever, so the id is fixed when the event
is created, before it is spooled or sent: every retry and every re-send after a restart
carries the same id, which is what lets the platform drop repeats.

Layout: 48-bit Unix milliseconds, version 7, a 12-bit sub-millisecond counter seeded at
random each millisecond ("method 1" of RFC 9562 §6.2, so ids from one process sort in
creation order even within a millisecond), the variant, and 62 random bits. If the counter
overflows, or the clock steps back, the timestamp is advanced past the last id issued so
ids stay strictly increasing within the process.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_COUNTER_MAX = 0xFFF


class UUIDv7Generator:
    """Strictly increasing UUIDv7 strings; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def _next_fields(self) -> tuple[int, int]:
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                # Seed below half the range so a burst within one millisecond has headroom.
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
            else:
                self._counter += 1
                if self._counter > _COUNTER_MAX:
                    self._last_ms += 1
                    self._counter = 0
            return self._last_ms, self._counter

    def new(self) -> uuid.UUID:
        """The next id as a :class:`uuid.UUID` (version 7, RFC 4122 variant)."""
        millis, counter = self._next_fields()
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (millis & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76
        value |= counter << 64
        value |= 0b10 << 62
        value |= rand_b
        return uuid.UUID(int=value)


_default = UUIDv7Generator()


def uuid7() -> str:
    """A new UUIDv7 in canonical text form, e.g. ``0192f1c3-7b2a-7c41-9d3e-5a1b2c3d4e5f``."""
    return str(_default.new())


def uuid7_millis(value: str) -> int:
    """The Unix millisecond timestamp inside a UUIDv7 string (for tests and debugging)."""
    parsed = uuid.UUID(value)
    if parsed.version != 7:
        raise ValueError(f"{value} is not a UUIDv7")
    return parsed.int >> 80
