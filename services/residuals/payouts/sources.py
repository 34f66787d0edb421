"""Where a period close reads its inputs: stored licence versions, approvals and events.

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

from residuals.domain.approvals import Approval
from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.licences import Licence
from residuals.domain.period import Period

Conn = Connection[TupleRow]


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
    #: Disagreements the source found between its rows and the rules (named, readable).
    problems: tuple[str, ...] = ()


class EventSource(Protocol):
    """The ledger writer's stored events, in its model of closed periods.

    Events of a period that arrive while it is open are the period's own; once the period
    is closed (:meth:`mark_closed`), a late use (or a retraction of one of its events) is
    recorded as an adjustment of the next open period instead, so a closed period's own
    events never change and its statement can be recomputed exactly, forever.
    """

    def mark_closed(self, conn: Conn, period: Period) -> None:
        """Record ``period`` as closed, in the caller's transaction, after every write that
        could still have counted as the period's own has committed (a fence)."""
        ...

    def period_events(
        self, conn: Conn, period: Period, through: Period | None = None
    ) -> Sequence[UsageEvent | Rejection]:
        """The period's events in arrival order: its own, plus (when ``through`` is given)
        the late ones recorded as adjustments of periods up to ``through``."""
        ...

    def part_events(
        self, conn: Conn, period: Period, licence_ids: Sequence[str]
    ) -> Sequence[UsageEvent | Rejection]:
        """The period's own events a part of its statement needs, in arrival order: those
        of ``licence_ids`` and the rows that decide their identities (which may name other
        licences); a superset is allowed."""
        ...

    def late_periods(self, conn: Conn, period: Period) -> list[str]:
        """Closed periods with uses recorded as adjustments of ``period``."""
        ...

    def accounting(self, conn: Conn, period: Period) -> EventAccounting:
        """Counts for the accepted = ledgered + held + dead + duplicates check."""
        ...


class LicenceSource(Protocol):
    def licences(self, conn: Conn) -> list[Licence]:
        """Every licence with all its stored versions and suspension windows."""
        ...


class ApprovalSource(Protocol):
    def approvals(self, conn: Conn, licence_ids: Sequence[str]) -> list[Approval]:
        """The approvals granted for ``licence_ids`` (§5a); pending and denied left out."""
        ...


@dataclass(frozen=True)
class Sources:
    events: EventSource
    licences: LicenceSource
    approvals: ApprovalSource
