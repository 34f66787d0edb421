"""A payee's statement as a person reads it: the :class:`StatementView` tree (pure).

Built from the payee's part of a closed statement (:mod:`residuals.domain.parts`, the §10
shape: the binding figures), the names of the parties, the sums of the rules' ratings
(:class:`~residuals.payouts.tally.UsageTally`: where the use happened) and the
payee's payouts. Every format (HTML, PDF, CSV) renders this one tree, so they cannot
disagree. Money stays :class:`~decimal.Decimal` with the currency's minor digits; a cell
of a breakdown is rounded once, like a statement line, so cells may differ from the
binding lines by a few minor units, and the document says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from residuals.domain.money import ZERO, minor_digits, round_money
from residuals.domain.parts import part_hash
from residuals.domain.period import Period
from residuals.domain.vocabulary import KIND_ORDER, Violation
from residuals.payouts.documents.guidance import HELD_MONEY, releases
from residuals.payouts.tally import MISUSE_LIMIT, MisuseSum, Sums, UsageTally

KIND_LABELS: dict[str, str] = {
    "RENDER": "Render",
    "VIEW": "View",
    "AD_IMPRESSION": "Ad impression",
}

#: Printed beside every breakdown.
CELL_ROUNDING = (
    "Use by avatar, vendor and currency (the licences named beside each), then by kind, "
    "territory and channel. Each cell's amount is the exact sum of its uses' amounts by the "
    "rules, rounded once to the currency's minor unit (half to even), so cells may differ "
    "from the statement lines by a few minor units. The statement lines above are the "
    "binding figures."
)


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LicenceParties:
    """Whose likeness a licence licenses, and to which vendor."""

    talent_id: str
    avatar_id: str
    vendor_id: str


@dataclass(frozen=True)
class Names:
    """The payee and the display names of the parties its licences name ('' when none)."""

    payee_id: str
    payee_kind: str
    payee_name: str
    talents: Mapping[str, str] = field(default_factory=dict)
    avatars: Mapping[str, str] = field(default_factory=dict)
    vendors: Mapping[str, str] = field(default_factory=dict)
    licences: Mapping[str, LicenceParties] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PayoutFact:
    payout_id: str
    currency: str
    amount: Decimal
    state: str
    rail: str
    rail_reference: str
    paid_at: datetime | None
    failure_reason: str = ""


@dataclass(frozen=True)
class StatementFacts:
    """The closed period statement the part belongs to."""

    period: str
    statement_sha256: str
    closed_at: datetime
    #: The payee's balance carried in from earlier periods, by currency.
    carried_in: Mapping[str, Decimal] = field(default_factory=dict)


# --- the view -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: str

    @property
    def text(self) -> str:
        """The amount with its minor digits and thousands separators: ``1,234.50``."""
        return format(self.amount, ",f")

    def __str__(self) -> str:
        return f"{self.text} {self.currency}"


@dataclass(frozen=True, slots=True)
class Party:
    party_id: str
    name: str

    @property
    def label(self) -> str:
        """The display name, or the id when none was registered."""
        return self.name or self.party_id


@dataclass(frozen=True, slots=True)
class CurrencyView:
    code: str
    minor_digits: int


@dataclass(frozen=True, slots=True)
class LineView:
    kind: str
    version: int
    tier: int | None
    channel: str | None
    units: int
    rate: Decimal | None  # render unit price, effective view CPM
    revenue: Decimal | None  # ad impressions
    amount: Money

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    @property
    def where(self) -> str:
        """Tier or channel, as the line is keyed."""
        return f"tier {self.tier}" if self.tier is not None else f"channel {self.channel}"


@dataclass(frozen=True, slots=True)
class HeldView:
    violation: str
    severity: str
    kind: str
    units: int
    amount: Money

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


@dataclass(frozen=True, slots=True)
class SettlementView:
    earned: Money
    minimum_guarantee_topup: Money
    gross: Money
    platform_fee: Money
    net: Money
    advance_recouped: Money
    vendor_invoice: Money
    allocations: tuple[tuple[str, Money], ...]
    to_payee: Money


@dataclass(frozen=True)
class LicenceView:
    licence_id: str
    currency: str
    talent: Party
    avatar: Party
    vendor: Party
    lines: tuple[LineView, ...]
    held: tuple[HeldView, ...]
    excluded: Mapping[str, int]
    settlement: SettlementView
    unreported_renders: int


@dataclass(frozen=True, slots=True)
class CellView:
    """Use of one kind in one territory and channel (licences of one group summed)."""

    kind: str
    territory: str
    channel: str
    units: int
    amount: Money
    held_units: int
    held_amount: Money

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


@dataclass(frozen=True)
class BreakdownGroup:
    """One avatar's use by one vendor in one currency: the cells of its licences."""

    avatar: Party
    vendor: Party
    currency: str
    licence_ids: tuple[str, ...]
    cells: tuple[CellView, ...]


