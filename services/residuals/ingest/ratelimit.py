"""Per-vendor token buckets: each vendor may publish ``rate`` events/s, bursts up to ``burst``.

A batch takes as many tokens as it has events, all or nothing, so a refused batch can be
retried whole after :attr:`Decision.retry_after` seconds (sent to the client as gRPC
RESOURCE_EXHAUSTED with RetryInfo and a ``retry-after`` trailer). Buckets of vendors that
went quiet are dropped (a full bucket holds no information).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: Seconds until the request could be allowed (0 when allowed).
    retry_after: float = 0.0


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class VendorRateLimiter:
    """Thread-safe token buckets keyed by vendor id."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_idle_buckets: int = 10_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._max_idle = max_idle_buckets

    def _refill(self, vendor_id: str, now: float) -> _Bucket:
        bucket = self._buckets.get(vendor_id)
        if bucket is None:
            if len(self._buckets) >= self._max_idle:
                self._forget_full(now)
            bucket = self._buckets[vendor_id] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket

    def _forget_full(self, now: float) -> None:
        for vendor, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst:
                del self._buckets[vendor]

    def acquire(self, vendor_id: str, tokens: int) -> Decision:
        """Take ``tokens`` now if the bucket has them; else say how long to wait."""
        if tokens <= 0:
            return Decision(True)
        with self._lock:
            now = self._clock()
            bucket = self._refill(vendor_id, now)
            if tokens > self.burst:
                # Can never fit; the caller must send smaller batches.
                return Decision(False, float("inf"))
            if bucket.tokens >= tokens:
                bucket.tokens -= tokens
                return Decision(True)
            return Decision(False, (tokens - bucket.tokens) / self.rate)

    def wait(self, vendor_id: str, tokens: int, max_wait: float) -> Decision:
        """Block until ``tokens`` are available, up to ``max_wait`` seconds (streams)."""
        deadline = self._clock() + max_wait
        while True:
            decision = self.acquire(vendor_id, tokens)
            if decision.allowed:
                return decision
            remaining = deadline - self._clock()
            if decision.retry_after > remaining:
                return decision
            time.sleep(min(decision.retry_after, max(remaining, 0.0)) + 0.001)
