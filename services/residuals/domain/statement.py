"""The batch API: a period statement from stored events and licence versions.

Events are taken in arrival order only to decide identity (first of two conflicting sends
wins, §3); every money rule then runs per licence in ``(occurred_at, event_id)`` order
through :func:`~residuals.domain.metering.rate_event`, so the statement does not depend on
how events arrived and equals what the meter estimated when they arrived in order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from operator import attrgetter
from typing import Any

from residuals.domain.approvals import Approval
from residuals.domain.events import Rejection, UsageEvent
from residuals.domain.identity import Repeat, Retraction, classify_repeat, resolve_retraction
from residuals.domain.licences import Licence
from residuals.domain.metering import LicenceCounters, Rating, rate_event
from residuals.domain.money import MONEY_CONTEXT, ZERO, fmt, round_money
from residuals.domain.period import Period
from residuals.domain.settlement import PayeeBalance, Settlement, payee_balances, settle
from residuals.domain.validation import check_licence
from residuals.domain.vocabulary import KIND_ORDER, Kind, RejectReason, Violation


@dataclass(frozen=True, slots=True)
class Line:
    kind: Kind
    version: int
    units: int
    amount: Decimal
    tier: int | None = None
    channel: str | None = None
    rate: Decimal | None = None
    revenue: Decimal | None = None


@dataclass(frozen=True, slots=True)
class HeldLine:
    violation: Violation
    kind: Kind
    units: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Excluded:
    duplicates: int = 0
    ivt: int = 0
    non_viewable: int = 0
    retracted: int = 0


@dataclass(frozen=True, slots=True)
class LicenceStatement:
    licence_id: str
    currency: str
    lines: tuple[Line, ...]
    held: tuple[HeldLine, ...]
    excluded: Excluded
    settlement: Settlement


@dataclass(frozen=True, slots=True)
class PeriodStatement:
    period: Period
    licences: tuple[LicenceStatement, ...]
    payees: tuple[PayeeBalance, ...]
    violations: tuple[tuple[Violation, int], ...]
    dlq: tuple[tuple[RejectReason, int], ...]
    outcomes: Mapping[str, int] = field(default_factory=dict)
    #: Render units each approval covered up to the end of the period, earlier periods
    #: included (§5a: an approval spans periods). The next period starts from them; not
    #: part of the document, so statement documents and their hashes do not change.
    approval_renders: Mapping[str, int] = field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        """The statement in the shape of docs/ROYALTY-RULES.md §10 (amounts as decimal strings)."""
        return {
            "period": str(self.period),
            "licences": [_licence_document(s) for s in self.licences],
            "payees": [
                {
                    "payee_id": p.payee_id,
                    "currency": p.currency,
                    "earned": fmt(p.earned),
                    "payable": fmt(p.payable),
                    "carried_forward": fmt(p.carried_forward),
                }
                for p in self.payees
            ],
            "violations": [
                {"kind": v.value, "severity": v.severity.value, "count": n}
                for v, n in self.violations
            ],
            "dlq": [{"reason": r.value, "count": n} for r, n in self.dlq],
        }


def _line_document(line: Line) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": line.kind.value, "version": line.version}
    if line.kind is Kind.RENDER:
        doc["tier"] = line.tier
    else:
        doc["channel"] = line.channel
    doc["units"] = line.units
    if line.kind is Kind.AD_IMPRESSION:
        doc["revenue"] = fmt(line.revenue or ZERO)
    else:
        doc["rate"] = fmt(line.rate or ZERO)
    doc["amount"] = fmt(line.amount)
    return doc


def _licence_document(s: LicenceStatement) -> dict[str, Any]:
    st = s.settlement
    return {
        "licence_id": s.licence_id,
        "currency": s.currency,
        "lines": [_line_document(line) for line in s.lines],
        "held": [
            {
                "violation": h.violation.value,
                "kind": h.kind.value,
                "units": h.units,
                "amount": fmt(h.amount),
            }
            for h in s.held
        ],
        "excluded": {
            "duplicates": s.excluded.duplicates,
            "ivt": s.excluded.ivt,
            "non_viewable": s.excluded.non_viewable,
            "retracted": s.excluded.retracted,
        },
        "earned": fmt(st.earned),
        "minimum_guarantee_topup": fmt(st.minimum_guarantee_topup),
        "gross": fmt(st.gross),
        "platform_fee": fmt(st.platform_fee),
        "net": fmt(st.net),
        "advance_recouped": fmt(st.advance_recouped),
        "vendor_invoice": fmt(st.vendor_invoice),
        "allocations": [{"payee_id": p, "amount": fmt(a)} for p, a in st.allocations],
    }


# --- computing -----------------------------------------------------------------------------


@dataclass
class _Tally:
    """What happened to the period's events, before money is formed."""

    accepted: dict[tuple[str, str], UsageEvent] = field(default_factory=dict)
    retracted: set[tuple[str, str]] = field(default_factory=set)
    excluded: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    violations: Counter[Violation] = field(default_factory=Counter)
    dlq: Counter[RejectReason] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


