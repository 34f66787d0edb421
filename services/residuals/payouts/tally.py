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
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any, TypeVar

from residuals.domain.licences import Licence
from residuals.domain.metering import Rating
from residuals.domain.money import MONEY_CONTEXT, ZERO
from residuals.domain.period import Period
from residuals.domain.statement import unreported_renders
from residuals.domain.vocabulary import Violation

K = TypeVar("K")

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
        self._recent: list[tuple[datetime, str, str, int, Misuse]] = []
        self._order = itertools.count()
        self._start = period.start

    def __call__(self, licence: Licence, ratings: Sequence[Rating]) -> None:
        if licence.licence_id not in self.licence_ids:
            return
        with localcontext(MONEY_CONTEXT):
            self._add(licence, ratings)

    def _add(self, licence: Licence, ratings: Sequence[Rating]) -> None:
        """One pass over the licence's ratings into per-(day, kind, territory, channel)
        sums, held lines, misuse totals and the latest misuse, then merged into the
        part's sums: one dictionary lookup per use, which matters at a million uses."""
        licence_id, currency = licence.licence_id, licence.currency
        self.currencies[licence_id] = currency
        self.unreported_renders[licence_id] = unreported_renders(ratings)
        start = self._start
        sums: dict[tuple[int, str, str | None, str | None], list[Any]] = {}
        held = self.held
        totals = self.misuse_totals
        latest: deque[tuple[Rating, int, Decimal, Violation]] = deque(maxlen=self.misuse_limit)
        for rating in ratings:
            portions, violations = rating.portions, rating.violations
            if rating.excluded is not None or not (portions or violations):
                continue
            event = rating.event
            kind = event.kind.value
            key = ((event.occurred_at - start).days, kind, event.territory, event.channel)
            slot = sums.get(key)
            if slot is None:
                slot = sums[key] = [0, ZERO, 0, ZERO]
            held_units, held_amount, violation = 0, ZERO, None
            for p in portions:
                if p.violation is None:
                    slot[0] += p.units
                    slot[1] += p.amount
                    continue
                violation = p.violation
                held_units += p.units
                held_amount += p.amount
                line = held.get((licence_id, violation, kind))
                if line is None:
                    line = held[(licence_id, violation, kind)] = MisuseSum()
                line.uses += 1
                line.units += p.units
                line.amount += p.amount
            if held_units:
                slot[2] += held_units
                slot[3] += held_amount
            if violation is None and violations:
                violation = _flagged(violations)
            if violation is None:
                continue
            total = totals.get((violation, event.vendor_id, currency))
            if total is None:
                total = totals[(violation, event.vendor_id, currency)] = MisuseSum()
            total.uses += 1
            total.units += held_units
            total.amount += held_amount
            latest.append((rating, held_units, held_amount, violation))  # scope order
        self._merge(licence_id, currency, sums)
        for rating, held_units, held_amount, violation in latest:
            self._keep(licence_id, rating, held_units, held_amount, violation)

    def _merge(
        self,
        licence_id: str,
        currency: str,
        sums: dict[tuple[int, str, str | None, str | None], list[Any]],
    ) -> None:
        for (day, kind, territory, channel), values in sums.items():
            _add_to(self.cells, (licence_id, kind, territory or "", channel or ""), values)
            _add_to(self.usage_by_day, (day, kind), values)
            _add_to(self.earnings_by_day, (day, currency), values)

    def _keep(
        self,
        licence_id: str,
        rating: Rating,
        held_units: int,
        held_amount: Decimal,
        violation: Violation,
    ) -> None:
        """Keep the use if it is among the ``misuse_limit`` most recent so far."""
        event = rating.event
        order = (event.occurred_at, event.event_id, licence_id)
        recent = self._recent
        if len(recent) >= self.misuse_limit and (not recent or order <= recent[0][:3]):
            return
        use = Misuse(
            occurred_at=event.occurred_at,
            licence_id=licence_id,
            vendor_id=event.vendor_id,
            event_id=event.event_id,
            kind=event.kind.value,
            category=event.category or "",
            territory=event.territory or "",
            channel=event.channel or "",
            violation=violation,
            held_units=held_units,
            held_amount=held_amount,
        )
        entry = (*order, next(self._order), use)
        if len(recent) < self.misuse_limit:
            heapq.heappush(recent, entry)
        else:
            heapq.heappushpop(recent, entry)

    def recent_misuse(self) -> list[Misuse]:
        """The most recent misuse (at most ``misuse_limit``), newest first."""
        return [entry[-1] for entry in sorted(self._recent, reverse=True)]


def _add_to(table: dict[K, Sums], key: K, values: Sequence[Any]) -> None:
    """Add (units, amount, held units, held amount) to ``table[key]``."""
    into = table.get(key)
    if into is None:
        into = table[key] = Sums()
    into.units += values[0]
    into.amount += values[1]
    into.held_units += values[2]
    into.held_amount += values[3]


def _flagged(violations: Sequence[Violation]) -> Violation | None:
    """A violation that flags a billed use as misuse (QUOTA_NEAR is only a notice)."""
    for violation in violations:
        if violation is not Violation.QUOTA_NEAR:
            return violation
    return None
