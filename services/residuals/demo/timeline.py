"""Where the demo's simulated month sits in real time (pure).

The pipeline judges every event against real receive times: over Kafka the receive time is
the broker's timestamp, and an event that occurred more than 35 days before it is
``TOO_LATE`` (docs/ROYALTY-RULES.md §2). So the demo cannot replay a fixed calendar month; it
replays a *window* of the recent past that lies inside one statement period:

* the current month so far, or the part of last month still inside the replay window,
  whichever is longer (at least ~17 days either way), capped at :data:`CANONICAL_MONTH`;
* every scripted instant is an offset into a canonical 30-day month, scaled onto that
  window with integer arithmetic, so the *order* of instants never depends on when the
  demo runs. Nothing in a statement depends on absolute times except through that order
  (suspension and revocation instants are scaled too; durations the rules know, like
  wind-down days, are chosen longer than any window), so the same seed gives the same
  statement whatever the window, as long as the period is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from residuals.domain.period import Period

CANONICAL_MONTH = timedelta(days=30)
CANONICAL_SECONDS = int(CANONICAL_MONTH.total_seconds())
DAY = 86_400

#: The newest simulated instant stays this far behind "now" (nothing is in the future).
END_MARGIN = timedelta(minutes=10)
#: The oldest simulated instant is at most this old when the demo starts: the 35-day
#: replay window (TOO_LATE) minus a day of headroom for a long demo.
REPLAY_HORIZON = timedelta(days=34)
MINIMUM_WINDOW = timedelta(days=2)


class WindowError(ValueError):
    """No usable window (cannot happen with a correct clock; reported, never guessed)."""


@dataclass(frozen=True)
class Window:
    """``[start, end)`` inside ``period``; canonical offsets map linearly onto it."""

    period: Period
    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def at(self, offset: int) -> datetime:
        """The real instant of canonical offset ``offset`` (seconds into the 30-day month).

        Integer microseconds and floor division: monotone in ``offset``, so the relative
        order of scripted instants is the same for every window.
        """
        if not 0 <= offset <= CANONICAL_SECONDS:
            raise ValueError(f"offset {offset} outside the canonical month")
        span_us = self.length // timedelta(microseconds=1)
        return self.start + timedelta(microseconds=offset * span_us // CANONICAL_SECONDS)

    def canonical_day(self, t: datetime) -> float:
        """Where ``t`` falls in the canonical month, in days (for the live view)."""
        fraction = (t - self.start) / self.length
        return max(0.0, min(1.0, fraction)) * CANONICAL_SECONDS / DAY


def choose_window(now: datetime) -> Window:
    """The longest single-period stretch of the recent past that the pipeline accepts."""
    now = now.astimezone(UTC)
    latest = now - END_MARGIN
    earliest = now - REPLAY_HORIZON
    current = Period.containing(latest)
    previous = Period.containing(current.start - timedelta(microseconds=1))
    candidates = [
        (max(current.start, earliest), latest, current),
        (max(previous.start, earliest), min(previous.end, latest), previous),
    ]
    start, end, period = max(candidates, key=lambda c: c[1] - c[0])
    if end - start < MINIMUM_WINDOW:
        raise WindowError(f"no window of {MINIMUM_WINDOW} inside one period before {now}")
    if end - start > CANONICAL_MONTH:
        if period == current:
            end = start + CANONICAL_MONTH
        else:
            start = end - CANONICAL_MONTH
    return Window(period, start, end)
