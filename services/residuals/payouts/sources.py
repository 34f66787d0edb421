"""Where a period close reads its inputs: stored licence versions and stored events.

The payouts service owns neither: licences live in the licensing service's tables and
usage events in the ledger writer's. These protocols are what the close needs from them,
so the close, the reconciliation and the tests depend on one narrow interface and the
adapters over the other services' stores stay thin (:mod:`residuals.payouts.adapters`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from psycopg import Connection
from psycopg.rows import TupleRow

from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.period import Period

Conn = Connection[TupleRow]


@dataclass(frozen=True)
class PeriodEvents:
    """A period's stored events in arrival order, up to an arrival position.

    ``cutoff`` is the arrival position (a monotonically increasing integer chosen by the
    store) of the last event the statement may see; recomputing with the same cutoff gives
    the same events, which is what makes a closed statement reproducible.
    """

    events: Sequence[UsageEvent | Rejection]
    cutoff: int


@dataclass(frozen=True)
class EventAccounting:
    """What the ledger writer's tables say happened to a period's events (reconcile).

    ``accepted`` counts events the pipeline took in for the period; the other fields say
    where each went. ``accepted == ledgered + held + dead + duplicates`` must hold.
    """

    accepted: int
    ledgered: int
    held: int
    dead: int
    duplicates: int
    detail: Mapping[str, int] = field(default_factory=dict)


class EventSource(Protocol):
    def period_events(self, conn: Conn, period: Period, up_to: int | None = None) -> PeriodEvents:
        """Events whose ``occurred_at`` is in ``period``, arrival order, positions <= up_to."""
        ...

    def late_periods(self, conn: Conn, cutoffs: Mapping[str, int]) -> list[str]:
        """Of the given closed periods, those with events that arrived after their cutoff."""
        ...

    def accounting(self, conn: Conn, period: Period) -> EventAccounting:
        """Counts for the accepted = ledgered + held + dead + duplicates check."""
        ...


class LicenceSource(Protocol):
    def licences(self, conn: Conn) -> list[Licence]:
        """Every licence with all its stored versions and suspension windows."""
        ...


@dataclass(frozen=True)
class Sources:
    events: EventSource
    licences: LicenceSource
