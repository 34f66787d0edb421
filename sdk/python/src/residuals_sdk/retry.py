"""Exponential backoff with jitter for re-sending events the transport could not deliver.

"Equal jitter": the n-th retry waits between half and all of ``min(cap, initial * 2^(n-1))``
seconds, so clients that failed together (a broker restart) do not retry in lock step, yet
no retry comes back almost at once. A server's own hint (gRPC RESOURCE_EXHAUSTED with
``retry-after``) raises the wait, never lowers it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before attempt ``n + 1`` after ``n`` failed attempts."""

    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")

    def ceiling(self, failures: int) -> float:
        """The un-jittered backoff after ``failures`` (>= 1) failed attempts."""
        exponent = max(0, failures - 1)
        # Cap the exponent: beyond ~60 doublings every policy is at max_backoff anyway.
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** min(exponent, 60))

    def delay(self, failures: int, at_least: float = 0.0) -> float:
        """Seconds to wait: equal jitter over :meth:`ceiling`, and never below ``at_least``."""
        ceiling = self.ceiling(failures)
        return max(at_least, ceiling / 2 + self.rng.uniform(0, ceiling / 2))
