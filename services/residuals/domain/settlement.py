"""From earned to payees: guarantee, fee, advance, splits, thresholds (docs/ROYALTY-RULES.md §8)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext

from residuals.domain.licences import LicenceVersion
from residuals.domain.money import MONEY_CONTEXT, ZERO, round_money, split_largest_remainder

DEFAULT_PAYOUT_THRESHOLD = Decimal("10.00")


@dataclass(frozen=True, slots=True)
class Settlement:
    earned: Decimal
    minimum_guarantee_topup: Decimal
    gross: Decimal
    platform_fee: Decimal
    net: Decimal
    advance_recouped: Decimal
    vendor_invoice: Decimal
    allocations: tuple[tuple[str, Decimal], ...]  # by payee id


def settle(earned: Decimal, terms: LicenceVersion, currency: str) -> Settlement:
    """Settle one licence's period under the terms in force at the period's last instant."""
    with localcontext(MONEY_CONTEXT):
        guarantee = round_money(terms.minimum_guarantee, currency)
        topup = max(guarantee - earned, ZERO)
        gross = round_money(earned + topup, currency)
        fee = round_money(gross * terms.platform_fee, currency)
        net = gross - fee
        recouped = min(net, round_money(terms.advance_outstanding, currency))
        allocations = split_largest_remainder(net - recouped, dict(terms.splits), currency)
        return Settlement(
            earned=round_money(earned, currency),
            minimum_guarantee_topup=round_money(topup, currency),
            gross=gross,
            platform_fee=fee,
            net=round_money(net, currency),
            advance_recouped=round_money(recouped, currency),
            vendor_invoice=round_money(gross - recouped, currency),
            allocations=tuple(sorted(allocations.items())),
        )


@dataclass(frozen=True, slots=True)
class PayeeBalance:
    payee_id: str
    currency: str
    earned: Decimal
    payable: Decimal
    carried_forward: Decimal


def payee_balances(
    allocations: Iterable[tuple[str, str, Decimal]],
    carried_in: Mapping[tuple[str, str], Decimal] | None = None,
    thresholds: Mapping[str, Decimal] | None = None,
) -> list[PayeeBalance]:
    """Sum ``(payee, currency, amount)`` across licences; pay out only above the threshold."""
    carried = dict(carried_in or {})
    totals: dict[tuple[str, str], Decimal] = {key: ZERO for key in carried}
    for payee, currency, amount in allocations:
        totals[(payee, currency)] = totals.get((payee, currency), ZERO) + amount
    balances = []
    for (payee, currency), earned in sorted(totals.items()):
        due = earned + carried.get((payee, currency), ZERO)
        threshold = (thresholds or {}).get(currency, DEFAULT_PAYOUT_THRESHOLD)
        zero = round_money(ZERO, currency)
        pays = due >= threshold and due > 0
        balances.append(
            PayeeBalance(
                payee_id=payee,
                currency=currency,
                earned=round_money(earned, currency),
                payable=round_money(due, currency) if pays else zero,
                carried_forward=zero if pays else round_money(due, currency),
            )
        )
    return balances
