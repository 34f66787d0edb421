"""Exact money: currencies, minor units, half-even rounding and largest-remainder splits.

Amounts accrue as unrounded :class:`~decimal.Decimal` and are rounded only when a statement
line is formed (docs/ROYALTY-RULES.md §1). A context wide enough for the worst bounded case
(:data:`MONEY_CONTEXT`) keeps every sum and product exact and pro-rata divisions (the only
non-terminating operation) far below a minor unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal

#: Significant digits of every money computation in the domain (see MONEY_CONTEXT).
MONEY_PRECISION = 120

#: Arithmetic context for every money computation in the domain.
#:
#: Why 120 digits is always enough: every input is bounded at admission
#: (:mod:`residuals.domain.bounds`): amounts, rates, prices and multipliers below 10^18
#: with at most 9 fraction digits; shares and fees at most 1; quantities at most 10^6.
#:
#: * One event's amount (docs/ROYALTY-RULES.md §7, :mod:`residuals.domain.pricing`) is at most
#:   four such factors and a division by 1,000: a view is units x CPM x channel multiplier
#:   / 1000 (x the unlicensed-use multiplier when held) < 10^6 x 10^18 x 10^18 / 10^3 x
#:   10^18 = 10^57; an ad impression max(revenue x share, units x floor / 1000) x
#:   multiplier (x penalty) < 10^57 as well; a render less. Its smallest digit is at most
#:   4 x 9 + 3 = 39 places after the point (an ad's revenue split pro rata by units is the
#:   one non-terminating division: it is rounded at the 120th digit, 10^-100 of a cent).
#: * A statement line sums a period's events. Even 10^15 events per period (50,000
#:   events/s for a 31-day month is 1.3 x 10^11) give < 10^72, so a line needs at most
#:   72 + 39 = 111 digits: sums and products are exact, and rounding a line to minor units
#:   (4 fraction digits at most) needs 76 digits, never more than the precision, so
#:   ``quantize`` never raises InvalidOperation (at 60 digits it did from ~10^58 up).
#: * Settlement multiplies a rounded gross (< 10^72, 4 fraction digits) by a fee or share
#:   (10 digits): < 90 digits; summing payees over 10^6 licences adds 6. Exponents stay far
#:   inside the default Emax/Emin of +-999,999.
#:
#: Precision costs nothing for exact operations (Decimal works on the digits operands have,
#: not on ``prec``); only the pro-rata division produces 120 digits.
MONEY_CONTEXT = Context(prec=MONEY_PRECISION, rounding=ROUND_HALF_EVEN)

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
    one each to the largest remainders, ties to the lower payee id (docs/ROYALTY-RULES.md §8).
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
