"""Where a part's usage happened, aggregated from the rules' ratings as they are made.

The period close rates every use by the rules (:func:`residuals.domain.statement.
compute_statement`); its ``on_rated`` hook hands each licence's ratings over once, in scope
order. :func:`licence_usage` folds one licence's ratings into sums by cell (kind x
territory x channel), by day, by held line and by misuse, and keeps nothing per use but the
most recent misuse, so a licence with a million uses costs the sums, not the ratings.

The close folds every licence (:class:`StatementUsage`) and stores each licence's
:class:`LicenceUsage` with the statement as JSON (:func:`usage_to_json`, exact amounts as
strings, lists in fold order so a stored tally gives the same document as a fresh one);
a document merges its part's licences into a :class:`UsageTally` (:meth:`UsageTally.add`),
or, for a statement closed before the tallies were stored, restates the part with a
:class:`UsageTally` as the hook.

Amounts stay exact (unrounded :class:`~decimal.Decimal`, in the money context); the
document rounds each cell once, like a statement line. Pure: no I/O.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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

#: The version of :func:`usage_to_json`'s shape (refused by :func:`usage_from_json` if not).
USAGE_FORMAT = 1

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


@dataclass(slots=True)
class LicenceUsage:
    """One licence's ratings of a period, summed (what the close stores per licence).

    Every mapping keeps the order its keys were first met in the licence's ratings."""

    licence_id: str
    currency: str
    unreported_renders: int = 0
    #: (kind, territory, channel) -> units and exact amounts billed and held.
    cells: dict[tuple[str, str, str], Sums] = field(default_factory=dict)
    #: (day index in the period, kind) -> the same by day.
    usage_by_day: dict[tuple[int, str], Sums] = field(default_factory=dict)
    #: day index -> the same (the licence's currency).
    earnings_by_day: dict[int, Sums] = field(default_factory=dict)
    #: (violation, kind) -> held uses, units and exact amount.
    held: dict[tuple[Violation, str], MisuseSum] = field(default_factory=dict)
    #: (violation, vendor) -> every misuse summed.
    misuse_totals: dict[tuple[Violation, str], MisuseSum] = field(default_factory=dict)
    #: The licence's last misuse in scope order (at most the misuse limit).
    recent: list[Misuse] = field(default_factory=list)


def licence_usage(
    period: Period,
    licence: Licence,
    ratings: Sequence[Rating],
    *,
    misuse_limit: int = MISUSE_LIMIT,
) -> LicenceUsage:
    """One pass over the licence's ratings into per-(day, kind, territory, channel) sums,
    held lines, misuse totals and the latest misuse: one dictionary lookup per use, which
    matters at a million uses. Call it in the money context."""
    licence_id, currency = licence.licence_id, licence.currency
    usage = LicenceUsage(licence_id, currency, unreported_renders(ratings))
    start = period.start
    sums: dict[tuple[int, str, str | None, str | None], list[Any]] = {}
    held = usage.held
    totals = usage.misuse_totals
    latest: deque[tuple[Rating, int, Decimal, Violation]] = deque(maxlen=misuse_limit)
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
            line = held.get((violation, kind))
            if line is None:
                line = held[(violation, kind)] = MisuseSum()
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
        total = totals.get((violation, event.vendor_id))
        if total is None:
            total = totals[(violation, event.vendor_id)] = MisuseSum()
        total.uses += 1
        total.units += held_units
        total.amount += held_amount
        latest.append((rating, held_units, held_amount, violation))  # scope order
    for (day, kind, territory, channel), values in sums.items():
        _add_to(usage.cells, (kind, territory or "", channel or ""), values)
        _add_to(usage.usage_by_day, (day, kind), values)
        _add_to(usage.earnings_by_day, day, values)
    usage.recent = [
        _misuse(licence_id, rating, held_units, held_amount, violation)
        for rating, held_units, held_amount, violation in latest
    ]
    return usage


