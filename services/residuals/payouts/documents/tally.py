"""Where a part's usage happened, aggregated from the rules' ratings as they are made.

The period close rates every use by the rules (:func:`residuals.domain.statement.
compute_statement`); its ``on_rated`` hook hands each licence's ratings over once, in scope
order. :class:`UsageTally` is that hook: it folds them into sums by cell (licence x kind x
territory x channel), by held line, by day and by misuse, and keeps nothing per use but the
most recent misuse, so a payee with a million uses costs the sums, not the ratings.

Amounts stay exact (unrounded :class:`~decimal.Decimal`, in the money context); the
document rounds each cell once, like a statement line. Pure: no I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext

from residuals.domain.licences import Licence
from residuals.domain.metering import Rating
from residuals.domain.money import MONEY_CONTEXT, ZERO
from residuals.domain.period import Period
from residuals.domain.statement import unreported_renders
from residuals.domain.vocabulary import Violation

#: Misuse listed use by use in a document; older ones are summed per violation and vendor.
MISUSE_LIMIT = 200

CellKey = tuple[str, str, str, str]  # licence id, kind, territory, channel ('' for renders)


@dataclass(slots=True)
class Sums:
    """Billed and held units and exact amounts of one cell, day or held line."""

    units: int = 0
    amount: Decimal = ZERO
    held_units: int = 0
    held_amount: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Misuse:
    """One use that broke the licence (held, or flagged like an alert-only quota excess)."""

    occurred_at: datetime
    licence_id: str
    vendor_id: str
    event_id: str
    kind: str
    category: str
    territory: str
    channel: str
    violation: Violation
    held_units: int
    held_amount: Decimal


@dataclass(slots=True)
class MisuseSum:
    uses: int = 0
    units: int = 0
    amount: Decimal = ZERO


class UsageTally:
    """The ``on_rated`` hook that sums a part's ratings (see the module docstring).

    Only ``licence_ids`` are counted: the close also rates licences whose rows merely
    decide an identity the part's rows share, and those are not the payee's."""

    def __init__(
        self, period: Period, licence_ids: Iterable[str], *, misuse_limit: int = MISUSE_LIMIT
    ) -> None:
        self.period = period
        self.licence_ids = frozenset(licence_ids)
        self.misuse_limit = misuse_limit
        self.currencies: dict[str, str] = {}
        self.cells: dict[CellKey, Sums] = {}
        #: (licence id, violation, kind) -> held units, exact amount and uses.
        self.held: dict[tuple[str, Violation, str], MisuseSum] = {}
        #: (day index in the period, kind) -> units billed and held.
        self.usage_by_day: dict[tuple[int, str], Sums] = {}
        #: (day index, currency) -> amounts billed and held.
        self.earnings_by_day: dict[tuple[int, str], Sums] = {}
        #: Every misuse, summed by (violation, vendor, currency).
        self.misuse_totals: dict[tuple[Violation, str, str], MisuseSum] = {}
        self.unreported_renders: dict[str, int] = {}
        self.rated_licences: set[str] = set()
        self._recent: list[tuple[datetime, str, str, int, Misuse]] = []
        self._order = itertools.count()
        self._start = period.start

    def __call__(self, licence: Licence, ratings: Sequence[Rating]) -> None:
        if licence.licence_id not in self.licence_ids:
            return
        with localcontext(MONEY_CONTEXT):
            self._add(licence, ratings)

    def _add(self, licence: Licence, ratings: Sequence[Rating]) -> None:
        licence_id, currency = licence.licence_id, licence.currency
        self.currencies[licence_id] = currency
        self.rated_licences.add(licence_id)
        self.unreported_renders[licence_id] = unreported_renders(ratings)
        cells, by_day, earnings = self.cells, self.usage_by_day, self.earnings_by_day
        start = self._start
        for rating in ratings:
            if rating.excluded is not None or not (rating.portions or rating.violations):
                continue
            event = rating.event
            kind = event.kind.value
            day = (event.occurred_at - start).days
            cell_key = (licence_id, kind, event.territory or "", event.channel or "")
            cell = cells.get(cell_key)
            if cell is None:
                cell = cells[cell_key] = Sums()
            used = by_day.get((day, kind))
            if used is None:
                used = by_day[(day, kind)] = Sums()
            money = earnings.get((day, currency))
            if money is None:
                money = earnings[(day, currency)] = Sums()
            held_units, held_amount, held_violation = 0, ZERO, None
            for p in rating.portions:
                if p.violation is None:
                    cell.units += p.units
                    cell.amount += p.amount
                    used.units += p.units
                    money.amount += p.amount
                    continue
                held_units += p.units
                held_amount += p.amount
                held_violation = p.violation
                line = self.held.get((licence_id, p.violation, kind))
                if line is None:
                    line = self.held[(licence_id, p.violation, kind)] = MisuseSum()
                line.uses += 1
                line.units += p.units
                line.amount += p.amount
            if held_units:
                cell.held_units += held_units
                cell.held_amount += held_amount
                used.held_units += held_units
                money.held_amount += held_amount
            violation = held_violation or _flagged(rating.violations)
            if violation is not None:
                self._misuse(
                    Misuse(
                        occurred_at=event.occurred_at,
                        licence_id=licence_id,
                        vendor_id=event.vendor_id,
                        event_id=event.event_id,
                        kind=kind,
                        category=event.category or "",
                        territory=event.territory or "",
                        channel=event.channel or "",
                        violation=violation,
                        held_units=held_units,
                        held_amount=held_amount,
                    ),
                    currency,
                )

    def _misuse(self, use: Misuse, currency: str) -> None:
        key = (use.violation, use.vendor_id, currency)
        total = self.misuse_totals.get(key)
        if total is None:
            total = self.misuse_totals[key] = MisuseSum()
        total.uses += 1
        total.units += use.held_units
        total.amount += use.held_amount
        entry = (use.occurred_at, use.event_id, use.licence_id, next(self._order), use)
        if len(self._recent) < self.misuse_limit:
            heapq.heappush(self._recent, entry)
        elif self.misuse_limit:
            heapq.heappushpop(self._recent, entry)

    def recent_misuse(self) -> list[Misuse]:
        """The most recent misuse (at most ``misuse_limit``), newest first."""
        return [entry[-1] for entry in sorted(self._recent, reverse=True)]


def _flagged(violations: Sequence[Violation]) -> Violation | None:
    """A violation that flags a billed use as misuse (QUOTA_NEAR is only a notice)."""
    for violation in violations:
        if violation is not Violation.QUOTA_NEAR:
            return violation
    return None