@dataclass(frozen=True, slots=True)
class ViolationView:
    """Held lines of one violation in one currency, summed over the part's licences."""

    violation: str
    severity: str
    currency: str
    uses: int
    units: int
    amount: Money
    releases: str


@dataclass(frozen=True, slots=True)
class MisuseView:
    occurred_at: datetime
    licence_id: str
    event_id: str
    kind: str
    category: str
    territory: str
    channel: str
    vendor: Party
    violation: str
    severity: str
    held_units: int
    held_amount: Money

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


@dataclass(frozen=True, slots=True)
class MisuseRestView:
    """Older misuse not listed one by one, per violation and vendor."""

    violation: str
    vendor: Party
    uses: int
    units: int
    amount: Money


@dataclass(frozen=True, slots=True)
class BalanceView:
    currency: str
    carried_in: Money
    earned: Money
    payable: Money
    carried_forward: Money


@dataclass(frozen=True, slots=True)
class PayoutView:
    payout_id: str
    amount: Money
    state: str
    rail: str
    rail_reference: str
    paid_at: datetime | None
    failure_reason: str


@dataclass(frozen=True, slots=True)
class KindSeries:
    kind: str
    billed: tuple[int, ...]
    held: tuple[int, ...]

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


@dataclass(frozen=True, slots=True)
class CurrencySeries:
    currency: str
    billed: tuple[Decimal, ...]  # exact, unrounded
    held: tuple[Decimal, ...]


@dataclass(frozen=True)
class DailySeries:
    days: tuple[date, ...]
    usage: tuple[KindSeries, ...]
    earnings: tuple[CurrencySeries, ...]

    @property
    def empty(self) -> bool:
        return not self.usage


@dataclass(frozen=True)
class StatementView:
    period: str
    payee: Party
    payee_kind: str
    #: Set for an agent's or estate's section for one client (only that talent's licences).
    client: Party | None
    closed_at: datetime
    currencies: tuple[CurrencyView, ...]
    talents: tuple[Party, ...]
    avatars: tuple[Party, ...]
    vendors: tuple[Party, ...]
    licences: tuple[LicenceView, ...]
    balances: tuple[BalanceView, ...]
    breakdown: tuple[BreakdownGroup, ...]
    held_by_violation: tuple[ViolationView, ...]
    misuse: tuple[MisuseView, ...]
    misuse_rest: tuple[MisuseRestView, ...]
    misuse_total: int
    payouts: tuple[PayoutView, ...]
    daily: DailySeries
    part_sha256: str
    statement_sha256: str
    #: True when the breakdowns were recomputed from the stored events (a statement
    #: closed before its usage tallies were kept with it) and do not give the closed
    #: statement's figures (stored data changed): the document says so. False claims no
    #: check: ``residuals verify`` on the evidence bundle is the check.
    breakdowns_differ: bool
    verify_commands: tuple[str, ...]
    held_note: str = HELD_MONEY
    rounding_note: str = CELL_ROUNDING
    misuse_limit: int = MISUSE_LIMIT

    @property
    def release_notes(self) -> tuple[tuple[str, str], ...]:
        """What would release each violation held in the part, once per violation."""
        notes = {v.violation: v.releases for v in self.held_by_violation}
        return tuple(notes.items())

    @property
    def title(self) -> str:
        section = f" for client {self.client.label}" if self.client else ""
        return f"Statement {self.period}: {self.payee.label}{section}"