def _sort_identity(
    items: Iterable[UsageEvent | Rejection], licences: Mapping[str, Licence], tally: _Tally
) -> None:
    """Validate and de-duplicate in arrival order; resolve retractions afterwards."""
    retractions: list[UsageEvent] = []
    for item in items:
        if isinstance(item, Rejection):
            tally.dlq[item.reason] += 1
            tally.outcomes["dead"] += 1
            continue
        rejection = check_licence(item, licences)
        if rejection is not None:
            tally.dlq[rejection.reason] += 1
            tally.outcomes["dead"] += 1
        elif item.kind is Kind.RETRACTION:
            retractions.append(item)
        else:
            _admit(item, item.licence_id or "", tally)
    for retraction in retractions:
        original_id = (retraction.vendor_id, retraction.original_event_id or "")
        original = tally.accepted.get(original_id)
        verdict = resolve_retraction(retraction, original, original_id in tally.retracted)
        if verdict is Retraction.UNKNOWN_ORIGINAL or original is None:
            tally.dlq[RejectReason.UNKNOWN_ORIGINAL] += 1
            tally.outcomes["dead"] += 1
            continue
        licence_id = original.licence_id or ""
        if retraction.identity in tally.accepted:
            _admit(retraction, licence_id, tally)  # a re-sent (or conflicting) retraction
        elif verdict is Retraction.ALREADY_RETRACTED:
            tally.excluded[licence_id]["duplicates"] += 1
            tally.outcomes["duplicate"] += 1
        else:
            _admit(retraction, licence_id, tally)
            tally.retracted.add(original_id)
            tally.excluded[licence_id]["retracted"] += 1


def _admit(event: UsageEvent, licence_id: str, tally: _Tally) -> Repeat:
    repeat = classify_repeat(tally.accepted.get(event.identity), event)
    if repeat is Repeat.NEW:
        tally.accepted[event.identity] = event
        tally.outcomes["accepted"] += 1
    elif repeat is Repeat.DUPLICATE:
        tally.excluded[licence_id]["duplicates"] += 1
        tally.outcomes["duplicate"] += 1
    else:
        tally.violations[Violation.DUPLICATE_CONFLICT] += 1
        tally.outcomes["conflict"] += 1
    return repeat


_SCOPE_ORDER = attrgetter("occurred_at", "event_id")


def rate_licence_events(
    licence: Licence,
    events: Iterable[UsageEvent],
    period: Period,
    approvals: Mapping[str, Approval] | None = None,
    approval_renders: dict[str, int] | None = None,
) -> list[Rating]:
    """Fold the incremental rules over one licence's uses in scope order.

    ``approval_renders`` (units each approval covered before, by id) is updated in place
    with the renders approved here; one dict can serve every licence of a period, as an
    approval only ever covers its own licence's uses."""
    counters = LicenceCounters()
    counters.enter_period(str(period), period.start)
    if approval_renders is not None:
        counters.approval_renders = approval_renders
    ordered = sorted(events, key=_SCOPE_ORDER)
    given = approvals or {}
    return [rate_event(e, licence, counters, given) for e in ordered]


def _lines(ratings: list[Rating], currency: str) -> tuple[tuple[Line, ...], tuple[HeldLine, ...]]:
    billed: dict[tuple[int, int, Any], list[Any]] = {}
    held: dict[tuple[Violation, int], list[Any]] = {}
    for rating in ratings:
        kind = rating.event.kind
        order = KIND_ORDER[kind]
        for p in rating.portions:
            if p.violation is not None:
                slot = held.get((p.violation, order))
                if slot is None:
                    slot = held[(p.violation, order)] = [kind, 0, ZERO]
                slot[1] += p.units
                slot[2] += p.amount
                continue
            key = (order, p.version, p.tier if kind is Kind.RENDER else p.channel)
            entry = billed.get(key)
            if entry is None:
                entry = billed[key] = [kind, p, 0, ZERO, ZERO]
            entry[2] += p.units
            entry[3] += p.amount
            entry[4] += p.revenue
    lines = tuple(
        Line(
            kind=kind,
            version=first.version,
            units=units,
            amount=round_money(amount, currency),
            tier=first.tier,
            channel=first.channel,
            rate=first.rate,
            revenue=revenue if kind is Kind.AD_IMPRESSION else None,
        )
        for _, (kind, first, units, amount, revenue) in sorted(billed.items(), key=lambda kv: kv[0])
    )
    held_lines = tuple(
        HeldLine(violation, kind, units, round_money(amount, currency))
        for (violation, _), (kind, units, amount) in sorted(held.items())
    )
    return lines, held_lines


