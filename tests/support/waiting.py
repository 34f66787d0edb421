"""Polling for a condition in tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    state: Callable[[], object] | None = None,
    *,
    every: float = 0.2,
) -> None:
    """Poll ``predicate`` every ``every`` seconds; on time-out, fail naming ``what`` (and
    ``state()``, if given)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            seen = f"; state: {state()}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        time.sleep(every)
