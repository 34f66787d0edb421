"""Exact money ↔ ``residuals.v1.Money`` (google.type.Money layout: units + nanos).

Rounded amounts (statement lines, totals, payouts) have at most 4 fraction digits, far
inside nanos; anything finer is refused rather than silently truncated.
"""

from __future__ import annotations

from decimal import Decimal

from residuals.v1 import common_pb2

_NANO = Decimal("1e9")


def to_money(amount: Decimal, currency: str) -> common_pb2.Money:
    nanos_total = amount * _NANO
    if nanos_total != nanos_total.to_integral_value():
        raise ValueError(f"{amount} {currency} has more than 9 fraction digits")
    total = int(nanos_total)
    sign = -1 if total < 0 else 1
    units, nanos = divmod(abs(total), 1_000_000_000)
    return common_pb2.Money(currency_code=currency, units=sign * units, nanos=sign * nanos)


def from_money(money: common_pb2.Money) -> Decimal:
    """units + nanos/1e9, exactly (both carry the same sign)."""
    return Decimal(money.units) + Decimal(money.nanos) / _NANO
