"""Statement periods: calendar months in UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
#: Labels by (year, month), made once each: at most 12 x 9,999 of them.
_LABELS: dict[tuple[int, int], str] = {}


@dataclass(frozen=True, order=True, slots=True)
class Period:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.match(str(text).strip())
        if not match:
            raise ValueError(f"period {text!r} is not YYYY-MM")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, t: datetime) -> Period:
        t = t.astimezone(UTC)
        return cls(t.year, t.month)

    @staticmethod
    def label(t: datetime) -> str:
        """``str(Period.containing(t))`` without making the period (the meter needs the
        label of every event's period, and nothing else of it)."""
        t = t.astimezone(UTC)
        key = (t.year, t.month)
        label = _LABELS.get(key)
        if label is None:
            label = _LABELS[key] = str(Period(t.year, t.month))
        return label

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive end: the first instant of the next period."""
        return self.next().start

    @property
    def last_instant(self) -> datetime:
        return self.end - timedelta(microseconds=1)

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def contains(self, t: datetime) -> bool:
        return self.start <= t < self.end
