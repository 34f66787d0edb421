"""Exact money: currencies, minor units, half-even rounding and largest-remainder splits.

Amounts accrue as unrounded :class:`~decimal.Decimal` and are rounded only when a statement
line is formed (ROYALTY-RULES.md §1). A high-precision context keeps pro-rata divisions
(the only non-terminating operation) far below a minor unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal

#: Arithmetic context for every money computation in the domain.
MONEY_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)

ZERO = Decimal(0)

# ISO 4217 minor units that differ from 2 (the rest of the list uses 2 digits).
_MINOR_DIGITS: dict[str, int] = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}  # fmt: skip

# Active ISO 4217 codes with the default two minor digits.
_TWO_DIGIT = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT
    LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN
    NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP
    SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES
    WST XCD YER ZAR ZMW ZWL""".split()  # noqa: SIM905
)


class UnknownCurrency(ValueError):
    """The code is not an active ISO 4217 currency."""


def is_currency(code: str) -> bool:
    return code in _MINOR_DIGITS or code in _TWO_DIGIT


def minor_digits(currency: str) -> int:
    if currency in _MINOR_DIGITS:
        return _MINOR_DIGITS[currency]
    if currency in _TWO_DIGIT:
        return 2
    raise UnknownCurrency(f"unknown ISO 4217 currency {currency!r}")


def quantum(currency: str) -> Decimal:
    """The currency's minor unit as an exponent template: USD → 0.01, JPY → 1."""
    return Decimal(1).scaleb(-minor_digits(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit, half to even (the one rounding rule)."""
    return amount.quantize(quantum(currency), rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT)


def is_minor(amount: Decimal, currency: str) -> bool:
    """True when ``amount`` has exactly the currency's minor digits."""
    return amount.as_tuple().exponent == -minor_digits(currency)


def split_largest_remainder(
    amount: Decimal, shares: Mapping[str, Decimal], currency: str
) -> dict[str, Decimal]:
    """Split a rounded amount by shares so the parts sum exactly to it.

    Each payee gets the floor of its exact share in minor units; the leftover minor units go
    one each to the largest remainders, ties to the lower payee id (ROYALTY-RULES.md §8).
    """
    q = quantum(currency)
    total_minor = int(amount.scaleb(minor_digits(currency)).to_integral_value())
    floors: dict[str, int] = {}
    remainders: dict[str, Decimal] = {}
    for payee, share in shares.items():
        exact = MONEY_CONTEXT.multiply(Decimal(total_minor), share)
        floor = int(exact.to_integral_value(rounding=ROUND_FLOOR))
        floors[payee] = floor
        remainders[payee] = exact - floor
    leftover = total_minor - sum(floors.values())
    order = sorted(shares, key=lambda p: (-remainders[p], p))
    if order and leftover:
        for i in range(abs(leftover)):
            floors[order[i % len(order)]] += 1 if leftover > 0 else -1
    return {p: (Decimal(m) * q).quantize(q) for p, m in floors.items()}


def fmt(amount: Decimal) -> str:
    """Plain decimal string, never scientific notation."""
    return format(amount, "f")