# --- building -------------------------------------------------------------------------------


def verify_commands(period: str, payee_id: str) -> tuple[str, ...]:
    """How a reader checks the document's hashes against the evidence."""
    return (
        f"residuals finance evidence --period {period} --payee {payee_id}",
        "residuals verify BUNDLE",
    )


def _money(text: str | Decimal, currency: str) -> Money:
    return Money(Decimal(text), currency)


def _rounded(amount: Decimal, currency: str) -> Money:
    return Money(round_money(amount, currency), currency)


def _party(party_id: str, names: Mapping[str, str]) -> Party:
    return Party(party_id, names.get(party_id, ""))


def _licence_view(
    lic: Mapping[str, Any], names: Names, tally: UsageTally, payee_id: str
) -> LicenceView:
    currency = lic["currency"]
    who = names.licences.get(lic["licence_id"], LicenceParties("", "", ""))
    lines = tuple(
        LineView(
            kind=line["kind"],
            version=int(line["version"]),
            tier=line.get("tier"),
            channel=line.get("channel"),
            units=int(line["units"]),
            rate=Decimal(line["rate"]) if "rate" in line else None,
            revenue=Decimal(line["revenue"]) if "revenue" in line else None,
            amount=_money(line["amount"], currency),
        )
        for line in lic["lines"]
    )
    held = tuple(
        HeldView(
            violation=h["violation"],
            severity=Violation(h["violation"]).severity.value,
            kind=h["kind"],
            units=int(h["units"]),
            amount=_money(h["amount"], currency),
        )
        for h in lic["held"]
    )
    allocations = tuple((a["payee_id"], _money(a["amount"], currency)) for a in lic["allocations"])
    mine = sum((m.amount for p, m in allocations if p == payee_id), ZERO)
    settlement = SettlementView(
        earned=_money(lic["earned"], currency),
        minimum_guarantee_topup=_money(lic["minimum_guarantee_topup"], currency),
        gross=_money(lic["gross"], currency),
        platform_fee=_money(lic["platform_fee"], currency),
        net=_money(lic["net"], currency),
        advance_recouped=_money(lic["advance_recouped"], currency),
        vendor_invoice=_money(lic["vendor_invoice"], currency),
        allocations=allocations,
        to_payee=Money(mine, currency) if allocations else _rounded(ZERO, currency),
    )
    return LicenceView(
        licence_id=lic["licence_id"],
        currency=currency,
        talent=_party(who.talent_id, names.talents),
        avatar=_party(who.avatar_id, names.avatars),
        vendor=_party(who.vendor_id, names.vendors),
        lines=lines,
        held=held,
        excluded=dict(lic["excluded"]),
        settlement=settlement,
        unreported_renders=tally.unreported_renders.get(lic["licence_id"], 0),
    )