def _misuse(
    licence_id: str, rating: Rating, held_units: int, held_amount: Decimal, violation: Violation
) -> Misuse:
    event = rating.event
    return Misuse(
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


class UsageTally:
    """A part's usage: its licences' :class:`LicenceUsage` merged (see the module docstring).

    As an ``on_rated`` hook it folds the ratings itself. Only ``licence_ids`` are counted:
    the close also rates licences whose rows merely decide an identity the part's rows
    share, and those are not the payee's."""

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

    def __call__(self, licence: Licence, ratings: Sequence[Rating]) -> None:
        if licence.licence_id not in self.licence_ids:
            return
        with localcontext(MONEY_CONTEXT):
            self._merge(
                licence_usage(self.period, licence, ratings, misuse_limit=self.misuse_limit)
            )

    def add(self, usage: LicenceUsage) -> None:
        """Merge one licence's stored usage (licences in the order the close rated them,
        i.e. by licence id, for the same document as a fresh restatement)."""
        if usage.licence_id not in self.licence_ids:
            return
        with localcontext(MONEY_CONTEXT):
            self._merge(usage)

    def _merge(self, usage: LicenceUsage) -> None:
        licence_id, currency = usage.licence_id, usage.currency
        self.currencies[licence_id] = currency
        self.unreported_renders[licence_id] = usage.unreported_renders
        for (kind, territory, channel), sums in usage.cells.items():
            _add_sums(self.cells, (licence_id, kind, territory, channel), sums)
        for key, sums in usage.usage_by_day.items():
            _add_sums(self.usage_by_day, key, sums)
        for day, sums in usage.earnings_by_day.items():
            _add_sums(self.earnings_by_day, (day, currency), sums)
        for (violation, kind), line in usage.held.items():
            _add_misuse(self.held, (licence_id, violation, kind), line)
        for (violation, vendor_id), line in usage.misuse_totals.items():
            _add_misuse(self.misuse_totals, (violation, vendor_id, currency), line)
        for use in usage.recent:
            self._keep(use)

    def _keep(self, use: Misuse) -> None:
        """Keep the use if it is among the ``misuse_limit`` most recent so far."""
        order = (use.occurred_at, use.event_id, use.licence_id)
        recent = self._recent
        if len(recent) >= self.misuse_limit and (not recent or order <= recent[0][:3]):
            return
        entry = (*order, next(self._order), use)
        if len(recent) < self.misuse_limit:
            heapq.heappush(recent, entry)
        else:
            heapq.heappushpop(recent, entry)

    def recent_misuse(self) -> list[Misuse]:
        """The most recent misuse (at most ``misuse_limit``), newest first."""
        return [entry[-1] for entry in sorted(self._recent, reverse=True)]


class StatementUsage:
    """The close's ``on_rated`` hook: every licence's usage as JSON text for the
    ``statement_usage`` rows (text, so a close of many licences holds strings, not records).
    """

    def __init__(self, period: Period, *, misuse_limit: int = MISUSE_LIMIT) -> None:
        self.period = period
        self.misuse_limit = misuse_limit
        #: licence id -> :func:`usage_to_json` of its ratings as JSON text.
        self.tallies: dict[str, str] = {}

    def __call__(self, licence: Licence, ratings: Sequence[Rating]) -> None:
        with localcontext(MONEY_CONTEXT):
            usage = licence_usage(self.period, licence, ratings, misuse_limit=self.misuse_limit)
        self.tallies[licence.licence_id] = json.dumps(usage_to_json(usage), separators=(",", ":"))


# --- JSON -----------------------------------------------------------------------------------


def usage_to_json(usage: LicenceUsage) -> dict[str, Any]:
    """``usage`` as JSON values: amounts as exact decimal strings (``str``, so
    :func:`usage_from_json` gives the same :class:`~decimal.Decimal`, exponent included),
    mappings as lists in their order (jsonb keeps arrays' order, not objects')."""
    return {
        "format": USAGE_FORMAT,
        "licence_id": usage.licence_id,
        "currency": usage.currency,
        "unreported_renders": usage.unreported_renders,
        "cells": [[*key, *_sums_json(s)] for key, s in usage.cells.items()],
        "usage_by_day": [[*key, *_sums_json(s)] for key, s in usage.usage_by_day.items()],
        "earnings_by_day": [[day, *_sums_json(s)] for day, s in usage.earnings_by_day.items()],
        "held": [[v.value, kind, *_misuse_sum_json(m)] for (v, kind), m in usage.held.items()],
        "misuse_totals": [
            [v.value, vendor, *_misuse_sum_json(m)]
            for (v, vendor), m in usage.misuse_totals.items()
        ],
        "recent": [
            [
                m.occurred_at.isoformat(),
                m.vendor_id,
                m.event_id,
                m.kind,
                m.category,
                m.territory,
                m.channel,
                m.violation.value,
                m.held_units,
                str(m.held_amount),
            ]
            for m in usage.recent
        ],
    }


def usage_from_json(data: Mapping[str, Any]) -> LicenceUsage:
    """The :class:`LicenceUsage` :func:`usage_to_json` wrote (ValueError on another shape)."""
    if data.get("format") != USAGE_FORMAT:
        raise ValueError(f"unknown statement usage format {data.get('format')!r}")
    licence_id = str(data["licence_id"])
    return LicenceUsage(
        licence_id=licence_id,
        currency=str(data["currency"]),
        unreported_renders=int(data["unreported_renders"]),
        cells={(k, t, c): _sums(rest) for k, t, c, *rest in data["cells"]},
        usage_by_day={(int(d), k): _sums(rest) for d, k, *rest in data["usage_by_day"]},
        earnings_by_day={int(d): _sums(rest) for d, *rest in data["earnings_by_day"]},
        held={(Violation(v), k): _misuse_sum(rest) for v, k, *rest in data["held"]},
        misuse_totals={
            (Violation(v), vendor): _misuse_sum(rest) for v, vendor, *rest in data["misuse_totals"]
        },
        recent=[
            Misuse(
                occurred_at=datetime.fromisoformat(at),
                licence_id=licence_id,
                vendor_id=vendor_id,
                event_id=event_id,
                kind=kind,
                category=category,
                territory=territory,
                channel=channel,
                violation=Violation(violation),
                held_units=int(held_units),
                held_amount=Decimal(held_amount),
            )
            for (
                at,
                vendor_id,
                event_id,
                kind,
                category,
                territory,
                channel,
                violation,
                held_units,
                held_amount,
            ) in data["recent"]
        ],
    )


def _sums_json(s: Sums) -> list[Any]:
    return [s.units, str(s.amount), s.held_units, str(s.held_amount)]


def _sums(values: Sequence[Any]) -> Sums:
    units, amount, held_units, held_amount = values
    return Sums(int(units), Decimal(amount), int(held_units), Decimal(held_amount))


def _misuse_sum_json(m: MisuseSum) -> list[Any]:
    return [m.uses, m.units, str(m.amount)]


def _misuse_sum(values: Sequence[Any]) -> MisuseSum:
    uses, units, amount = values
    return MisuseSum(int(uses), int(units), Decimal(amount))


# --- sums -----------------------------------------------------------------------------------


def _add_to(table: dict[K, Sums], key: K, values: Sequence[Any]) -> None:
    """Add (units, amount, held units, held amount) to ``table[key]``."""
    into = table.get(key)
    if into is None:
        into = table[key] = Sums()
    into.units += values[0]
    into.amount += values[1]
    into.held_units += values[2]
    into.held_amount += values[3]


def _add_sums(table: dict[K, Sums], key: K, sums: Sums) -> None:
    into = table.get(key)
    if into is None:
        into = table[key] = Sums()
    into.units += sums.units
    into.amount += sums.amount
    into.held_units += sums.held_units
    into.held_amount += sums.held_amount


def _add_misuse(table: dict[K, MisuseSum], key: K, line: MisuseSum) -> None:
    into = table.get(key)
    if into is None:
        into = table[key] = MisuseSum()
    into.uses += line.uses
    into.units += line.units
    into.amount += line.amount


def _flagged(violations: Sequence[Violation]) -> Violation | None:
    """A violation that flags a billed use as misuse (QUOTA_NEAR is only a notice)."""
    for violation in violations:
        if violation is not Violation.QUOTA_NEAR:
            return violation
    return None
