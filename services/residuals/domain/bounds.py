"""Bounds of the event model: what a vendor-sent value may be before anything uses it.

Vendors are the party whose misuse the product exists to catch, so every value they send
is bounded before it reaches money, state, logs or the database: an id with a NUL byte
stalls a PostgreSQL COPY, a 60,000-character id bloats every record that repeats it, an
amount of ``9e999999`` makes a megabyte of digits and overflows rounding, a timestamp in
year 2100 opens a period nobody will close. Each check returns why a value is out of
bounds (``None`` when it is fine); callers turn that into ``MALFORMED`` naming the field.
The vendor SDK applies the same bounds before it signs (``residuals_sdk.events``), and a
test runs one corpus through both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

#: Longest identifier or label (event, vendor, licence, avatar, render, key ids,
#: category, territory, channel, currency), in characters.
MAX_ID_CHARS = 128
#: Decimal amounts: at most this many digits before and after the point.
MAX_INTEGER_DIGITS = 18
MAX_FRACTION_DIGITS = 9
#: Times an event may carry (``occurred_at``): the platform's era, inclusive.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
#: The same bounds as protobuf Timestamp seconds.
EARLIEST_SECONDS = 946_684_800
LATEST_SECONDS = 253_402_300_799
NANOS_PER_SECOND = 1_000_000_000
#: Longest error text kept (the first lines of a traceback's message are what matter).
MAX_ERROR_CHARS = 2000


def text_problem(value: str, limit: int = MAX_ID_CHARS) -> str | None:
    """Why ``value`` is not an acceptable id: too long, or not printable text."""
    if len(value) > limit:
        return f"is {len(value):,} characters, the limit is {limit}"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return f"contains the non-printable character U+{ord(bad):04X}"
    return None


def decimal_problem(value: Decimal, *, non_negative: bool = True) -> str | None:
    """Why ``value`` is not an acceptable amount: not finite, negative, or too many digits."""
    if not value.is_finite():
        return "is not a finite number"
    if non_negative and value < 0:
        return "is negative"
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    fraction = max(0, -exponent)
    integer = max(0, len(digits) + exponent)
    if integer > MAX_INTEGER_DIGITS:
        return f"has more than {MAX_INTEGER_DIGITS} integer digits"
    if fraction > MAX_FRACTION_DIGITS:
        return f"has more than {MAX_FRACTION_DIGITS} fraction digits"
    return None


#: Amounts the platform computes (unrounded accruals, e.g. a CPM rate times a multiplier)
#: may carry more fraction digits than a vendor may send; their text is bounded instead.
MAX_AMOUNT_CHARS = 64


def amount_from_text(text: str) -> Decimal:
    """A computed amount as carried between services (``"12.3456"``); ``ValueError``
    naming the problem when it is too long, not a number, not finite, or has more than
    18 integer digits."""
    if len(text) > MAX_AMOUNT_CHARS:
        raise ValueError(f"is {len(text):,} characters, the limit is {MAX_AMOUNT_CHARS}")
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ValueError("is not a decimal number") from None
    if not value.is_finite():
        raise ValueError("is not a finite number")
    if value and value.adjusted() >= MAX_INTEGER_DIGITS:
        raise ValueError(f"has more than {MAX_INTEGER_DIGITS} integer digits")
    return value


def amount_text_problem(text: str) -> str | None:
    """Why :func:`amount_from_text` refuses ``text`` (None when it is fine)."""
    try:
        amount_from_text(text)
    except ValueError as problem:
        return str(problem)
    return None


def time_problem(value: datetime) -> str | None:
    """Why ``value`` is outside the era events may carry."""
    if value < EARLIEST or value > LATEST:
        return "is outside 2000-01-01..9999-12-31"
    return None


def timestamp_problem(seconds: int, nanos: int) -> str | None:
    """Why a protobuf Timestamp's raw fields are out of bounds (before converting them)."""
    if not 0 <= nanos < NANOS_PER_SECOND:
        return f"has nanos {nanos}, outside 0..999,999,999"
    if not EARLIEST_SECONDS <= seconds <= LATEST_SECONDS:
        return "is outside 2000-01-01..9999-12-31"
    return None


def printable(value: str | bytes, limit: int = 200) -> str:
    """``value`` safe for a terminal, a log line or a text column: non-printable
    characters escaped (``\\x1b``, ``\\u202e``; NUL included), at most ``limit`` characters
    of the original kept."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return f"{text}…(+{len(value) - limit} more)" if cut else text


def describe(error: BaseException | str) -> str:
    """An error as one safe line: type and message, escaped, bounded. Here, beside
    :func:`printable`, so pure readers (the offline evidence verifier) share it."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    return printable(text, MAX_ERROR_CHARS)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