def _breakdown(tally: UsageTally, names: Names) -> tuple[BreakdownGroup, ...]:
    """Cells by avatar x vendor x currency, then kind x territory x channel: the exact
    amounts of a cell's licences summed, then rounded once."""
    groups: dict[tuple[str, str, str], dict[tuple[str, str, str], list[Any]]] = {}
    licences: dict[tuple[str, str, str], set[str]] = {}
    for (licence_id, kind, territory, channel), sums in tally.cells.items():
        who = names.licences.get(licence_id, LicenceParties("", "", ""))
        group = (who.avatar_id, who.vendor_id, tally.currencies[licence_id])
        licences.setdefault(group, set()).add(licence_id)
        slot = groups.setdefault(group, {}).setdefault(
            (kind, territory, channel), [0, ZERO, 0, ZERO]
        )
        slot[0] += sums.units
        slot[1] += sums.amount
        slot[2] += sums.held_units
        slot[3] += sums.held_amount
    out = []
    for (avatar_id, vendor_id, currency), cells in groups.items():
        out.append(
            BreakdownGroup(
                avatar=_party(avatar_id, names.avatars),
                vendor=_party(vendor_id, names.vendors),
                currency=currency,
                licence_ids=tuple(sorted(licences[(avatar_id, vendor_id, currency)])),
                cells=tuple(
                    CellView(
                        kind=kind,
                        territory=territory,
                        channel=channel,
                        units=units,
                        amount=_rounded(amount, currency),
                        held_units=held_units,
                        held_amount=_rounded(held_amount, currency),
                    )
                    for (kind, territory, channel), (
                        units,
                        amount,
                        held_units,
                        held_amount,
                    ) in sorted(
                        cells.items(), key=lambda kv: (KIND_ORDER.get(kv[0][0], 9), kv[0][1:])
                    )
                ),
            )
        )
    out.sort(key=lambda g: (g.avatar.label.casefold(), g.vendor.label.casefold(), g.currency))
    return tuple(out)


def _held_by_violation(
    licences: Sequence[LicenceView], tally: UsageTally
) -> tuple[ViolationView, ...]:
    sums: dict[tuple[str, str], list[Any]] = {}
    for lic in licences:
        for h in lic.held:
            slot = sums.setdefault((h.violation, lic.currency), [0, 0, ZERO])
            uses = tally.held.get((lic.licence_id, Violation(h.violation), h.kind))
            slot[0] += uses.uses if uses else 0
            slot[1] += h.units
            slot[2] += h.amount.amount
    order = {v.value: i for i, v in enumerate(Violation)}
    return tuple(
        ViolationView(
            violation=violation,
            severity=Violation(violation).severity.value,
            currency=currency,
            uses=uses,
            units=units,
            amount=Money(amount, currency),
            releases=releases(violation),
        )
        for (violation, currency), (uses, units, amount) in sorted(
            sums.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])
        )
    )


def _misuse(
    tally: UsageTally, names: Names
) -> tuple[tuple[MisuseView, ...], tuple[MisuseRestView, ...], int]:
    recent = tally.recent_misuse()
    listed = tuple(
        MisuseView(
            occurred_at=m.occurred_at,
            licence_id=m.licence_id,
            event_id=m.event_id,
            kind=m.kind,
            category=m.category,
            territory=m.territory,
            channel=m.channel,
            vendor=_party(m.vendor_id, names.vendors),
            violation=m.violation.value,
            severity=m.violation.severity.value,
            held_units=m.held_units,
            held_amount=_rounded(m.held_amount, tally.currencies[m.licence_id]),
        )
        for m in recent
    )
    shown: dict[tuple[Violation, str, str], MisuseSum] = {}
    for m in recent:
        key = (m.violation, m.vendor_id, tally.currencies[m.licence_id])
        slot = shown.setdefault(key, MisuseSum())
        slot.uses += 1
        slot.units += m.held_units
        slot.amount += m.held_amount
    rest = []
    total = 0
    for key in sorted(tally.misuse_totals):
        violation, vendor_id, currency = key
        all_uses, seen = tally.misuse_totals[key], shown.get(key, MisuseSum())
        total += all_uses.uses
        if all_uses.uses > seen.uses:
            rest.append(
                MisuseRestView(
                    violation=violation.value,
                    vendor=_party(vendor_id, names.vendors),
                    uses=all_uses.uses - seen.uses,
                    units=all_uses.units - seen.units,
                    amount=_rounded(all_uses.amount - seen.amount, currency),
                )
            )
    return listed, tuple(rest), total