def unreported_renders(ratings: Sequence[Rating]) -> int:
    """Render ids shown by views/impressions that no accepted render reported (§9)."""
    reported = {r.event.render_id for r in ratings if r.event.kind is Kind.RENDER}
    shown = {
        r.event.render_id for r in ratings if r.event.kind is not Kind.RENDER and r.excluded is None
    }
    return len(shown - reported)


def compute_statement(
    period: Period,
    licences: Iterable[Licence],
    events: Iterable[UsageEvent | Rejection],
    *,
    thresholds: Mapping[str, Decimal] | None = None,
    carried_in: Mapping[tuple[str, str], Decimal] | None = None,
    approvals: Iterable[Approval] = (),
    approval_renders_in: Mapping[str, int] | None = None,
    on_rated: Callable[[Licence, Sequence[Rating]], None] | None = None,
) -> PeriodStatement:
    """The period statement by docs/ROYALTY-RULES.md, from events in arrival order.

    ``approval_renders_in``: render units each approval covered in earlier periods (§5a),
    e.g. the previous statement's :attr:`PeriodStatement.approval_renders`. ``on_rated``
    sees each licence's ratings in scope order (breakdowns by where a use happened)."""
    with localcontext(MONEY_CONTEXT):
        by_id = {a.approval_id: a for a in approvals}
        renders = dict(approval_renders_in or {})
        return _compute(period, licences, events, thresholds, carried_in, by_id, renders, on_rated)


def _compute(
    period: Period,
    licences: Iterable[Licence],
    events: Iterable[UsageEvent | Rejection],
    thresholds: Mapping[str, Decimal] | None,
    carried_in: Mapping[tuple[str, str], Decimal] | None,
    approvals: Mapping[str, Approval],
    approval_renders: dict[str, int],
    on_rated: Callable[[Licence, Sequence[Rating]], None] | None = None,
) -> PeriodStatement:
    registry = {lic.licence_id: lic for lic in licences}
    tally = _Tally()
    _sort_identity(events, registry, tally)

    uses: dict[str, list[UsageEvent]] = defaultdict(list)
    for identity, event in tally.accepted.items():
        if event.kind is not Kind.RETRACTION and identity not in tally.retracted:
            uses[event.licence_id or ""].append(event)

    statements: list[LicenceStatement] = []
    allocations: list[tuple[str, str, Decimal]] = []
    for licence_id in sorted(registry):
        licence = registry[licence_id]
        ratings = rate_licence_events(
            licence, uses.get(licence_id, []), period, approvals, approval_renders
        )
        if on_rated is not None:
            on_rated(licence, ratings)
        excluded = tally.excluded[licence_id]
        for rating in ratings:
            if rating.excluded:
                excluded[rating.excluded] += rating.event.quantity
            tally.violations.update(v for v in rating.violations)
        tally.violations[Violation.UNREPORTED_RENDER] += unreported_renders(ratings)
        lines, held = _lines(ratings, licence.currency)
        earned = sum((line.amount for line in lines), ZERO)
        terms = licence.version_at(period.last_instant)
        settlement = settle(earned, terms, licence.currency)
        allocations.extend((p, licence.currency, a) for p, a in settlement.allocations)
        statements.append(
            LicenceStatement(
                licence_id=licence_id,
                currency=licence.currency,
                lines=lines,
                held=held,
                excluded=Excluded(**excluded),
                settlement=settlement,
            )
        )
    return PeriodStatement(
        period=period,
        licences=tuple(statements),
        payees=tuple(payee_balances(allocations, carried_in, thresholds)),
        violations=tuple(sorted((v, n) for v, n in tally.violations.items() if n)),
        dlq=tuple(sorted((r, n) for r, n in tally.dlq.items() if n)),
        outcomes=dict(tally.outcomes),
        approval_renders=approval_renders,
    )