def _daily(tally: UsageTally, period: Period) -> DailySeries:
    count = (period.end - period.start).days
    days = tuple((period.start + timedelta(days=d)).date() for d in range(count))
    kinds = sorted({k for _, k in tally.usage_by_day}, key=lambda k: KIND_ORDER.get(k, 9))
    currencies = sorted({c for _, c in tally.earnings_by_day})
    usage = tuple(
        KindSeries(
            kind=k,
            billed=tuple(_at(tally.usage_by_day, (d, k)).units for d in range(count)),
            held=tuple(_at(tally.usage_by_day, (d, k)).held_units for d in range(count)),
        )
        for k in kinds
    )
    earnings = tuple(
        CurrencySeries(
            currency=c,
            billed=tuple(_at(tally.earnings_by_day, (d, c)).amount for d in range(count)),
            held=tuple(_at(tally.earnings_by_day, (d, c)).held_amount for d in range(count)),
        )
        for c in currencies
    )
    return DailySeries(days, usage, earnings)


_NONE = Sums()


def _at(sums: Mapping[tuple[int, str], Sums], key: tuple[int, str]) -> Sums:
    return sums.get(key) or _NONE


def _distinct(parties: Iterable[Party]) -> tuple[Party, ...]:
    unique = {p.party_id: p for p in parties if p.party_id}
    return tuple(sorted(unique.values(), key=lambda p: (p.label.casefold(), p.party_id)))


def build_view(
    part: Mapping[str, Any],
    *,
    names: Names,
    tally: UsageTally,
    payouts: Iterable[PayoutFact],
    facts: StatementFacts,
    client_talent_id: str = "",
    breakdowns_differ: bool = False,
) -> StatementView:
    """The document's view of ``part`` (``part_document(...)`` of the closed statement)."""
    payee_id = part["payee_id"]
    licences = tuple(_licence_view(lic, names, tally, payee_id) for lic in part["licences"])
    balances = tuple(
        BalanceView(
            currency=p["currency"],
            carried_in=_rounded(facts.carried_in.get(p["currency"], ZERO), p["currency"]),
            earned=_money(p["earned"], p["currency"]),
            payable=_money(p["payable"], p["currency"]),
            carried_forward=_money(p["carried_forward"], p["currency"]),
        )
        for p in part["payees"]
    )
    codes = {lic.currency for lic in licences} | {b.currency for b in balances}
    listed, rest, total = _misuse(tally, names)
    return StatementView(
        period=part["period"],
        payee=Party(payee_id, names.payee_name),
        payee_kind=names.payee_kind,
        client=_party(client_talent_id, names.talents) if client_talent_id else None,
        closed_at=facts.closed_at,
        currencies=tuple(CurrencyView(c, minor_digits(c)) for c in sorted(codes)),
        talents=_distinct(lic.talent for lic in licences),
        avatars=_distinct(lic.avatar for lic in licences),
        vendors=_distinct(lic.vendor for lic in licences),
        licences=licences,
        balances=balances,
        breakdown=_breakdown(tally, names),
        held_by_violation=_held_by_violation(licences, tally),
        misuse=listed,
        misuse_rest=rest,
        misuse_total=total,
        payouts=tuple(
            PayoutView(
                payout_id=p.payout_id,
                amount=_rounded(p.amount, p.currency),
                state=p.state,
                rail=p.rail,
                rail_reference=p.rail_reference,
                paid_at=p.paid_at,
                failure_reason=p.failure_reason,
            )
            for p in sorted(payouts, key=lambda p: (p.currency, p.payout_id))
        ),
        daily=_daily(tally, Period.parse(part["period"])),
        part_sha256=part_hash(part),
        statement_sha256=facts.statement_sha256,
        breakdowns_differ=breakdowns_differ,
        verify_commands=verify_commands(part["period"], payee_id),
    )
